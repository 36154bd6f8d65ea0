//! `cargo bench --bench compression`: what compression costs and saves through omsgate.
//!
//! 1. The encoder alone: `compress::Encoder` on the ~20 KB body in this process, per algorithm
//!    and level, streaming as one chunk and as 4 KiB chunks (each flushed, as a streamed
//!    response is), whole-body (one call; gzip by libdeflate, as for a response of known length
//!    up to `whole_body_max`), and gunzip of the level-6 body (what a cache hit costs an identity client): µs per body
//!    and bytes out. This is the CPU-bound cost with nothing else on the path.
//! 2. Through the gateway: an in-process upstream answers every request with the same ~20 KB
//!    page of invoices in the legacy API's JSON (from the simulator's generator, so it
//!    compresses like the real thing). The gateway runs as a child process (one worker thread)
//!    with a config per row; a closed-loop keepalive load runs for a fixed time per row. Rows:
//!    compression off, a client without `Accept-Encoding` (identity through an enabled
//!    gateway), gzip at levels 1 and 6 (whole-body, the default for this length, and streamed
//!    with `whole_body_max = 0`), br at 4, zstd at 3. Reported: req/s, latency, CPU µs
//!    per request of the gateway process, response bytes on the wire (body with chunk
//!    framing), and the throughput cost relative to pass-through.
//!
//! Prints the tables and writes `target/bench-compression.json`.
//!
//! Environment: `OMSGATE_BENCH_SECS` (default 8), `OMSGATE_BENCH_CONNECTIONS` (default 64),
//! `OMSGATE_BENCH_BODY` (body bytes, default 20000).

mod common;

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::loadgen::{self, LoadReport, LoadSpec};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use omsgate::compress::{Algorithm, Encoder};

use common::*;

/// A page of invoices as the legacy API writes them, cut to whole objects of about `n` bytes.
fn invoice_page(n: usize) -> Bytes {
    let data = omsgate::sim::data::generate(7, 1, 400);
    let invoices = data
        .invoices
        .iter()
        .map(|inv| omsgate::sim::data::invoice_json(inv).to_string());
    Bytes::from(omsgate::sim::data::json_array_within(invoices, n))
}

// === 1. The encoder alone ===

#[derive(serde::Serialize)]
struct EncoderRow {
    name: String,
    chunk_bytes: usize,
    us_per_body: f64,
    /// Input bytes per second, in MB (10^6).
    mb_per_sec: f64,
    out_bytes: usize,
}

/// Runs `once` (which returns the bytes it produced) repeatedly for a fixed time.
fn time_it(name: String, body_len: usize, chunk: usize, once: &dyn Fn() -> usize) -> EncoderRow {
    let out_bytes = once();
    let budget = Duration::from_millis(600);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        std::hint::black_box(once());
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    EncoderRow {
        name,
        chunk_bytes: chunk,
        us_per_body: secs * 1e6 / n as f64,
        mb_per_sec: body_len as f64 * n as f64 / secs / 1e6,
        out_bytes,
    }
}

