//! `omsgate query-check [-c config.toml] [--route NAME] [--samples N]`: before a route is bound
//! to its pooled query in production, asks the OMS and the pooled query the same requests and
//! compares the answers.
//!
//! The requests come from each query's `samples` SQL (one row per request: a `tenant` column and
//! a column per parameter). The answers are compared as JSON documents: key order ignored,
//! numbers compared as numbers, fields named by `--ignore` left out anywhere (timestamps);
//! statuses must be equal. A per-route table is printed with the first differing JSON path of
//! each different sample and both values. Exit 0 when every sample is equal, 1 on any difference
//! (or a route that could not be checked), 64 for a bad config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use crate::db::queries::{Query, Source};
use crate::db::{DatabaseConfig, QueryPaths};
use crate::routes::{Params, Route};

/// Options of `query-check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (routes, `[queries]`, `[database]`, `[upstream]`).
    #[arg(long, short = 'c', default_value = "config.toml")]
    pub config: PathBuf,
    /// Check only this route.
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Samples per route (the first N rows of the query's `samples` SQL, or of the file).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Take the samples from this CSV file instead of the queries' `samples` SQL: a header line
    /// naming the columns `route`, `tenant` and one per parameter, then one sample per line
    /// (values without commas; `#` lines are skipped). A route with no line is not checked.
    #[arg(long, value_name = "FILE")]
    pub samples_file: Option<PathBuf>,
    /// Base URL of the OMS, `http://` or `https://` (verified against the system roots and
    /// `[tls] ca_file`). Default: the first `[upstream] servers` entry as written.
    #[arg(long, value_name = "URL")]
    pub oms: Option<String>,
    /// PostgreSQL URL (overrides `[database] url`).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// A JSON field to leave out of the comparison wherever it appears (repeatable), e.g.
    /// `--ignore updated_at`.
    #[arg(long = "ignore", value_name = "FIELD")]
    pub ignore: Vec<String>,
    /// Compare numbers as written (`37.50` differs from `37.5`) instead of by value.
    #[arg(long)]
    pub numbers_as_text: bool,
    /// Header telling the OMS the tenant, when no token is minted.
    #[arg(long, default_value = "x-tenant-id", value_name = "NAME")]
    pub tenant_header: String,
    /// Environment variable holding the OMS's HS256 secret: the OMS is then sent a bearer token
    /// for the sample's tenant (claim `[identity] tenant_claim`) instead of the tenant header.
    #[arg(long, value_name = "VAR")]
    pub jwt_secret_env: Option<String>,
}

/// One compared sample.
struct Outcome {
    request: String,
    tenant: String,
    difference: Option<String>,
    declined: bool,
}

