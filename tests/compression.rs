//! Response compression through a real gateway process in front of the real test upstream:
//! negotiation, what is left alone, ETag/`If-None-Match`, streaming, entries of the response
//! cache (in the shared Redis) served to gzip and identity clients, the route switch, metrics
//! and config validation (DESIGN.md capability 4, issue 4).

mod common;

use std::io::{Read, Write};

use common::reply::Reply;
use common::upstream::deterministic_body;
use common::{client, Gateway, TestUpstream};

/// A gateway in front of `upstream` with `extra` appended (a `[compression]` section, routes).
fn gateway(upstream: &TestUpstream, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = "{{listen}}"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
{extra}
"#,
        upstream.addr
    ))
}

/// `GET path` through the gateway, with `Accept-Encoding: ae` when given (none otherwise).
async fn get(gw: &Gateway, path: &str, ae: Option<&str>) -> Reply {
    let mut req = client().get(gw.url(path));
    if let Some(ae) = ae {
        req = req.header("accept-encoding", ae);
    }
    Reply::of(req).await
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a valid br stream");
    out
}

#[tokio::test]
async fn json_of_20kb_is_gzipped_with_vary_and_a_weak_etag_that_revalidates() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let original = deterministic_body(20_000);

    let r = get(&gw, "/etag/v1?body_len=20000", Some("gzip")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.varies_by_accept_encoding(), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "weakened, not dropped");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "compressed whole, sent with its length"
    );
    assert!(r.body.len() < original.len() / 3, "{} bytes", r.body.len());
    assert_eq!(gunzip(&r.body), original);

    // The client revalidates with the weak tag it got; the origin compares strings, so the
    // gateway's strong form in If-None-Match is what makes it answer 304.
    let r = Reply::of(
        client()
            .get(gw.url("/etag/v1?body_len=20000"))
            .header("accept-encoding", "gzip")
            .header("if-none-match", "W/\"v1\""),
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "what the client holds");
    assert!(r.body.is_empty());
    let seen = up.last_seen("/etag/v1").expect("the upstream saw it");
    assert_eq!(
        seen.headers.get("if-none-match").map(String::as_str),
        Some("W/\"v1\", \"v1\"")
    );

    // Bytes in and out are counted for gzip.
    let bytes_in = gw
        .metric_value(
            "omsgate_compression_bytes_total",
            &[("algorithm", "gzip"), ("direction", "in")],
        )
        .unwrap_or(0.0);
    let bytes_out = gw
        .metric_value(
            "omsgate_compression_bytes_total",
            &[("algorithm", "gzip"), ("direction", "out")],
        )
        .unwrap_or(0.0);
    assert_eq!(bytes_in, 20_000.0);
    assert!(bytes_out > 0.0 && bytes_out < bytes_in, "out {bytes_out}");
}

#[tokio::test]
async fn small_binary_encoded_partial_no_transform_and_304_are_untouched() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let ae = Some("gzip, br;q=0.5");
    let json_20k = deterministic_body(20_000);

    // 500 bytes: under min_size.
    let r = get(&gw, "/bytes/500", ae).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("content-length"), Some("500"));
    assert_eq!(r.body, deterministic_body(500));

    // A type outside content_types.
    let r = get(&gw, "/bytes/20000?type=image/png", ae).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, json_20k);
    assert!(!r.varies_by_accept_encoding());

    // Already encoded by the origin in a coding the client accepts: passed as it is, not
    // encoded again (the bytes are exactly the origin's).
    let r = get(
        &gw,
        "/headers?Content-Encoding=br&Content-Type=application/json&body_len=20000",
        ae,
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, json_20k);

    // 206 with Content-Range.
    let r = get(
        &gw,
        "/headers?status=206&Content-Range=bytes%200-19999/40000&Content-Type=application/json&body_len=20000",
        ae,
    )
    .await;
    assert_eq!(r.status, 206);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, json_20k);

    // Cache-Control: no-transform.
    let r = get(
        &gw,
        "/headers?Cache-Control=no-transform&Content-Type=application/json&body_len=20000",
        ae,
    )
    .await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, json_20k);

    // HEAD: the header fields a GET gets (RFC 9110 §9.3.2), no body (tests/head.rs has more).
    let r = Reply::of(
        client()
            .head(gw.url("/bytes/20000"))
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("content-length").is_none());
    assert!(r.varies_by_accept_encoding());
    assert!(r.body.is_empty());

    // 304.
    let r = get(&gw, "/status/304", ae).await;
    assert_eq!(r.status, 304);
    assert!(r.header("content-encoding").is_none());
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn identity_unless_the_client_accepts_a_configured_coding() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let original = deterministic_body(20_000);

    for ae in [
        Some("gzip;q=0"),
        Some("identity"),
        Some("br"),
        Some("*;q=0, identity"),
        None,
    ] {
        let r = get(&gw, "/bytes/20000", ae).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-encoding").is_none(), "{ae:?}");
        assert_eq!(r.body, original, "{ae:?}");
        assert!(r.varies_by_accept_encoding(), "{ae:?}");
    }
    // The request without the header really had none.
    let seen = up.last_seen("/bytes/20000").expect("the upstream saw it");
    assert!(!seen.headers.contains_key("accept-encoding"));

    // `*` covers gzip.
    let r = get(&gw, "/bytes/20000", Some("*")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), original);
}