fn encoder_rows(body: &[u8]) -> Vec<EncoderRow> {
    let encode = |a: Algorithm, level: u32, chunk: usize| -> usize {
        let mut enc = Encoder::new(a, level).expect("an encoder");
        let mut out = 0;
        let mut pieces = body.chunks(chunk).peekable();
        while let Some(piece) = pieces.next() {
            out += enc
                .encode(piece, pieces.peek().is_none())
                .expect("encoding")
                .len();
        }
        out
    };
    let mut rows = Vec::new();
    let cases = [
        (Algorithm::Gzip, 1),
        (Algorithm::Gzip, 3),
        (Algorithm::Gzip, 6),
        (Algorithm::Gzip, 9),
        (Algorithm::Brotli, 4),
        (Algorithm::Zstd, 1),
        (Algorithm::Zstd, 3),
    ];
    for chunk in [body.len(), 4096] {
        for (a, level) in cases {
            let name = format!("{a} level {level}");
            rows.push(time_it(name, body.len(), chunk, &|| {
                encode(a, level, chunk)
            }));
        }
    }
    // Whole-body encoders (`whole_body_max`): the body in one call, gzip by libdeflate.
    for (a, level) in cases {
        let name = format!("{a} level {level}, whole");
        let bytes = Bytes::copy_from_slice(body);
        rows.push(time_it(name, body.len(), body.len(), &|| {
            let mut enc = Encoder::whole(a, level);
            enc.encode_bytes(bytes.clone(), true)
                .expect("encoding")
                .len()
        }));
    }
    let gz6 = {
        let mut enc = Encoder::new(Algorithm::Gzip, 6).expect("an encoder");
        enc.encode(body, true).expect("encoding")
    };
    let gunzip = || {
        let mut out = Vec::with_capacity(body.len());
        flate2::read::GzDecoder::new(&gz6[..])
            .read_to_end(&mut out)
            .expect("valid gzip");
        out.len()
    };
    rows.push(time_it(
        "gunzip (level-6 body)".into(),
        body.len(),
        gz6.len(),
        &gunzip,
    ));
    rows
}

// === 2. Through the gateway ===

