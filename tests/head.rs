//! `HEAD` carries exactly the header fields `GET` would (RFC 9110 §9.3.2) — `Content-Encoding`,
//! `Content-Length` or chunked framing, `Vary`, `ETag` — for clients with and without
//! `Accept-Encoding: gzip`, on cache hits (from the L1 and from Redis alone), misses, stale
//! answers, 304s and uncached routes; and a `HEAD` that misses stores the representation a `GET`
//! would (gzip at `store_level`), so later hits do not depend on which method filled the entry.

mod common;

use std::io::Read;

use common::reply::{send, Reply};
use common::upstream::deterministic_body;
use common::{Gateway, TestUpstream};

/// The header fields whose value depends on the representation and its framing.
const COMPARED: &[&str] = &[
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "vary",
    "etag",
    "content-type",
    "accept-ranges",
    "x-cache",
];

/// The compared header fields, as (name, values) pairs.
fn representation(reply: &Reply) -> Vec<(&'static str, Vec<String>)> {
    COMPARED
        .iter()
        .map(|name| {
            let values = reply
                .headers
                .get_all(*name)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase())
                .collect();
            (*name, values)
        })
        .collect()
}

/// `Accept-Encoding` as a header list: none, or the one value.
fn ae(value: Option<&str>) -> Vec<(&str, &str)> {
    value
        .map(|v| vec![("accept-encoding", v)])
        .unwrap_or_default()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

/// `get`'s compared fields as a `HEAD` may carry them. A body compressed or decoded whole on
/// its way from the origin is sent with the `Content-Length` it came out at (chunked if the
/// decoder's output came in pieces); a `HEAD`, which makes no body, cannot know which and
/// carries no framing at all (RFC 9110 §9.3.2: a HEAD may omit fields only generating the
/// content determines). Everything else, and every answer from the cache (`HIT`, `STALE`:
/// stored with their length), must be field for field the same.
fn head_representation(get: &Reply, head: &Reply) -> Vec<(&'static str, Vec<String>)> {
    let mut fields = representation(get);
    let from_cache = matches!(get.header("x-cache"), Some("HIT") | Some("STALE"));
    let unframed =
        head.header("content-length").is_none() && head.header("transfer-encoding").is_none();
    if unframed && !from_cache {
        for (name, values) in &mut fields {
            if matches!(*name, "content-length" | "transfer-encoding") {
                values.clear();
            }
        }
    }
    fields
}

/// Asserts that `head` has the status and header fields of `get`, and no body.
fn assert_same_header(get: &Reply, head: &Reply, ctx: &str) {
    assert_eq!(head.status, get.status, "{ctx}: status");
    assert_eq!(
        representation(head),
        head_representation(get, head),
        "{ctx}: HEAD and GET header fields differ"
    );
    assert!(head.body.is_empty(), "{ctx}: HEAD with a body");
}

/// A gateway caching `/etag/{tag}` (fresh for a minute; `/etag/stale` for a second, then
/// `stale_if_error`) with its entries in the shared Redis and, unless `memory` says otherwise,
/// the L1.
fn gateway(up: &TestUpstream, memory: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = "{{listen}}"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
[cache]
redis_url = "{}"
redis_timeout = "500ms"
key_prefix = "{}:"
{memory}

[[route]]
name = "stale"
path = "/etag/stale"
cache = {{ ttl = "1s", scope = "public", stale_if_error = "10m" }}

[[route]]
name = "etag"
path = "/etag/{{tag}}"
cache = {{ ttl = "60s", scope = "public" }}

[[route]]
name = "bytes"
path = "/bytes/{{n}}"
"#,
        up.addr,
        common::redis_url(),
        common::unique("head")
    ))
}

const CLIENTS: [Option<&str>; 3] = [None, Some("identity"), Some("gzip")];

#[tokio::test]
async fn hits_from_the_l1_and_from_redis_carry_the_get_header_fields() {
    let up = TestUpstream::start();
    let original = deterministic_body(12_000);
    for (tier, memory) in [("L1", ""), ("Redis", "memory = { max_bytes = 0 }")] {
        let gw = gateway(&up, memory);
        let path = "/etag/hit?body_len=12000";
        let miss = send(&gw, reqwest::Method::GET, path, &ae(Some("gzip"))).await;
        assert_eq!(miss.header("x-cache"), Some("MISS"), "{tier}");
        for client in CLIENTS {
            let ctx = format!("{tier}, Accept-Encoding {client:?}");
            // HEAD first, then GET, then HEAD again: whichever comes first (and makes the L1's
            // decoded copy), the header fields are the same.
            let head = send(&gw, reqwest::Method::HEAD, path, &ae(client)).await;
            let get = send(&gw, reqwest::Method::GET, path, &ae(client)).await;
            let again = send(&gw, reqwest::Method::HEAD, path, &ae(client)).await;
            assert_eq!(get.header("x-cache"), Some("HIT"), "{ctx}");
            assert_same_header(&get, &head, &ctx);
            assert_same_header(&get, &again, &ctx);
            assert!(
                get.header("vary")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                "{ctx}: Vary"
            );
            if client == Some("gzip") {
                assert_eq!(head.header("content-encoding"), Some("gzip"), "{ctx}");
                assert_eq!(gunzip(&get.body), original, "{ctx}");
            } else {
                assert!(head.header("content-encoding").is_none(), "{ctx}");
                assert_eq!(get.body, original, "{ctx}");
            }
            if let Some(len) = get.header("content-length") {
                assert_eq!(len, get.body.len().to_string(), "{ctx}");
            }
        }
    }
}