#[tokio::test]
async fn br_and_zstd_when_enabled_and_preferred() {
    let up = TestUpstream::start();
    let gw = gateway(
        &up,
        r#"
[compression]
algorithms = ["gzip", "br", "zstd"]
levels = { br = 5, zstd = 3 }
"#,
    );
    let original = deterministic_body(20_000);

    let r = get(&gw, "/bytes/20000", Some("gzip;q=0.5, br")).await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(unbrotli(&r.body), original);

    let r = get(&gw, "/bytes/20000", Some("zstd, br;q=0.9")).await;
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(zstd::decode_all(&r.body[..]).expect("valid zstd"), original);

    // Equal q-values: the configured order decides.
    let r = get(&gw, "/bytes/20000", Some("br, zstd, gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), original);
}

#[tokio::test]
async fn a_coding_the_client_did_not_accept_is_decoded() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let original = deterministic_body(20_000);

    // Accepted: the origin's bytes as they are.
    let r = get(&gw, "/bytes/20000?encoding=gzip", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), original);
    assert!(r.varies_by_accept_encoding());

    // Not accepted (no header, gzip;q=0, only br): decoded, never gzip bytes.
    for ae in [None, Some("gzip;q=0"), Some("br")] {
        let r = get(&gw, "/bytes/20000?encoding=gzip", ae).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-encoding").is_none(), "{ae:?}");
        assert_eq!(r.body, original, "{ae:?}");
        assert!(r.varies_by_accept_encoding(), "{ae:?}");
    }
    let r = get(&gw, "/bytes/20000?encoding=br", Some("gzip")).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, original);
}

/// `GET path` with `Accept-Encoding: gzip`, answered 200 in gzip; the body is left to read.
async fn gzip_response(gw: &Gateway, path: &str) -> reqwest::Response {
    let resp = client()
        .get(gw.url(path))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    resp
}

/// The pieces of a gzip body as the client read them, decoded after each: the decoded length
/// at every step where it changed, the whole decoded body, and the bytes on the wire.
async fn decoded_steps(mut resp: reqwest::Response) -> (Vec<usize>, Vec<u8>, Vec<u8>) {
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut wire = Vec::new();
    let mut sizes = Vec::new();
    while let Some(piece) = resp.chunk().await.expect("the body streams") {
        wire.extend_from_slice(&piece);
        decoder.write_all(&piece).expect("valid gzip so far");
        decoder.flush().expect("valid gzip so far");
        let n = decoder.get_ref().len();
        if sizes.last() != Some(&n) {
            sizes.push(n);
        }
    }
    (
        sizes,
        decoder.finish().expect("a complete gzip stream"),
        wire,
    )
}

