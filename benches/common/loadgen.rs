//! A small HTTP/1.1 keepalive load generator for the micro-benches of the proxy path (`cargo
//! bench`); dev-only, not part of the `omsgate` binary. Operators' load tests use the open model
//! of `omsgate loadtest` (src/loadtest/), which measures from the intended send time.
//!
//! Each connection sends requests back to back (closed loop) for a fixed duration; latencies
//! are recorded per request and summarised as percentiles. It is deliberately minimal (no
//! pipelining; TLS through rustls only when asked, [`run_tls`]) so that its own cost per request
//! stays small next to the proxy's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Target address.
    pub addr: SocketAddr,
    /// Request paths, used round-robin per connection.
    pub paths: Vec<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Concurrent keepalive connections.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
}

/// What happened.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Completed requests.
    pub requests: u64,
    /// Requests answered with a non-2xx/3xx status.
    pub non_success: u64,
    /// Connection or protocol errors.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency in µs.
    pub p50_us: u64,
    /// 99th percentile latency in µs.
    pub p99_us: u64,
    /// 99.9th percentile latency in µs.
    pub p999_us: u64,
    /// Mean latency in µs.
    pub mean_us: u64,
    /// Response body bytes received.
    pub body_bytes: u64,
}

/// TLS for the load ([`run_tls`]): each connection is a rustls client session.
#[derive(Clone)]
pub struct TlsLoad {
    /// The client (trust store, ALPN, resumption) to connect with.
    pub connector: tokio_rustls::TlsConnector,
    /// The server name sent (SNI) and verified.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// One request per connection (`Connection: close`), each on a new TCP connection and TLS
    /// handshake; the latency then includes connect and handshake, and requests/s are new
    /// handshakes per second (full ones when the connector's resumption is disabled).
    pub reconnect: bool,
}

/// Runs the load on the current tokio runtime.
pub async fn run(spec: LoadSpec) -> LoadReport {
    run_with(spec, None).await
}

/// Runs the load over TLS on the current tokio runtime.
pub async fn run_tls(spec: LoadSpec, tls: TlsLoad) -> LoadReport {
    run_with(spec, Some(tls)).await
}

async fn run_with(spec: LoadSpec, tls: Option<TlsLoad>) -> LoadReport {
    let deadline = Instant::now() + spec.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..spec.connections {
        let (spec, tls) = (spec.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            connection(spec, tls, c, deadline).await
        }));
    }
    let mut lat: Vec<u32> = Vec::new();
    let mut report = LoadReport::default();
    for t in tasks {
        if let Ok(tally) = t.await {
            lat.extend(tally.lat);
            report.non_success += tally.non_success;
            report.errors += tally.errors;
            report.body_bytes += tally.bytes;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.requests = lat.len() as u64;
    report.rps = report.requests as f64 / report.seconds.max(1e-9);
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as u64
        }
    };
    report.p50_us = pct(0.50);
    report.p99_us = pct(0.99);
    report.p999_us = pct(0.999);
    report.mean_us = if lat.is_empty() {
        0
    } else {
        lat.iter().map(|v| *v as u64).sum::<u64>() / lat.len() as u64
    };
    report
}

/// One connection's counts.
#[derive(Default)]
struct Tally {
    lat: Vec<u32>,
    non_success: u64,
    errors: u64,
    bytes: u64,
}

async fn connection(
    spec: LoadSpec,
    tls: Option<TlsLoad>,
    index: usize,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally {
        lat: Vec::with_capacity(4096),
        ..Tally::default()
    };
    let once = tls.as_ref().is_some_and(|t| t.reconnect);
    let mut extra = String::new();
    for (k, v) in &spec.headers {
        extra.push_str(k);
        extra.push_str(": ");
        extra.push_str(v);
        extra.push_str("\r\n");
    }
    if once {
        extra.push_str("Connection: close\r\n");
    }
    let requests: Vec<Vec<u8>> = spec
        .paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n").into_bytes())
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = index;
    while Instant::now() < deadline {
        let connecting = Instant::now();
        let Ok(stream) = TcpStream::connect(spec.addr).await else {
            tally.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let run = Session {
            requests: &requests,
            deadline,
            once,
            connecting,
        };
        match &tls {
            None => {
                let mut stream = stream;
                run.drive(&mut stream, &mut buf, &mut i, &mut tally).await;
            }
            Some(t) => match t.connector.connect(t.server_name.clone(), stream).await {
                Ok(mut stream) => {
                    run.drive(&mut stream, &mut buf, &mut i, &mut tally).await;
                }
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    tally
}

/// Requests on one open connection.
struct Session<'a> {
    requests: &'a [Vec<u8>],
    deadline: Instant,
    /// One request, its latency counted from `connecting`.
    once: bool,
    connecting: Instant,
}

impl Session<'_> {
    /// Sends requests back to back until the deadline, an error, a `Connection: close` answer
    /// or (`once`) the first answer.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut [u8],
        i: &mut usize,
        tally: &mut Tally,
    ) {
        while Instant::now() < self.deadline {
            let req = &self.requests[*i % self.requests.len()];
            *i += 1;
            let t = if self.once {
                self.connecting
            } else {
                Instant::now()
            };
            if stream.write_all(req).await.is_err() {
                tally.errors += 1;
                return;
            }
            match read_response(stream, buf).await {
                Some((status, len, keep)) => {
                    tally
                        .lat
                        .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    tally.bytes += len as u64;
                    if !(200..400).contains(&status) {
                        tally.non_success += 1;
                    }
                    if !keep || self.once {
                        return;
                    }
                }
                None => {
                    tally.errors += 1;
                    return;
                }
            }
        }
    }
}

/// Reads one response; returns (status, body length, keepalive).
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Option<(u16, usize, bool)> {
    let mut filled = 0;
    let head_end = loop {
        if filled == buf.len() {
            return None;
        }
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        if let Some(p) = find(&buf[..filled], b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut content_length = None;
    let mut chunked = false;
    let mut keep = true;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            keep = false;
        }
    }
    let rest = filled - head_end;
    if let Some(len) = content_length {
        let mut remaining = len.saturating_sub(rest);
        let cap = buf.len();
        while remaining > 0 {
            let n = stream.read(&mut buf[..remaining.min(cap)]).await.ok()?;
            if n == 0 {
                return None;
            }
            remaining -= n;
        }
        return Some((status, len, keep));
    }
    if chunked {
        // Collect until the terminating zero-length chunk; bodies in benches are small enough
        // to scan the tail for it.
        let mut body = buf[head_end..filled].to_vec();
        loop {
            if body.ends_with(b"0\r\n\r\n") {
                return Some((status, body.len(), keep));
            }
            let n = stream.read(&mut buf[..]).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&buf[..n]);
        }
    }
    Some((status, rest, keep))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Resident set size of a process in bytes (Linux), 0 when unknown.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Total CPU time (user + system) of a process in seconds (Linux), 0 when unknown.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / 100.0
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), recorded next to bench figures
/// because a loaded machine changes them; `None` where the file is absent.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}
