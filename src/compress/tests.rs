//! Unit tests of the compression concern.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use pingora::modules::http::HttpModule;

use http::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, IF_NONE_MATCH, VARY,
};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::Config;

use super::downstream::{revalidated, Body};
use super::negotiate::parse_qvalue;
use super::*;

fn config(toml: &str) -> Arc<Config> {
    Arc::new(Config::parse(toml).unwrap_or_else(|e| panic!("config: {e}")))
}

fn accepts(v: &str) -> Accepts {
    Accepts::parse([&HeaderValue::from_str(v).unwrap()])
}

fn plan(config: &Arc<Config>, accept_encoding: Option<&str>) -> Plan {
    let accepts = accept_encoding.map(accepts).unwrap_or_default();
    Plan {
        config: config.clone(),
        enabled: config.compression.enabled,
        encode: accepts.choose(&config.compression.algorithms),
        accepts,
        head: false,
        weak_validators: vec![],
    }
}

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn problems(toml: &str) -> Vec<String> {
    match Config::parse(toml) {
        Ok(_) => vec![],
        Err(crate::config::ConfigError::Invalid(list)) => {
            list.iter().map(|p| p.to_string()).collect()
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn config_defaults_and_problems() {
    let c = CompressionConfig::default();
    assert!(c.enabled);
    assert_eq!(c.algorithms, vec![(Algorithm::Gzip, 1)]);
    assert_eq!(c.store_level, Some(6));
    assert_eq!(c.min_size, 1000);
    assert_eq!(c.whole_body_max, 256 * 1024);
    assert!(c.compresses_type("application/json; charset=utf-8"));
    assert!(c.compresses_type("Text/HTML"));
    assert!(!c.compresses_type("image/png"));
    assert!(!c.compresses_type("application/jsonx"));

    let c = config(
        "[compression]\nalgorithms = [\"br\", \"gzip\", \"zstd\"]\nlevel = 5\nlevels = { zstd = 19 }\nmin_size = \"2KiB\"\nwhole_body_max = 0",
    );
    assert_eq!(c.compression.whole_body_max, 0);
    assert_eq!(
        c.compression.algorithms,
        vec![
            (Algorithm::Brotli, 5),
            (Algorithm::Gzip, 5),
            (Algorithm::Zstd, 19)
        ]
    );
    assert_eq!(c.compression.min_size, 2048);

    let p = problems(
        "[compression]\nalgorithms = [\"gzip\", \"lz4\", \"gzip\"]\nlevel = 10\nlevels = { zstd = 3, foo = 1 }\nmin_size = \"big\"\ncontent_types = [\"json\"]\nwhole_body_max = \"lots\"",
    );
    let has = |needle: &str| p.iter().any(|s| s.starts_with(needle));
    assert!(
        has("compression.algorithms[1]: `lz4` is not one of"),
        "{p:?}"
    );
    assert!(
        has("compression.algorithms[2]: `gzip` is listed twice"),
        "{p:?}"
    );
    assert!(
        has("compression.level: level 10 is out of range for gzip: 1–9"),
        "{p:?}"
    );
    assert!(
        has("compression.levels.zstd: `zstd` is not in compression.algorithms"),
        "{p:?}"
    );
    assert!(has("compression.levels.foo:"), "{p:?}");
    assert!(has("compression.min_size:"), "{p:?}");
    assert!(
        has("compression.content_types[0]: `json` is not a media type"),
        "{p:?}"
    );
    assert!(has("compression.whole_body_max:"), "{p:?}");
    assert_eq!(p.len(), 8, "{p:?}");

    let p = problems("[compression]\nalgorithms = []");
    assert!(p[0].starts_with("compression.algorithms: empty"), "{p:?}");
    assert!(problems("[compression]\nenabled = false\nalgorithms = []").is_empty());
}

#[test]
fn the_store_level_is_separate_from_the_live_level() {
    let c = config("[compression]\nlevel = 9");
    assert_eq!(c.compression.algorithms, vec![(Algorithm::Gzip, 9)]);
    assert_eq!(c.compression.store_level, Some(6));
    let c = config("[compression]\nalgorithms = [\"br\", \"gzip\"]\nlevel = 4\nstore_level = 2");
    assert_eq!(c.compression.algorithms[0], (Algorithm::Brotli, 4));
    assert_eq!(c.compression.store_level, Some(2));
    assert_eq!(
        config("[compression]\nalgorithms = [\"br\"]")
            .compression
            .store_level,
        None
    );

    let p = problems("[compression]\nstore_level = 10");
    assert_eq!(
        p,
        vec!["compression.store_level: level 10 is out of range for gzip: 1–9".to_string()]
    );
    let p = problems("[compression]\nalgorithms = [\"zstd\"]\nlevel = 3\nstore_level = 6");
    assert!(
        p.len() == 1 && p[0].starts_with("compression.store_level: the cache stores"),
        "{p:?}"
    );
}

#[test]
fn negotiation_follows_q_values_and_configured_order() {
    let gzip = [(Algorithm::Gzip, 6)];
    let all = [
        (Algorithm::Gzip, 6),
        (Algorithm::Brotli, 4),
        (Algorithm::Zstd, 3),
    ];
    let pick =
        |ae: &str, algs: &[(Algorithm, u32)]| accepts(ae).choose(algs).map(|(a, _)| a.as_str());
    assert_eq!(pick("gzip", &gzip), Some("gzip"));
    assert_eq!(pick("GZIP", &gzip), Some("gzip"));
    assert_eq!(pick("x-gzip", &gzip), Some("gzip"));
    assert_eq!(pick("gzip;q=0", &gzip), None);
    assert_eq!(pick("gzip ; q=0.000", &gzip), None);
    assert_eq!(pick("identity", &gzip), None);
    assert_eq!(pick("*", &gzip), Some("gzip"));
    assert_eq!(pick("*;q=0", &gzip), None);
    assert_eq!(pick("*, gzip;q=0", &gzip), None);
    assert_eq!(pick("br", &gzip), None);
    assert_eq!(
        pick("gzip;q=2", &gzip),
        None,
        "malformed q ignores the entry"
    );
    assert_eq!(pick("gzip;q=0.5, identity;q=1", &gzip), None);
    assert_eq!(pick("gzip;q=0.5, identity;q=0.5", &gzip), Some("gzip"));
    // configured order breaks ties; q-values win otherwise
    assert_eq!(pick("br, gzip, zstd", &all), Some("gzip"));
    assert_eq!(pick("gzip;q=0.8, br", &all), Some("br"));
    assert_eq!(pick("zstd, gzip;q=0.5, br;q=0.9", &all), Some("zstd"));
    assert_eq!(pick("deflate, gzip;q=0", &all), None);
    // no header at all: identity only
    assert_eq!(Accepts::parse([]).choose(&all), None);
    assert!(!Accepts::parse([]).accepts(Algorithm::Gzip));
    // several header fields
    let a = HeaderValue::from_static("br;q=0.1");
    let b = HeaderValue::from_static("gzip");
    assert_eq!(
        Accepts::parse([&a, &b]).choose(&all).map(|(a, _)| a),
        Some(Algorithm::Gzip)
    );
}

#[test]
fn qvalues() {
    assert_eq!(parse_qvalue("1"), Some(1000));
    assert_eq!(parse_qvalue("1.000"), Some(1000));
    assert_eq!(parse_qvalue("0.5"), Some(500));
    assert_eq!(parse_qvalue("0.05"), Some(50));
    assert_eq!(parse_qvalue("0"), Some(0));
    assert_eq!(parse_qvalue("1.5"), None);
    assert_eq!(parse_qvalue("0.1234"), None);
    assert_eq!(parse_qvalue(""), None);
    assert_eq!(parse_qvalue("x"), None);
}

#[test]
fn decisions() {
    let c = config("");
    let gzip = plan(&c, Some("gzip"));
    let json = [
        ("content-type", "application/json"),
        ("content-length", "20000"),
    ];
    let encode = Decision {
        action: Action::Encode(Algorithm::Gzip, 1),
        vary: true,
    };
    assert_eq!(decide(&gzip, &resp(200, &json), false), encode);
    assert_eq!(decide(&gzip, &resp(404, &json), false), encode);
    // unknown length is compressed
    let chunked = [("content-type", "application/json")];
    assert_eq!(decide(&gzip, &resp(200, &chunked), false), encode);
    // the client without gzip: left alone but varies
    let identity = plan(&c, None);
    assert_eq!(
        decide(&identity, &resp(200, &json), false),
        Decision {
            action: Action::Leave,
            vary: true
        }
    );
    // left alone entirely
    let leave = Decision::LEAVE;
    let small = [
        ("content-type", "application/json"),
        ("content-length", "999"),
    ];
    assert_eq!(decide(&gzip, &resp(200, &small), false), leave);
    let png = [("content-type", "image/png"), ("content-length", "20000")];
    assert_eq!(decide(&gzip, &resp(200, &png), false), leave);
    let untyped = [("content-length", "20000")];
    assert_eq!(decide(&gzip, &resp(200, &untyped), false), leave);
    assert_eq!(decide(&gzip, &resp(206, &json), false), leave);
    assert_eq!(decide(&gzip, &resp(204, &[]), true), leave);
    let ranged = [
        ("content-type", "application/json"),
        ("content-range", "bytes 0-9/100"),
    ];
    assert_eq!(decide(&gzip, &resp(200, &ranged), false), leave);
    let nt = [
        ("content-type", "application/json"),
        ("cache-control", "public, No-Transform"),
    ];
    assert_eq!(decide(&gzip, &resp(200, &nt), false), leave);
    assert_eq!(decide(&gzip, &resp(200, &json), true), leave, "no body");
    let mut head = gzip.clone();
    head.head = true;
    assert_eq!(
        decide(&head, &resp(200, &json), false),
        decide(&gzip, &resp(200, &json), false),
        "HEAD is decided as GET"
    );
    let mut off = gzip.clone();
    off.enabled = false;
    assert_eq!(decide(&off, &resp(200, &json), false), leave);
}

#[test]
fn encoded_bodies_are_passed_or_decoded() {
    let c = config("");
    let gz = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let br = [
        ("content-type", "application/json"),
        ("content-encoding", "br"),
    ];
    let zs = [
        ("content-type", "application/json"),
        ("content-encoding", "zstd"),
    ];
    let pass = Decision {
        action: Action::Leave,
        vary: true,
    };
    let decode = Decision {
        action: Action::Decode,
        vary: true,
    };
    assert_eq!(
        decide(&plan(&c, Some("gzip")), &resp(200, &gz), false),
        pass
    );
    assert_eq!(
        decide(&plan(&c, Some("gzip, br")), &resp(200, &br), false),
        pass
    );
    assert_eq!(decide(&plan(&c, None), &resp(200, &gz), false), decode);
    assert_eq!(
        decide(&plan(&c, Some("gzip;q=0")), &resp(200, &gz), false),
        decode
    );
    assert_eq!(
        decide(&plan(&c, Some("gzip")), &resp(200, &br), false),
        decode
    );
    // zstd and unknown codings cannot be decoded here: left alone
    assert_eq!(
        decide(&plan(&c, None), &resp(200, &zs), false),
        Decision {
            action: Action::Leave,
            vary: false
        }
    );
    let deflate = [("content-encoding", "deflate")];
    assert_eq!(
        decide(&plan(&c, None), &resp(200, &deflate), false),
        Decision::LEAVE
    );
    // decoding is independent of the route switch: no client gets a coding it refused
    let mut off = plan(&c, None);
    off.enabled = false;
    assert_eq!(decide(&off, &resp(200, &gz), false), decode);
}

#[test]
fn vary_is_merged() {
    let mut r = resp(200, &[]);
    add_vary(&mut r);
    assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
    let mut r = resp(200, &[("vary", "Origin"), ("vary", "Authorization")]);
    add_vary(&mut r);
    let all: Vec<_> = r.headers.get_all(VARY).iter().collect();
    assert_eq!(all, vec!["Origin, Authorization, Accept-Encoding"]);
    let mut r = resp(200, &[("vary", "origin, accept-encoding")]);
    add_vary(&mut r);
    assert_eq!(r.headers.get(VARY).unwrap(), "origin, accept-encoding");
    let mut r = resp(200, &[("vary", "*")]);
    add_vary(&mut r);
    assert_eq!(r.headers.get(VARY).unwrap(), "*");
}

#[test]
fn etags_are_weakened() {
    let mut r = resp(200, &[("etag", "\"abc\"")]);
    weaken_etag(&mut r);
    assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"abc\"");
    weaken_etag(&mut r);
    assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"abc\"");
    let mut r = resp(200, &[("etag", "abc")]);
    weaken_etag(&mut r);
    assert!(r.headers.get(ETAG).is_none(), "malformed tags are dropped");
}

#[test]
fn if_none_match_gets_strong_forms() {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("if-none-match", "W/\"a,b\", \"c\", W/\"c\", W/\"d\"")
        .unwrap();
    let added = normalize_if_none_match(&mut req);
    assert_eq!(added, vec!["\"a,b\"".to_string(), "\"d\"".to_string()]);
    assert_eq!(
        req.headers.get(IF_NONE_MATCH).unwrap(),
        "W/\"a,b\", \"c\", W/\"c\", W/\"d\", \"a,b\", \"d\""
    );
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("if-none-match", "*").unwrap();
    assert!(normalize_if_none_match(&mut req).is_empty());
    assert_eq!(req.headers.get(IF_NONE_MATCH).unwrap(), "*");
}

#[test]
fn not_modified_gets_the_weak_tag_back() {
    let c = config("");
    let mut p = plan(&c, Some("gzip"));
    p.weak_validators = vec!["\"v1\"".into()];
    let mut r = resp(304, &[("etag", "\"v1\"")]);
    revalidated(&p, &mut r);
    assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"v1\"");
    assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
    let mut r = resp(304, &[("etag", "\"v2\"")]);
    revalidated(&p, &mut r);
    assert_eq!(r.headers.get(ETAG).unwrap(), "\"v2\"");
}