#[tokio::test]
async fn a_slow_chunked_response_reaches_the_client_chunk_by_chunk() {
    let up = TestUpstream::start();
    let gw = gateway(&up, "");
    let chunk = deterministic_body(2_000);
    let chunks = 5;

    let resp = gzip_response(&gw, "/chunked?chunks=5&delay_ms=300&size=2000").await;
    // Decode what has arrived after every piece read from the socket: with a flush per chunk
    // each upstream chunk is decodable on its own, as soon as it arrives, so the decoded text
    // grows step by step; a buffering encoder would deliver it in one piece at the end.
    let (decoded_sizes, decoded, _) = decoded_steps(resp).await;
    assert_eq!(decoded, chunk.repeat(chunks));
    assert_eq!(
        decoded_sizes.first(),
        Some(&chunk.len()),
        "the first chunk arrives alone: {decoded_sizes:?}"
    );
    assert!(
        decoded_sizes.len() >= chunks - 1,
        "the body arrived in {} decodable steps: {decoded_sizes:?}",
        decoded_sizes.len()
    );
}

/// A response with a `Content-Length` up to `whole_body_max` is compressed in one call when its
/// last byte has arrived (libdeflate at the live level), however the upstream paced it; with
/// `whole_body_max = 0` the same response streams, flushed chunk by chunk.
#[tokio::test]
async fn a_response_of_known_length_is_compressed_whole_unless_whole_body_max_is_0() {
    let up = TestUpstream::start();
    let chunk = deterministic_body(2_000);
    let original = chunk.repeat(5);
    let path = "/chunked?chunks=5&delay_ms=150&size=2000&length=1";
    let expected =
        omsgate::compress::compress_whole(omsgate::compress::Algorithm::Gzip, 1, &original)
            .expect("libdeflate compresses");

    let length = |resp: &reqwest::Response| {
        let field = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_string())
        };
        (field("content-length"), field("transfer-encoding"))
    };
    let gw = gateway(&up, "");
    let resp = gzip_response(&gw, path).await;
    let framing = length(&resp);
    let (sizes, decoded, wire) = decoded_steps(resp).await;
    assert_eq!(decoded, original);
    assert_eq!(sizes, vec![original.len()], "the body arrives in one piece");
    assert_eq!(wire, expected, "one libdeflate call over the whole body");
    assert_eq!(
        framing,
        (Some(wire.len().to_string()), None),
        "sent with its compressed length"
    );

    let gw = gateway(&up, "[compression]\nwhole_body_max = 0");
    let resp = gzip_response(&gw, path).await;
    assert_eq!(length(&resp), (None, Some("chunked".into())), "streamed");
    let (sizes, decoded, _) = decoded_steps(resp).await;
    assert_eq!(decoded, original);
    assert!(sizes.len() >= 4, "streamed chunk by chunk: {sizes:?}");
    assert_eq!(sizes.first(), Some(&chunk.len()), "{sizes:?}");
}

/// A gateway whose `/bytes/{n}` and `/chunked` routes are cached (public scope) in the shared
/// Redis, with the L1 on or off (`memory`), under a key prefix of its own.
fn cached_gateway(up: &TestUpstream, memory: &str) -> Gateway {
    gateway(
        up,
        &format!(
            r#"
[cache]
redis_url = "{}"
redis_timeout = "500ms"
key_prefix = "{}:"
{memory}

[[route]]
name = "bytes"
path = "/bytes/{{n}}"
cache = {{ ttl = "60s", scope = "public" }}

[[route]]
name = "chunked"
path = "/chunked"
cache = {{ ttl = "60s", scope = "public" }}
"#,
            common::redis_url(),
            common::unique("compression")
        ),
    )
}

