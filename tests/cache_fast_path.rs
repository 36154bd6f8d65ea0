//! The fresh-hit fast path (issue 21): a fresh in-memory hit is answered from `request_filter`
//! without Pingora's cache state machine, and must answer exactly as that state machine does.
//! Two gateways with the same config, one with the fast path and one with
//! `OMSGATE_CACHE_FAST_PATH=off`, get the same requests — gzip, identity and no
//! `Accept-Encoding`, HEAD, matching and other `If-None-Match`, a range — and their answers are
//! compared field by field and byte by byte; the fast one counts its hits in
//! `omsgate_cache_fast_hits_total`, the other never. An expired entry is never a fast hit.
//! (The other cache, compression and HEAD tests run against both paths too: `scripts/test` runs
//! them again with the fast path off.)

mod common;

use std::time::Duration;

use common::reply::{send, Reply};
use common::{Gateway, TestUpstream};

/// Fields that differ between two answers to the same request for reasons other than the path
/// taken: the time, the request id, and which upstream request filled each gateway's entry.
const UNCOMPARED: &[&str] = &["date", "age", "x-request-id", "x-upstream-seq"];

/// A request (method, header fields) and whether it takes the fast path.
type Case<'a> = (&'a reqwest::Method, Vec<(&'a str, &'a str)>, bool);

/// Every compared field of `reply` with its values, sorted by name.
fn fields(reply: &Reply) -> Vec<(String, Vec<String>)> {
    let mut names: Vec<&str> = reply
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| !UNCOMPARED.contains(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values = reply.headers.get_all(name).iter();
            let values = values.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            (name.to_string(), values.collect())
        })
        .collect()
}

/// A gateway with the in-memory cache only, the fast path on or off whatever the test process's
/// environment says.
fn gateway(up: &TestUpstream, fast: bool) -> Gateway {
    let config = format!(
        r#"
[server]
listen = "{{listen}}"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]

[[route]]
name = "short"
path = "/etag/short"
cache = {{ ttl = "1s", scope = "public" }}

[[route]]
name = "etag"
path = "/etag/{{tag}}"
cache = {{ ttl = "60s", scope = "public" }}
"#,
        up.addr
    );
    let switch = if fast { "on" } else { "off" };
    Gateway::start_with_env(&config, &[("OMSGATE_CACHE_FAST_PATH", switch)])
}

fn fast_hits(gw: &Gateway, route: &str) -> f64 {
    gw.metric_value("omsgate_cache_fast_hits_total", &[("route", route)])
        .unwrap_or(0.0)
}