/// Runs `query-check`; returns the exit code.
pub fn main(args: Args) -> i32 {
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    let database = match &args.database_url {
        Some(url) => config.database.with_url(url, "--database-url"),
        None => config.database.clone(),
    };
    let base = match &args.oms {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => match config.upstream.servers.first() {
            // The first server as the config names it: https:// servers by their host name
            // (the name their certificate is checked against).
            Some(addr) if config.upstream.tls => {
                let host = config
                    .upstream
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| addr.ip().to_string());
                format!("https://{host}:{}", addr.port())
            }
            Some(addr) => format!("http://{addr}"),
            None => {
                eprintln!("query-check: no OMS: pass --oms URL or set [upstream] servers");
                return super::EXIT_CONFIG;
            }
        },
    };
    let oms = Oms {
        base,
        tls: config.tls.client_config(&[b"http/1.1"]),
    };
    let secret = match &args.jwt_secret_env {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                eprintln!("query-check: --jwt-secret-env: ${var} is not set");
                return super::EXIT_CONFIG;
            }
        },
        None => None,
    };
    let routes: Vec<&Route> = config
        .routes
        .routes
        .iter()
        .filter(|r| r.query.is_some())
        .filter(|r| args.route.as_deref().is_none_or(|n| r.name == n))
        .collect();
    if routes.is_empty() {
        eprintln!("query-check: no route with a `query` binding to check");
        return super::EXIT_CONFIG;
    }
    let run = async {
        let mut failed = false;
        println!(
            "{:<24} {:<24} {:>7} {:>6} {:>9} {:>6}",
            "route", "query", "samples", "equal", "different", "to_oms"
        );
        let paths = QueryPaths::new(&database).map_err(|e| e.to_string())?;
        for route in routes {
            let name = route.query.as_deref().unwrap_or_default();
            let Some(query) = config.queries.get(name) else {
                continue;
            };
            let outcomes = match check_route(
                &args,
                &database,
                &paths,
                &oms,
                secret.as_deref(),
                &config.identity.tenant_claim,
                route,
                query,
            )
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    failed = true;
                    println!("{:<24} {:<24} not checked: {e}", route.name, name);
                    continue;
                }
            };
            let different: Vec<&Outcome> =
                outcomes.iter().filter(|o| o.difference.is_some()).collect();
            let declined = outcomes.iter().filter(|o| o.declined).count();
            println!(
                "{:<24} {:<24} {:>7} {:>6} {:>9} {:>6}",
                route.name,
                name,
                outcomes.len(),
                outcomes.len() - different.len() - declined,
                different.len(),
                declined
            );
            for o in &different {
                println!(
                    "  different: GET {} (tenant {}): {}",
                    o.request,
                    o.tenant,
                    o.difference.as_deref().unwrap_or_default()
                );
            }
            failed |= !different.is_empty() || outcomes.is_empty();
        }
        Ok::<bool, String>(failed)
    };
    match super::block_on(run) {
        Ok(Ok(false)) => 0,
        Ok(Ok(true)) => 1,
        Ok(Err(e)) | Err(e) => {
            eprintln!("query-check: {e}");
            1
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn check_route(
    args: &Args,
    database: &DatabaseConfig,
    paths: &QueryPaths,
    oms: &Oms,
    secret: Option<&str>,
    tenant_claim: &str,
    route: &Route,
    query: &Query,
) -> Result<Vec<Outcome>, String> {
    let samples = match &args.samples_file {
        Some(file) => samples_from_file(file, &route.name)?,
        None => samples_from_sql(database, query).await?,
    };
    let mut outcomes = Vec::new();
    for row in samples.iter().take(args.samples) {
        let column = |name: &str| row.get(name).cloned();
        let tenant = column("tenant").ok_or("the samples SQL returns no `tenant` column")?;
        let mut params = Params::default();
        let mut pairs = Vec::new();
        for p in &query.params {
            match (p.source, column(&p.name)) {
                (Source::Path, Some(v)) => params.0.push((p.name.clone(), v)),
                (Source::Path, None) => {
                    return Err(format!("the samples SQL gives no `{}`", p.name))
                }
                (Source::Query, Some(v)) => pairs.push(format!(
                    "{}={}",
                    encode_component(&p.name),
                    encode_component(&v)
                )),
                (Source::Query, None) => {}
            }
        }
        let qs = pairs.join("&");
        let path = route.pattern.render(&params);
        let request = if qs.is_empty() {
            path.clone()
        } else {
            format!("{path}?{qs}")
        };
        let pooled = paths
            .answer(
                query,
                &tenant,
                None,
                &params,
                (!qs.is_empty()).then_some(qs.as_str()),
            )
            .await;
        let oms_answer = oms_get(
            oms,
            &request,
            &tenant,
            &args.tenant_header,
            secret,
            tenant_claim,
        )
        .await?;
        let (difference, declined) = match pooled {
            Ok(Some(r)) => {
                let how = Compare {
                    ignore: &args.ignore,
                    numbers_as_text: args.numbers_as_text,
                };
                (compare(&r.status, &r.body, &oms_answer, &how), false)
            }
            Ok(None) => (None, true),
            Err(e) => (Some(format!("the pooled query failed: {e}")), false),
        };
        outcomes.push(Outcome {
            request,
            tenant,
            difference,
            declined,
        });
    }
    Ok(outcomes)
}

/// One sample: column name → value.
type Sample = BTreeMap<String, String>;

/// The rows of the query's `samples` SQL.
async fn samples_from_sql(database: &DatabaseConfig, query: &Query) -> Result<Vec<Sample>, String> {
    if query.samples.trim().is_empty() {
        return Err(format!(
            "no samples: set queries.{}.samples (SQL returning a `tenant` column and one per \
             parameter), or pass --samples-file",
            query.name
        ));
    }
    let url = database.require_url().map_err(|e| e.to_string())?;
    let client = crate::db::connect_trusting(url, &database.trust_roots, None)
        .await
        .map_err(|e| e.to_string())?;
    if database.schema != "public" {
        client
            .batch_execute(&format!("SET search_path TO {}", database.schema_ident()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let rows = client
        .simple_query(&query.samples)
        .await
        .map_err(|e| format!("samples SQL: {}", crate::db::DbError::Query(e)))?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((c.name().to_string(), r.get(i)?.to_string())))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// The lines of a `--samples-file` for `route`.
fn samples_from_file(file: &std::path::Path, route: &str) -> Result<Vec<Sample>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse_samples(&text, route).map_err(|e| format!("{}: {e}", file.display()))
}

/// Parses the CSV of `--samples-file`, keeping the lines of `route`.
fn parse_samples(text: &str, route: &str) -> Result<Vec<Sample>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let header: Vec<String> = match lines.next() {
        Some((_, l)) => l.split(',').map(|c| c.trim().to_string()).collect(),
        None => return Ok(Vec::new()),
    };
    for required in ["route", "tenant"] {
        if !header.iter().any(|c| c == required) {
            return Err(format!("the header line names no `{required}` column"));
        }
    }
    let mut out = Vec::new();
    for (n, line) in lines {
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != header.len() {
            return Err(format!(
                "line {}: {} values for {} columns",
                n + 1,
                values.len(),
                header.len()
            ));
        }
        let sample: Sample = header
            .iter()
            .cloned()
            .zip(values.iter().map(|v| v.to_string()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if sample.get("route").map(String::as_str) == Some(route) {
            out.push(sample);
        }
    }
    Ok(out)
}

/// A query-string component: unreserved characters as they are, every other byte `%XX`.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET base+request` with the tenant's identity (TLS for `https://`, verified with `tls`):
/// status and body.
async fn oms_get(
    oms: &Oms,
    request: &str,
    tenant: &str,
    tenant_header: &str,
    secret: Option<&str>,
    tenant_claim: &str,
) -> Result<(u16, Bytes), String> {
    let base = &oms.base;
    let uri: http::Uri = format!("{base}{request}")
        .parse()
        .map_err(|e| format!("{base}{request}: {e}"))?;
    let identity = match secret {
        Some(secret) => {
            let token = crate::identity::issue_hs256(
                secret,
                tenant_claim,
                tenant,
                "omsgate-query-check",
                std::time::Duration::from_secs(300),
            );
            (http::header::AUTHORIZATION, format!("Bearer {token}"))
        }
        None => (
            http::HeaderName::try_from(tenant_header)
                .map_err(|e| format!("{tenant_header}: {e}"))?,
            tenant.to_string(),
        ),
    };
    let answer = crate::http_get::get(&uri, &[identity], oms.tls.clone(), MAX_OMS_BODY)
        .await
        .map_err(|e| format!("OMS: {e}"))?;
    Ok((answer.status.as_u16(), answer.body))
}

/// The OMS `query-check` asks: its base URL and the trust store for `https://` (`[tls]`).
struct Oms {
    base: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

/// The largest OMS answer `query-check` reads.
const MAX_OMS_BODY: usize = 64 << 20;

/// The first difference between the pooled answer and the OMS's, if any.
fn compare(status: &u16, body: &[u8], oms: &(u16, Bytes), how: &Compare) -> Option<String> {
    if *status != oms.0 {
        return Some(format!("status: pooled {status}, OMS {}", oms.0));
    }
    match (
        serde_json::from_slice::<Value>(body),
        serde_json::from_slice::<Value>(&oms.1),
    ) {
        (Ok(a), Ok(b)) => first_difference("$", &a, &b, how)
            .map(|(path, a, b)| format!("{path}: pooled {a}, OMS {b}")),
        _ if body == &oms.1[..] => None,
        _ => Some(format!(
            "body (not JSON): pooled {:?}, OMS {:?}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&oms.1)
        )),
    }
}

/// How two documents are compared.
pub struct Compare<'a> {
    /// Keys left out wherever they appear.
    pub ignore: &'a [String],
    /// Numbers compared as written rather than by value.
    pub numbers_as_text: bool,
}

/// The first JSON path where `a` and `b` differ (keys in sorted order, numbers by value unless
/// `numbers_as_text`, `ignore`d keys left out), with both values.
pub fn first_difference(
    path: &str,
    a: &Value,
    b: &Value,
    how: &Compare,
) -> Option<(String, String, String)> {
    let ignore = how.ignore;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys.into_iter().filter(|k| !ignore.contains(k)) {
                let here = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(&here, u, v, how) {
                            return Some(d);
                        }
                    }
                    (u, v) => {
                        let show =
                            |v: Option<&Value>| v.map_or("(absent)".into(), Value::to_string);
                        return Some((here, show(u), show(v)));
                    }
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), u, v, how) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| {
                (
                    format!("{path}.length"),
                    x.len().to_string(),
                    y.len().to_string(),
                )
            })
        }
        (Value::Number(x), Value::Number(y))
            if !how.numbers_as_text && x.as_f64() == y.as_f64() =>
        {
            None
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_samples_file_keeps_its_routes_lines_and_names_what_is_wrong() {
        let text =
            "# samples\nroute,tenant,id,limit\ninvoice,acme,7,\npage,acme,,5\ninvoice,globex,9,\n";
        let got = parse_samples(text, "invoice").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["tenant"], "acme");
        assert_eq!(got[0]["id"], "7");
        assert!(
            !got[0].contains_key("limit"),
            "empty values are absent parameters"
        );
        assert_eq!(parse_samples(text, "page").unwrap()[0]["limit"], "5");
        assert!(parse_samples(text, "payments").unwrap().is_empty());
        let err = parse_samples("route,id\ninvoice,7\n", "invoice").unwrap_err();
        assert!(err.contains("`tenant`"), "{err}");
        let err = parse_samples("route,tenant\ninvoice,acme,extra\n", "invoice").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn documents_compare_semantically_and_name_the_first_difference() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"x": 2.0, "t": 1}], "a": "s"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": "s", "b": [1.0, {"t": 9, "x": 2}]}"#).unwrap();
        let by_value = Compare {
            ignore: &[],
            numbers_as_text: false,
        };
        assert_eq!(
            first_difference("$", &a, &b, &by_value),
            Some(("$.b[1].t".into(), "1".into(), "9".into()))
        );
        let ignore_t = ["t".to_string()];
        let without_t = Compare {
            ignore: &ignore_t,
            numbers_as_text: false,
        };
        assert_eq!(first_difference("$", &a, &b, &without_t), None);
        let as_text = Compare {
            ignore: &ignore_t,
            numbers_as_text: true,
        };
        assert_eq!(
            first_difference("$", &a, &b, &as_text),
            Some(("$.b[0]".into(), "1".into(), "1.0".into()))
        );
        let c: Value = serde_json::from_str(r#"{"a": "s", "b": [1]}"#).unwrap();
        assert_eq!(
            first_difference("$", &a, &c, &by_value),
            Some(("$.b.length".into(), "2".into(), "1".into()))
        );
    }
}