#[tokio::test]
async fn a_cached_entry_gives_gzip_and_identity_clients_identical_decoded_bytes() {
    let up = TestUpstream::start();
    let original = deterministic_body(20_000);
    // From the L1, and from Redis alone (the entry as it was written there), for a body the
    // origin sends as it is (the gateway compresses it to store it) and one it sends gzipped.
    for (tier, memory) in [("L1", ""), ("Redis", "memory = { max_bytes = 0 }")] {
        let gw = cached_gateway(&up, memory);
        for path in ["/bytes/20000", "/bytes/20000?encoding=gzip"] {
            let ctx = format!("{tier} {path}");
            up.reset_hits();
            // The first client accepts no coding: a miss, stored once, sent decoded.
            let first = get(&gw, path, None).await;
            assert_eq!(first.status, 200, "{ctx}");
            assert_eq!(first.header("x-cache"), Some("MISS"), "{ctx}");
            assert!(first.header("content-encoding").is_none(), "{ctx}");
            assert_eq!(first.body, original, "{ctx}");
            let seen = up.last_seen("/bytes/20000").expect("the upstream saw it");
            assert_eq!(
                seen.headers.get("accept-encoding").map(String::as_str),
                Some("gzip"),
                "{ctx}: the origin is asked for the coding the cache stores"
            );

            // Hits: the stored gzip bytes as they are, or decoded; the same body either way.
            let gzip = get(&gw, path, Some("gzip")).await;
            assert_eq!(gzip.header("x-cache"), Some("HIT"), "{ctx}");
            assert_eq!(gzip.header("content-encoding"), Some("gzip"), "{ctx}");
            if path == "/bytes/20000" {
                // Stored as one libdeflate call at `store_level` (6) made it.
                let stored = omsgate::compress::compress_whole(
                    omsgate::compress::Algorithm::Gzip,
                    6,
                    &original,
                )
                .expect("libdeflate compresses");
                assert_eq!(gzip.body, stored, "{ctx}");
            }
            assert!(gzip.varies_by_accept_encoding(), "{ctx}");
            for ae in [None, Some("identity"), Some("gzip;q=0, br;q=0")] {
                let plain = get(&gw, path, ae).await;
                assert_eq!(plain.header("x-cache"), Some("HIT"), "{ctx} {ae:?}");
                assert!(plain.header("content-encoding").is_none(), "{ctx} {ae:?}");
                assert!(plain.varies_by_accept_encoding(), "{ctx} {ae:?}");
                assert_eq!(plain.body, gunzip(&gzip.body), "{ctx} {ae:?}");
                assert_eq!(plain.body, original, "{ctx} {ae:?}");
            }
            assert_eq!(up.hits_for("/bytes/20000"), 1, "{ctx}: one origin request");
        }
    }
}

/// Every hit of a stored entry carries its length, from the L1 (the fast path) and from Redis
/// alone (Pingora's cache): a body the gateway gzipped to store and an origin's chunked answer
/// alike, although both were framed by chunks when stored. A byte range of a gzip entry is a
/// range of the gzip bytes for a client that accepts gzip, and the whole body, decoded, for one
/// that does not.
#[tokio::test]
async fn hits_carry_the_stored_length_and_ranges_respect_the_coding() {
    let up = TestUpstream::start();
    let original = deterministic_body(20_000);
    for (tier, memory) in [("L1", ""), ("Redis", "memory = { max_bytes = 0 }")] {
        let gw = cached_gateway(&up, memory);
        for path in ["/bytes/20000", "/chunked?chunks=3&size=5000"] {
            let ctx = format!("{tier} {path}");
            let miss = get(&gw, path, Some("gzip")).await;
            assert_eq!(miss.header("x-cache"), Some("MISS"), "{ctx}");
            for _ in 0..2 {
                let hit = get(&gw, path, Some("gzip")).await;
                assert_eq!(hit.header("x-cache"), Some("HIT"), "{ctx}");
                assert_eq!(
                    hit.header("content-length"),
                    Some(hit.body.len().to_string().as_str()),
                    "{ctx}: a hit without its length"
                );
                assert!(hit.header("transfer-encoding").is_none(), "{ctx}");
                assert_eq!(hit.body, miss.body, "{ctx}");
            }
        }

        let path = "/bytes/20000";
        let whole = get(&gw, path, Some("gzip")).await;
        assert_eq!(whole.header("content-encoding"), Some("gzip"), "{tier}");
        let ranged = |ae: &'static str| {
            Reply::of(
                client()
                    .get(gw.url(path))
                    .header("accept-encoding", ae)
                    .header("range", "bytes=0-99"),
            )
        };
        let part = ranged("gzip").await;
        assert_eq!(part.status, 206, "{tier}: a range of the stored gzip");
        assert_eq!(part.header("content-encoding"), Some("gzip"), "{tier}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes 0-99/{}", whole.body.len()).as_str()),
            "{tier}"
        );
        assert_eq!(part.body, whole.body[..100], "{tier}");
        let plain = ranged("identity").await;
        assert_eq!(
            plain.status, 200,
            "{tier}: no range of gzip bytes for an identity client"
        );
        assert!(plain.header("content-encoding").is_none(), "{tier}");
        assert_eq!(plain.body, original, "{tier}");
    }
}