/// `GET path` with `headers` through both gateways: each a miss that fills its entry. Returns
/// the two answers.
async fn fill_both(
    fast: &Gateway,
    slow: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Reply> {
    let mut misses = Vec::new();
    for gw in [fast, slow] {
        let miss = send(gw, reqwest::Method::GET, path, headers).await;
        assert_eq!(miss.header("x-cache"), Some("MISS"), "{miss:?}");
        misses.push(miss);
    }
    misses
}

/// The same request to both gateways: both hits with `Age`, the same status, compared fields
/// and body. Returns the fast path's answer.
async fn same_hit(
    fast: &Gateway,
    slow: &Gateway,
    method: &reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let ctx = format!("{method} {headers:?}");
    let a = send(fast, method.clone(), path, headers).await;
    let b = send(slow, method.clone(), path, headers).await;
    assert_eq!(a.status, b.status, "{ctx}: status");
    assert_eq!(a.header("x-cache"), Some("HIT"), "{ctx}: {a:?}");
    assert_eq!(fields(&a), fields(&b), "{ctx}: header fields");
    assert_eq!(a.body, b.body, "{ctx}: body");
    assert!(a.header("age").is_some(), "{ctx}: a hit carries Age");
    a
}

#[tokio::test]
async fn fast_hits_answer_exactly_like_pingoras_cache() {
    let up = TestUpstream::start();
    let fast = gateway(&up, true);
    let slow = gateway(&up, false);
    let path = "/etag/fp?body_len=20000";
    fill_both(&fast, &slow, path, &[("accept-encoding", "gzip")]).await;
    // The entry is stored gzipped with a weak ETag (the compression module's); ask for both.
    let etag = send(&fast, reqwest::Method::HEAD, path, &[]).await;
    let etag = etag.header("etag").expect("an ETag").to_string();
    let get = reqwest::Method::GET;
    let head = reqwest::Method::HEAD;
    let cases: Vec<Case> = vec![
        (&get, vec![("accept-encoding", "gzip")], true),
        (&get, vec![], true),
        (&get, vec![("accept-encoding", "identity")], true),
        (&get, vec![("accept-encoding", "br;q=1, gzip;q=0.5")], true),
        (&head, vec![("accept-encoding", "gzip")], true),
        (&head, vec![], true),
        (&get, vec![("if-none-match", etag.as_str())], true),
        (&get, vec![("if-none-match", "\"fp\"")], true),
        (&get, vec![("if-none-match", "\"other\"")], true),
        (&head, vec![("if-none-match", etag.as_str())], true),
        // A range is left to Pingora's cache (it seeks in the stored body).
        (&get, vec![("range", "bytes=0-99")], false),
        (
            &get,
            vec![("accept-encoding", "gzip"), ("range", "bytes=10-")],
            false,
        ),
    ];
    // The HEAD that asked for the ETag was the first fast hit.
    let mut expected_fast = 1.0;
    for (method, headers, takes_fast_path) in &cases {
        let ctx = format!("{method} {headers:?}");
        same_hit(&fast, &slow, method, path, headers).await;
        if *takes_fast_path {
            expected_fast += 1.0;
        }
        assert_eq!(fast_hits(&fast, "etag"), expected_fast, "{ctx}: fast hits");
    }
    assert_eq!(up.hits(), 2, "every answer after the two misses was a hit");
    assert_eq!(
        fast_hits(&slow, "etag"),
        0.0,
        "the switch turns the fast path off"
    );
    let counted = |gw: &Gateway| {
        gw.metric_value(
            "omsgate_cache_requests_total",
            &[("route", "etag"), ("result", "hit")],
        )
    };
    let hits = cases.len() as f64;
    assert!(
        common::eventually(Duration::from_secs(5), || counted(&fast)
            == Some(hits + 1.0)
            && counted(&slow) == Some(hits))
        .await,
        "hits counted alike: {:?} and {:?}",
        counted(&fast),
        counted(&slow)
    );
}

/// An entry stored as the origin sent it (too small to compress, with its `Content-Length`):
/// both paths answer alike, `Accept-Ranges` included, which Pingora's cache adds to every `200`
/// hit with a length.
#[tokio::test]
async fn fast_hits_of_an_identity_entry_answer_like_pingoras_cache() {
    let up = TestUpstream::start();
    let fast = gateway(&up, true);
    let slow = gateway(&up, false);
    let path = "/etag/small?body_len=200";
    for miss in fill_both(&fast, &slow, path, &[]).await {
        assert!(miss.header("content-encoding").is_none(), "{miss:?}");
    }
    let (get, head) = (reqwest::Method::GET, reqwest::Method::HEAD);
    for (method, headers) in [
        (&get, vec![]),
        (&get, vec![("accept-encoding", "gzip")]),
        (&head, vec![]),
    ] {
        let a = same_hit(&fast, &slow, method, path, &headers).await;
        assert_eq!(
            a.header("accept-ranges"),
            Some("bytes"),
            "{method} {headers:?}"
        );
    }
    assert_eq!(fast_hits(&fast, "etag"), 3.0);
}

#[tokio::test]
async fn an_expired_entry_is_never_a_fast_hit() {
    let up = TestUpstream::start();
    let fast = gateway(&up, true);
    let path = "/etag/short?body_len=2000";
    let miss = send(&fast, reqwest::Method::GET, path, &[]).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    let hit = send(&fast, reqwest::Method::GET, path, &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(fast_hits(&fast, "short"), 1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = send(&fast, reqwest::Method::GET, path, &[]).await;
    assert_ne!(expired.header("x-cache"), Some("HIT"), "{expired:?}");
    assert_eq!(up.hits(), 2, "the expired entry went to the OMS");
    assert_eq!(fast_hits(&fast, "short"), 1.0);
    // The refreshed entry is fresh again: a fast hit.
    let again = send(&fast, reqwest::Method::GET, path, &[]).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(fast_hits(&fast, "short"), 2.0);
}
