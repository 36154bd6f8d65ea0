//! The open model of `omsgate loadtest`: when requests are meant to be sent, what they ask
//! for, and who they say they are.
//!
//! A user's schedule does not wait for answers: after each intended send time it draws a think
//! time and the next request is due then, whether or not the previous one has been answered
//! (a slow target gets more requests in flight, not fewer requests). A fixed arrival rate is
//! one Poisson schedule.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use rand::Rng;

use super::scenario::{Identity, Mix};
use super::stats::RequestKind;

/// A think time can be at most this many times its mean (the exponential's tail is cut so a
/// user cannot fall silent for a whole run).
const MAX_THINK_FACTOR: f64 = 10.0;

/// When user `i` of `users` arrives within `ramp` (evenly spread, the first at 0).
pub fn user_offset(i: u32, users: u32, ramp: Duration) -> Duration {
    if users == 0 {
        return Duration::ZERO;
    }
    ramp.mul_f64(i as f64 / users as f64)
}

/// An exponentially distributed time with the given mean, at most [`MAX_THINK_FACTOR`] times it.
pub fn exponential(rng: &mut impl Rng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    mean.mul_f64((-u.ln()).min(MAX_THINK_FACTOR))
}

/// The interarrival time of a Poisson process at `per_second`.
pub fn interarrival(rng: &mut impl Rng, per_second: f64) -> Duration {
    exponential(rng, Duration::from_secs_f64(1.0 / per_second))
}

/// The cumulative distribution of Zipf(`s`) over `n` ranks (`s = 0`: uniform).
pub fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// A rank drawn from a cumulative distribution.
pub fn draw(rng: &mut impl Rng, cdf: &[f64]) -> usize {
    let u: f64 = rng.random();
    cdf.partition_point(|p| *p < u)
        .min(cdf.len().saturating_sub(1))
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What it is.
    pub kind: RequestKind,
    /// Its method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// JSON body of a write.
    pub body: Option<Bytes>,
}

/// Picks the next request of the mix for a tenant whose invoice ids are `ids`.
pub fn pick(rng: &mut impl Rng, mix: &Mix, cdf: &[f64], ids: &[String]) -> Planned {
    let total: u64 = mix.weights.iter().map(|w| *w as u64).sum();
    let mut x = rng.random_range(0..total.max(1));
    let mut kind = RequestKind::InvoiceRead;
    for (k, w) in RequestKind::ALL.iter().zip(mix.weights) {
        if x < w as u64 {
            kind = *k;
            break;
        }
        x -= w as u64;
    }
    let mut id = || match ids.len() {
        0 => "00000000-0000-0000-0000-000000000000".to_string(),
        n => ids[draw(rng, cdf) % n].clone(),
    };
    match kind {
        RequestKind::InvoiceRead => Planned {
            kind,
            method: Method::GET,
            path: format!("/api/v1/invoices/{}", id()),
            body: None,
        },
        RequestKind::InvoiceWrite => {
            let path = format!("/api/v1/invoices/{}", id());
            let n: u32 = rng.random_range(0..1_000_000);
            Planned {
                kind,
                method: Method::PATCH,
                path,
                body: Some(Bytes::from(fill(&mix.write_body, n).to_string())),
            }
        }
        RequestKind::InvoiceList => {
            let q = match mix.list_queries.len() {
                0 => "",
                n => mix.list_queries[rng.random_range(0..n)].as_str(),
            };
            Planned {
                kind,
                method: Method::GET,
                path: format!("/api/v1/invoices?{q}"),
                body: None,
            }
        }
        RequestKind::PaymentList => Planned {
            kind,
            method: Method::GET,
            path: format!("/api/v1/payments?{}", mix.payment_query),
            body: None,
        },
    }
}

/// The body template with `{n}` in its strings replaced by `n`.
fn fill(v: &serde_json::Value, n: u32) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(s.replace("{n}", &n.to_string())),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), fill(v, n))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, n)).collect()),
        other => other.clone(),
    }
}