/// L1 hits for clients that do not accept gzip are sent from a decoded copy kept next to the
/// entry: made on the first such hit, reused after, with a `Content-Length` and the headers the
/// streaming decoder gives (weak `ETag`, `Vary`); a body that decodes beyond `max_body` is
/// decoded while streaming instead.
#[tokio::test]
async fn l1_hits_for_identity_clients_are_sent_from_a_decoded_copy() {
    let up = TestUpstream::start();
    let gw = gateway(
        &up,
        r#"
[cache]
max_body = "16KiB"

[[route]]
name = "bytes"
path = "/bytes/{n}"
cache = { ttl = "60s", scope = "public" }

[[route]]
name = "etag"
path = "/etag/{tag}"
cache = { ttl = "60s", scope = "public" }
"#,
    );
    let decoded = |result: &str| {
        gw.metric_value("omsgate_cache_decoded_copies_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    let original = deterministic_body(12_000);
    let miss = get(&gw, "/etag/v1?body_len=12000", Some("gzip")).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&miss.body), original);
    assert_eq!(miss.header("etag"), Some("W/\"v1\""));

    for (i, ae) in [None, Some("identity"), None].into_iter().enumerate() {
        let r = get(&gw, "/etag/v1?body_len=12000", ae).await;
        assert_eq!(r.status, 200, "{i}");
        assert_eq!(r.header("x-cache"), Some("HIT"), "{i}");
        assert!(r.header("content-encoding").is_none(), "{i}");
        assert_eq!(r.header("content-length"), Some("12000"), "{i}");
        assert!(r.header("transfer-encoding").is_none(), "{i}");
        assert!(r.header("accept-ranges").is_none(), "{i}");
        assert_eq!(r.header("etag"), Some("W/\"v1\""), "{i}");
        assert!(r.varies_by_accept_encoding(), "{i}");
        assert_eq!(r.body, original, "{i}");
    }
    assert_eq!(decoded("made"), 1.0, "one copy made");
    assert_eq!(decoded("reused"), 2.0, "then reused");

    // The gzip client still gets the stored bytes; a conditional request still gets a 304.
    let gz = get(&gw, "/etag/v1?body_len=12000", Some("gzip")).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.body, miss.body);
    let not_modified = Reply::of(
        client()
            .get(gw.url("/etag/v1?body_len=12000"))
            .header("if-none-match", "W/\"v1\""),
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    // 40 KB that gzips below max_body (16 KiB) is stored, but decodes beyond it: no copy,
    // decoded while streaming, the same bytes.
    let big = deterministic_body(40_000);
    let stored = get(&gw, "/bytes/40000", Some("gzip")).await;
    assert_eq!(stored.header("x-cache"), Some("MISS"));
    assert!(
        stored.body.len() < 16 * 1024,
        "{} gzip bytes",
        stored.body.len()
    );
    let r = get(&gw, "/bytes/40000", None).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, big);
    assert_eq!(decoded("skipped"), 1.0);
    assert_eq!(decoded("made"), 1.0);
}

#[tokio::test]
async fn the_route_switch_overrides_the_global_one() {
    let up = TestUpstream::start();
    let gw = gateway(
        &up,
        r#"
[compression]
enabled = false

[[route]]
name = "on"
path = "/chunked"
compression = true
"#,
    );
    let r = get(&gw, "/bytes/20000", Some("gzip")).await;
    assert!(r.header("content-encoding").is_none());
    assert!(!r.varies_by_accept_encoding());
    let r = get(&gw, "/chunked?chunks=2&size=4000", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), deterministic_body(4_000).repeat(2));
    drop(gw);

    let gw = gateway(
        &up,
        r#"
[[route]]
name = "off"
path = "/bytes/{n}"
compression = false
"#,
    );
    let r = get(&gw, "/bytes/20000", Some("gzip")).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, deterministic_body(20_000));
    let r = get(&gw, "/etag/x", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[test]
fn bad_compression_config_is_reported_by_key() {
    let (code, stderr) = Gateway::check_config(
        r#"
[compression]
algorithms = ["gzip", "lz4"]
level = 12
min_size = "lots"
content_types = ["json"]
"#,
    );
    assert_eq!(code, 64, "{stderr}");
    for key in [
        "compression.algorithms[1]",
        "compression.level",
        "compression.min_size",
        "compression.content_types[0]",
    ] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}