fn roundtrip(algorithm: Algorithm, level: u32) {
    let chunks: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("{{\"chunk\":{i},\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes())
        .collect();
    let mut enc = Encoder::new(algorithm, level).unwrap();
    let mut wire = Vec::new();
    let mut original = Vec::new();
    for c in &chunks {
        let out = enc.encode(c, false).unwrap();
        assert!(!out.is_empty(), "{algorithm:?}: every chunk is flushed out");
        wire.extend_from_slice(&out);
        original.extend_from_slice(c);
        // What the client has so far decodes to everything sent so far.
        assert_eq!(decode_prefix(algorithm, &wire), original, "{algorithm:?}");
    }
    wire.extend_from_slice(&enc.encode(&[], true).unwrap());
    assert!(enc.is_finished());
    assert!(enc.encode(b"late", true).unwrap().is_empty());
    assert_eq!(decode_all(algorithm, &wire), original);
    assert!(wire.len() < original.len());
}

/// A whole-body encoder emits nothing until the end, then the body compressed in one call
/// (the chunks it kept without copying); the result decodes to the body.
fn whole_roundtrip(algorithm: Algorithm, level: u32) {
    let chunks: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(format!("{{\"chunk\":{i},\"pad\":\"{}\"}}", "x".repeat(300))))
        .collect();
    let original = chunks.concat();
    let mut enc = Encoder::whole(algorithm, level);
    for c in &chunks {
        assert!(enc.encode_bytes(c.clone(), false).unwrap().is_empty());
    }
    assert!(!enc.is_finished());
    let wire = enc.encode_bytes(Bytes::new(), true).unwrap();
    assert!(enc.is_finished());
    assert!(enc.encode(b"late", true).unwrap().is_empty());
    assert_eq!(decode_all(algorithm, &wire), original, "{algorithm:?}");
    assert!(
        wire.len() < original.len() / 4,
        "{algorithm:?}: {}",
        wire.len()
    );
    assert_eq!(
        wire,
        super::encoder::compress_whole(algorithm, level, &original).unwrap(),
        "{algorithm:?}: one call over the whole body"
    );
    // A body that arrives as one last chunk is compressed as it is.
    let mut enc = Encoder::whole(algorithm, level);
    let one = enc.encode(&original, true).unwrap();
    assert_eq!(one, wire, "{algorithm:?}");
}