/// Serves `body` as `application/json` with a length on `addr`, on its own thread.
fn start_upstream(addr: SocketAddr, body: Bytes) {
    let listener = std::net::TcpListener::bind(addr).expect("bind the upstream");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("upstream listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<_>| {
                        let body = body.clone();
                        async move {
                            let mut resp = Response::new(Full::new(body));
                            resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    wait_port(addr);
}

fn start_gateway(upstream: SocketAddr, listen: SocketAddr, compression: &str) -> Proc {
    let admin = free_addr();
    let cfg = format!(
        r#"
[server]
listen = "{listen}"
threads = 1
[admin]
listen = "{admin}"
[upstream]
servers = ["{upstream}"]
keepalive_pool = 256
# The benches measure the gateway in front of a concurrent upstream: no overload limit
# (the default of 4 in flight is for a one-worker OMS, benches/legacy_oms.rs).
overload = {{ max_in_flight = 0 }}
[log]
level = "warn"
[compression]
{compression}
"#
    );
    let path = bench_dir("compression").join(format!("gateway-{}.toml", listen.port()));
    // Audit off: this bench measures something else, and the default file audit would fill
    // ./audit-spool with a record per request.
    let cfg = format!("{cfg}\n[audit]\nenabled = false\n");
    run_gateway(&path, &cfg, listen, admin)
}

#[derive(serde::Serialize)]
struct Row {
    name: String,
    accept_encoding: Option<String>,
    report: LoadReport,
    cpu_us_per_request: f64,
    wire_bytes_per_response: f64,
    /// Throughput lost against the pass-through row, in percent.
    cost_vs_pass_through_pct: f64,
}

struct Case {
    name: &'static str,
    compression: &'static str,
    accept_encoding: Option<&'static str>,
}

fn measure(rt: &tokio::runtime::Runtime, upstream: SocketAddr, case: &Case) -> Row {
    let secs = env_or("OMSGATE_BENCH_SECS", 8);
    let conns = env_or("OMSGATE_BENCH_CONNECTIONS", 64) as usize;
    let addr = free_addr();
    let gw = start_gateway(upstream, addr, case.compression);
    let pid = gw.0.id();
    let spec = |d: u64| LoadSpec {
        addr,
        paths: vec!["/api/v1/invoices".to_string()],
        headers: case
            .accept_encoding
            .map(|ae| vec![("Accept-Encoding".to_string(), ae.to_string())])
            .unwrap_or_default(),
        connections: conns,
        duration: Duration::from_secs(d),
    };
    rt.block_on(loadgen::run(spec(1)));
    let cpu0 = loadgen::cpu_seconds_of(pid);
    let report = rt.block_on(loadgen::run(spec(secs)));
    let cpu1 = loadgen::cpu_seconds_of(pid);
    drop(gw);
    let per = |x: f64| {
        if report.requests > 0 {
            x / report.requests as f64
        } else {
            0.0
        }
    };
    Row {
        name: case.name.to_string(),
        accept_encoding: case.accept_encoding.map(str::to_string),
        cpu_us_per_request: per((cpu1 - cpu0) * 1e6),
        wire_bytes_per_response: per(report.body_bytes as f64),
        report,
        cost_vs_pass_through_pct: 0.0,
    }
}

fn main() {
    let body = invoice_page(env_or("OMSGATE_BENCH_BODY", 20_000) as usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("\nload average before: {:?}", loadgen::load_average());
    let encoder = encoder_rows(&body);
    println!("\nthe encoder alone, {} bytes of invoice JSON", body.len());
    println!(
        "{:<24} {:>8} {:>10} {:>9} {:>9}",
        "encoder", "chunk B", "µs/body", "MB/s", "bytes out"
    );
    for r in &encoder {
        println!(
            "{:<24} {:>8} {:>10.1} {:>9.0} {:>9}",
            r.name, r.chunk_bytes, r.us_per_body, r.mb_per_sec, r.out_bytes
        );
    }

    let upstream = free_addr();
    start_upstream(upstream, body.clone());

    let cases = [
        Case {
            name: "compression off",
            compression: "enabled = false",
            accept_encoding: Some("gzip"),
        },
        Case {
            name: "no Accept-Encoding",
            compression: "",
            accept_encoding: None,
        },
        Case {
            name: "gzip level 1",
            compression: "level = 1",
            accept_encoding: Some("gzip"),
        },
        Case {
            name: "gzip 1, streamed",
            compression: "level = 1\nwhole_body_max = 0",
            accept_encoding: Some("gzip"),
        },
        Case {
            name: "gzip level 6",
            compression: "level = 6",
            accept_encoding: Some("gzip"),
        },
        Case {
            name: "gzip 6, streamed",
            compression: "level = 6\nwhole_body_max = 0",
            accept_encoding: Some("gzip"),
        },
        Case {
            name: "br level 4",
            compression: "algorithms = [\"br\"]\nlevel = 4",
            accept_encoding: Some("br"),
        },
        Case {
            name: "zstd level 3",
            compression: "algorithms = [\"zstd\"]\nlevel = 3",
            accept_encoding: Some("zstd"),
        },
    ];
    let mut rows: Vec<Row> = cases.iter().map(|c| measure(&rt, upstream, c)).collect();
    let base = rows.first().map(|r| r.report.rps).unwrap_or(0.0);
    for r in &mut rows {
        if base > 0.0 {
            r.cost_vs_pass_through_pct = (1.0 - r.report.rps / base) * 100.0;
        }
    }

    println!(
        "\nthrough the gateway, {} bytes of invoice JSON",
        body.len()
    );
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>11} {:>11} {:>7} {:>7}",
        "case", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "wire B/resp", "cost %", "errors"
    );
    for r in &rows {
        println!(
            "{:<20} {:>9.0} {:>8} {:>8} {:>11.1} {:>11.0} {:>7.1} {:>7}",
            r.name,
            r.report.rps,
            r.report.p50_us,
            r.report.p99_us,
            r.cpu_us_per_request,
            r.wire_bytes_per_response,
            r.cost_vs_pass_through_pct,
            r.report.errors + r.report.non_success
        );
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("bench-compression.json"))
        .unwrap_or_else(|| PathBuf::from("bench-compression.json"));
    let json = serde_json::json!({
        "body_bytes": body.len(),
        "load_average": loadgen::load_average(),
        "encoder": encoder,
        "rows": rows,
    });
    if let Ok(text) = serde_json::to_string_pretty(&json) {
        let _ = std::fs::write(&out, text);
        println!("\nwrote {}", out.display());
    }
}