/// The headers a user of `tenant` named `subject` sends: a bearer token minted the way the
/// gateway verifies it, or the trusted headers.
pub fn identity_headers(
    identity: &Identity,
    tenant: &str,
    subject: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let value = |s: &str| HeaderValue::from_str(s).ok();
    match identity {
        Identity::Jwt {
            secret,
            tenant_claim,
            subject_claim,
            issuer,
            audience,
        } => {
            let token = mint(
                secret,
                tenant_claim,
                subject_claim,
                issuer,
                audience,
                tenant,
                subject,
            );
            value(&format!("Bearer {token}"))
                .map(|v| vec![(http::header::AUTHORIZATION, v)])
                .unwrap_or_default()
        }
        Identity::Header {
            tenant_header,
            subject_header,
        } => {
            let mut out = Vec::new();
            for (name, v) in [(tenant_header, tenant), (subject_header, subject)] {
                if let (Ok(n), Some(v)) = (HeaderName::try_from(name.as_str()), value(v)) {
                    out.push((n, v));
                }
            }
            out
        }
        Identity::None => Vec::new(),
    }
}

/// An HS256 token valid for a day; a dotted claim name (`app_metadata.tenant_id`) makes nested
/// objects, as the gateway's claim paths read them.
fn mint(
    secret: &str,
    tenant_claim: &str,
    subject_claim: &str,
    issuer: &Option<String>,
    audience: &Option<String>,
    tenant: &str,
    subject: &str,
) -> String {
    use serde_json::{Map, Value};
    fn put(claims: &mut Map<String, Value>, path: &str, value: &str) {
        match path.split_once('.') {
            None => {
                claims.insert(path.to_string(), value.into());
            }
            Some((head, rest)) => {
                let entry = claims
                    .entry(head.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(m) = entry {
                    put(m, rest, value);
                }
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + 24 * 3600).into());
    claims.insert("role".into(), "authenticated".into());
    put(&mut claims, subject_claim, subject);
    put(&mut claims, tenant_claim, tenant);
    if let Some(i) = issuer {
        claims.insert("iss".into(), i.as_str().into());
    }
    if let Some(a) = audience {
        claims.insert("aud".into(), a.as_str().into());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn think_times_average_their_mean_and_are_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mean = Duration::from_secs(2);
        let n = 20_000;
        let draws: Vec<Duration> = (0..n).map(|_| exponential(&mut rng, mean)).collect();
        let avg = draws.iter().sum::<Duration>().as_secs_f64() / n as f64;
        assert!((avg - 2.0).abs() < 0.1, "mean think time {avg}");
        assert!(draws.iter().all(|d| *d <= mean * 10));
    }

    #[test]
    fn users_arrive_evenly_over_the_ramp() {
        let ramp = Duration::from_secs(10);
        assert_eq!(user_offset(0, 10, ramp), Duration::ZERO);
        assert_eq!(user_offset(5, 10, ramp), Duration::from_secs(5));
    }

    #[test]
    fn zipf_favours_the_first_ranks_and_the_mix_keeps_its_weights() {
        let cdf = zipf_cdf(100, 1.0);
        assert!((cdf[99] - 1.0).abs() < 1e-9);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ids: Vec<String> = (0..100).map(|i| format!("id{i}")).collect();
        let mix = crate::loadtest::scenario::Scenario::parse(
            "[[target]]\nurl = \"http://a:1\"\n[identity]\nmode = \"none\"\n",
        )
        .unwrap()
        .mix;
        let mut writes = 0;
        let mut first = 0;
        for _ in 0..10_000 {
            let p = pick(&mut rng, &mix, &cdf, &ids);
            writes += p.kind.is_write() as u32;
            first += p.path.ends_with("/id0") as u32;
        }
        assert!((800..1200).contains(&writes), "{writes} writes of 10000");
        // Rank 1 of Zipf(1) over 100 has 1/H(100) ≈ 19 % of the 70 % of requests with an id.
        assert!(
            (1100..1600).contains(&first),
            "{first} requests for the first rank"
        );
    }

    #[test]
    fn tokens_carry_the_configured_claims() {
        let identity = Identity::Jwt {
            secret: "s3cret".into(),
            tenant_claim: "app_metadata.tenant_id".into(),
            subject_claim: "sub".into(),
            issuer: Some("iss-1".into()),
            audience: None,
        };
        let h = identity_headers(&identity, "acme", "u1");
        let token = h[0]
            .1
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_string();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["app_metadata"]["tenant_id"], "acme");
        assert_eq!(data.claims["iss"], "iss-1");
    }
}