#[test]
fn whole_bodies_are_compressed_in_one_call() {
    whole_roundtrip(Algorithm::Gzip, 1);
    whole_roundtrip(Algorithm::Gzip, 6);
    whole_roundtrip(Algorithm::Gzip, 9);
    whole_roundtrip(Algorithm::Brotli, 4);
    whole_roundtrip(Algorithm::Zstd, 3);
    // gzip by libdeflate: a valid gzip member, smaller at level 6 than at level 1.
    let body = format!(
        "[{}]",
        (0..400)
            .map(|i| format!("{{\"id\":{i},\"status\":\"paid\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let l1 = super::encoder::compress_whole(Algorithm::Gzip, 1, body.as_bytes()).unwrap();
    let l6 = super::encoder::compress_whole(Algorithm::Gzip, 6, body.as_bytes()).unwrap();
    assert_eq!(&l1[..2], &[0x1f, 0x8b]);
    assert!(l6.len() < l1.len(), "{} vs {}", l6.len(), l1.len());
    assert_eq!(decode_all(Algorithm::Gzip, &l6), body.as_bytes());
}

#[test]
fn the_encoder_is_whole_for_a_known_length_up_to_whole_body_max() {
    let c = CompressionConfig::default();
    let streams = |e: &mut Encoder| !e.encode(b"{\"a\":1}", false).unwrap().is_empty();
    assert!(!streams(
        &mut c.encoder(Algorithm::Gzip, 1, Some(1000)).unwrap()
    ));
    assert!(!streams(
        &mut c.encoder(Algorithm::Gzip, 1, Some(256 * 1024)).unwrap()
    ));
    assert!(streams(
        &mut c.encoder(Algorithm::Gzip, 1, Some(256 * 1024 + 1)).unwrap()
    ));
    assert!(streams(&mut c.encoder(Algorithm::Gzip, 1, None).unwrap()));
    let off = config("[compression]\nwhole_body_max = 0");
    assert!(streams(
        &mut off
            .compression
            .encoder(Algorithm::Gzip, 1, Some(1000))
            .unwrap()
    ));
}

fn decode_prefix(algorithm: Algorithm, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match algorithm {
        Algorithm::Gzip => {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            d.write_all(wire).unwrap();
            d.flush().unwrap();
            out = d.get_ref().clone();
        }
        Algorithm::Brotli => {
            let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
            d.write_all(wire).unwrap();
            d.flush().unwrap();
            out = d.get_ref().clone();
        }
        Algorithm::Zstd => {
            let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
            d.write_all(wire).unwrap();
            d.flush().unwrap();
            out.extend_from_slice(d.get_ref());
        }
    }
    out
}

fn decode_all(algorithm: Algorithm, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match algorithm {
        Algorithm::Gzip => {
            flate2::read::GzDecoder::new(wire)
                .read_to_end(&mut out)
                .unwrap();
        }
        Algorithm::Brotli => {
            brotli::Decompressor::new(wire, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Algorithm::Zstd => out = zstd::decode_all(wire).unwrap(),
    }
    out
}

#[test]
fn encoders_stream_and_finish() {
    roundtrip(Algorithm::Gzip, 6);
    roundtrip(Algorithm::Gzip, 1);
    roundtrip(Algorithm::Brotli, 5);
    roundtrip(Algorithm::Zstd, 3);
}

#[tokio::test]
async fn module_encodes_and_finishes_on_done() {
    // A 5000-byte body: compressed whole by default, streamed with `whole_body_max = 0`.
    for (extra, whole) in [("", true), ("[compression]\nwhole_body_max = 0", false)] {
        let c = config(extra);
        let mut m = Compression {
            plan: Some(plan(&c, Some("gzip"))),
            body: Body::Undecided,
            store_level: None,
            store: None,
        };
        let mut r = resp(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "5000"),
                ("etag", "\"e\""),
                ("accept-ranges", "bytes"),
            ],
        );
        m.response_header_filter(&mut r, false).await.unwrap();
        assert_eq!(r.headers.get(CONTENT_ENCODING).unwrap(), "gzip");
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        assert!(r.headers.get(ACCEPT_RANGES).is_none());
        assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"e\"");
        assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
        let original = vec![b'a'; 5000];
        let mut body = Some(Bytes::from(original.clone()));
        m.response_body_filter(&mut body, false).unwrap();
        // Whole: nothing yet; streamed: the chunk, flushed.
        assert_eq!(body.is_none(), whole, "{extra}");
        let mut wire = body.map(|b| b.to_vec()).unwrap_or_default();
        // The body ends with a `Done` task (as from the cache): the module finishes the stream.
        wire.extend_from_slice(&m.response_done_filter().unwrap().unwrap());
        assert_eq!(decode_all(Algorithm::Gzip, &wire), original);
        assert_eq!(m.response_done_filter().unwrap(), None);
    }
}

#[tokio::test]
async fn module_decodes_for_identity_clients() {
    let c = config("");
    let mut m = Compression {
        plan: Some(plan(&c, None)),
        body: Body::Undecided,
        store_level: None,
        store: None,
    };
    let original = b"{\"hello\":\"world\"}".repeat(100);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(&original).unwrap();
    let gz = enc.finish().unwrap();
    let len = gz.len().to_string();
    let mut r = resp(
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("content-length", len.as_str()),
            ("etag", "\"e\""),
        ],
    );
    m.response_header_filter(&mut r, false).await.unwrap();
    assert!(r.headers.get(CONTENT_ENCODING).is_none());
    assert!(r.headers.get(CONTENT_LENGTH).is_none());
    assert_eq!(r.headers.get(ETAG).unwrap(), "W/\"e\"");
    assert_eq!(r.headers.get(VARY).unwrap(), "Accept-Encoding");
    let mut body = Some(Bytes::from(gz));
    m.response_body_filter(&mut body, true).unwrap();
    assert_eq!(body.unwrap().to_vec(), original);
}