#[tokio::test]
async fn a_head_miss_has_the_get_header_fields_and_stores_what_a_get_would() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let original = deterministic_body(12_000);
    for client in CLIENTS {
        let ctx = format!("Accept-Encoding {client:?}");
        let tag = client.unwrap_or("none").replace(';', "");
        // Two entries with the same content, one filled by HEAD and one by GET.
        let by_head = format!("/etag/head-{tag}?body_len=12000");
        let by_get = format!("/etag/get-{tag}?body_len=12000");
        let head = send(&gw, reqwest::Method::HEAD, &by_head, &ae(client)).await;
        let get = send(&gw, reqwest::Method::GET, &by_get, &ae(client)).await;
        assert_eq!(head.header("x-cache"), Some("MISS"), "{ctx}");
        assert_eq!(get.header("x-cache"), Some("MISS"), "{ctx}");
        // The ETags differ by path (`"head-…"`, `"get-…"`); the rest must not.
        let strip = |fields: Vec<(&'static str, Vec<String>)>| {
            fields
                .into_iter()
                .filter(|(n, _)| *n != "etag")
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(representation(&head)),
            strip(head_representation(&get, &head)),
            "{ctx}: HEAD and GET misses differ"
        );
        assert!(head.body.is_empty(), "{ctx}");
        let fill = up
            .last_seen(&format!("/etag/head-{tag}"))
            .expect("the upstream saw the HEAD's fill");
        assert_eq!(fill.method, "GET", "{ctx}: the cache fills with a GET");
        assert_eq!(
            fill.headers.get("accept-encoding").map(String::as_str),
            Some("gzip"),
            "{ctx}: a HEAD miss asks the origin for the coding the cache stores"
        );

        // The stored representations are the same: gzip at store_level (6), sent as stored,
        // not compressed live at `level` (1). The gzip header's XFL byte tells the two apart
        // (flate2 writes 4 for level 1, 0 for 2-8); the bytes themselves can differ where the
        // origin's chunks were split differently.
        let after_head = send(&gw, reqwest::Method::GET, &by_head, &ae(Some("gzip"))).await;
        let after_get = send(&gw, reqwest::Method::GET, &by_get, &ae(Some("gzip"))).await;
        assert_eq!(after_head.header("x-cache"), Some("HIT"), "{ctx}");
        assert_eq!(after_head.header("content-encoding"), Some("gzip"), "{ctx}");
        let xfl = |r: &Reply| r.body.get(8).copied();
        assert_eq!(xfl(&after_get), Some(0), "{ctx}: a GET's entry is gzip 6");
        assert_eq!(
            xfl(&after_head),
            xfl(&after_get),
            "{ctx}: the entry a HEAD filled is not compressed like the one a GET fills"
        );
        assert_eq!(gunzip(&after_head.body), original, "{ctx}");
        assert_eq!(gunzip(&after_get.body), original, "{ctx}");
    }
}

#[tokio::test]
async fn stale_answers_and_304s_carry_the_get_header_fields() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    // 304 from a fresh entry, for a client holding the (weakened) tag.
    let fresh = "/etag/cond?body_len=12000";
    let miss = send(&gw, reqwest::Method::GET, fresh, &ae(Some("gzip"))).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    let tag = miss.header("etag").expect("an ETag").to_string();
    for client in CLIENTS {
        let ctx = format!("304, Accept-Encoding {client:?}");
        let mut headers = ae(client);
        headers.push(("if-none-match", tag.as_str()));
        let get = send(&gw, reqwest::Method::GET, fresh, &headers).await;
        let head = send(&gw, reqwest::Method::HEAD, fresh, &headers).await;
        assert_eq!(get.status, 304, "{ctx}");
        assert_same_header(&get, &head, &ctx);
    }

    // Past the TTL with the origin failing: the entry is served stale (stale_if_error).
    let path = "/etag/stale?body_len=12000";
    let miss = send(&gw, reqwest::Method::GET, path, &ae(Some("gzip"))).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    up.fail_with(Some(503));
    for client in CLIENTS {
        let ctx = format!("stale, Accept-Encoding {client:?}");
        let get = send(&gw, reqwest::Method::GET, path, &ae(client)).await;
        let head = send(&gw, reqwest::Method::HEAD, path, &ae(client)).await;
        assert_eq!(get.header("x-cache"), Some("STALE"), "{ctx}");
        assert_same_header(&get, &head, &ctx);
        if client == Some("gzip") {
            assert_eq!(head.header("content-encoding"), Some("gzip"), "{ctx}");
        } else {
            assert!(head.header("content-encoding").is_none(), "{ctx}");
            assert_eq!(get.body, deterministic_body(12_000), "{ctx}");
        }
    }
    up.fail_with(None);
}

#[tokio::test]
async fn uncached_responses_carry_the_get_header_fields() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    for client in CLIENTS {
        let ctx = format!("Accept-Encoding {client:?}");
        for path in ["/bytes/20000", "/bytes/20000?encoding=gzip", "/bytes/200"] {
            let ctx = format!("{ctx} {path}");
            let get = send(&gw, reqwest::Method::GET, path, &ae(client)).await;
            let head = send(&gw, reqwest::Method::HEAD, path, &ae(client)).await;
            assert!(get.header("x-cache").is_none(), "{ctx}: not a cached route");
            assert_same_header(&get, &head, &ctx);
        }
    }
}
