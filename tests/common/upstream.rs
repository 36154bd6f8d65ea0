//! A scriptable test upstream: a real HTTP/1.1 server (hyper) on `127.0.0.1:0`, standing in for
//! one legacy OMS instance behind the gateway. It runs on its own thread and tokio runtime, so
//! sync tests and tests of any tokio flavour can use it, and [`TestUpstream::kill`] can drop the
//! listener and every open connection at once (failover tests).
//!
//! The request decides the response:
//!
//! | path | response |
//! |---|---|
//! | `/echo` (and any unknown path) | 200 JSON: `method`, `path`, `query`, `headers` (lowercased names), `body_len`, `body_fnv` (FNV-1a 64 of the body, hex), `seq`, `upstream` |
//! | `/status/{code}` | that status, JSON body `{"status":code}` (empty for 1xx/204/304) |
//! | `/bytes/{n}?type=T&encoding=E` | `n` bytes of deterministic JSON-like text, `Content-Type: T` (default `application/json`); with `encoding=gzip` or `br` those bytes encoded, with `Content-Encoding: E` |
//! | `/slow/{ms}` | waits `ms` milliseconds, then 200 `slow` |
//! | `/chunked?chunks=N&delay_ms=D&size=S&type=T&length=1` | `N` chunks (default 4) of `S` bytes (default 1024), `D` ms apart (default 0), no `Content-Length` (with `length=1`: `Content-Length: N×S`, the same chunks and pauses) |
//! | `/etag/{tag}?body_len=N&type=T&Name=Value` | 200 with `ETag: "tag"` and `N` bytes (default 20000); 304 when `If-None-Match` lists `"tag"` exactly (string comparison, like many origins: `W/"tag"` does not match); other parameters are response headers on both, as with `/headers` |
//! | `/headers?Name=Value&...` | 200 with those response headers; body `ok`, or `body_len` bytes; `status=` sets the status |
//! | `/health` | 200 `ok`, or 503 after [`TestUpstream::set_healthy(false)`](TestUpstream::set_healthy) |
//!
//! Every response carries `x-upstream: ADDR` and `x-upstream-seq: N` (this upstream's request
//! number), so a test can tell which instance answered and whether a response is fresh.
//! [`TestUpstream::fail_with`] and [`TestUpstream::delay_all`] change every response but
//! `/health` at run time.
//!
//! Server behaviours a real OMS server has, switchable at run time:
//! [`TestUpstream::close_reused`] (the keep-alive race: a request that is not the first on its
//! connection is read, then the connection closes without an answer, as when uvicorn's
//! keep-alive timer fires just as the request arrives), [`TestUpstream::delay_health`] (a slow
//! `/health`), [`TestUpstream::send_date`] (`false`: no `Date` unless the request sets one, as
//! from an origin without a clock), and [`TestUpstream::peak_in_flight`] (the most requests it
//! ever worked on at once).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How many requests [`TestUpstream::seen`] keeps (the most recent ones).
const SEEN_CAPACITY: usize = 1000;

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Request headers, names lowercased, repeated headers joined with `, `.
    pub headers: HashMap<String, String>,
}

/// A running test upstream; killed on drop.
pub struct TestUpstream {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct State {
    addr: SocketAddr,
    seq: AtomicU64,
    hits: Mutex<HashMap<String, u64>>,
    seen: Mutex<std::collections::VecDeque<SeenRequest>>,
    /// 0 = answer normally.
    fail_with: AtomicU16,
    delay_ms: AtomicU64,
    unhealthy: AtomicBool,
    close_reused: AtomicBool,
    health_delay_ms: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Whether hyper adds `Date` to responses that have none (connections accepted later).
    send_date: AtomicBool,
}

// === impl TestUpstream ===

impl TestUpstream {
    /// Starts an upstream on an ephemeral port of 127.0.0.1.
    pub fn start() -> TestUpstream {
        TestUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts an upstream on `addr`, e.g. the address of one that was [`kill`](Self::kill)ed,
    /// to bring it back (with fresh counters).
    pub fn start_on(addr: SocketAddr) -> TestUpstream {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test upstream cannot bind {addr}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("cannot make the listener non-blocking: {e}"));
        let state = Arc::new(State {
            addr,
            seq: AtomicU64::new(0),
            hits: Mutex::default(),
            seen: Mutex::default(),
            fail_with: AtomicU16::new(0),
            delay_ms: AtomicU64::new(0),
            unhealthy: AtomicBool::new(false),
            close_reused: AtomicBool::new(false),
            health_delay_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            send_date: AtomicBool::new(true),
        });
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build the upstream runtime: {e}"));
                runtime.block_on(serve(listener, thread_state, shutdown_rx));
                // Dropping the runtime drops every connection task, closing their sockets.
            })
            .unwrap_or_else(|e| panic!("cannot spawn the upstream thread: {e}"));
        TestUpstream {
            addr,
            state,
            shutdown,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received, `/health` (health checks) excluded.
    pub fn hits(&self) -> u64 {
        self.state
            .hits
            .lock()
            .iter()
            .filter(|(p, _)| *p != "/health" && *p != "!closed")
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests received whose path starts with `path_prefix`.
    pub fn hits_for(&self, path_prefix: &str) -> u64 {
        let hits = self.state.hits.lock();
        hits.iter()
            .filter(|(p, _)| p.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Forgets the counts and the recorded requests.
    pub fn reset_hits(&self) {
        self.state.hits.lock().clear();
        self.state.seen.lock().clear();
    }

    /// The most recent requests received (up to 1000), oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().iter().cloned().collect()
    }

    /// The most recent request whose path starts with `path_prefix`.
    pub fn last_seen(&self, path_prefix: &str) -> Option<SeenRequest> {
        self.state
            .seen
            .lock()
            .iter()
            .rev()
            .find(|r| r.path.starts_with(path_prefix))
            .cloned()
    }

    /// From now on answer every request but `/health` with `status` (`Some`), or normally again
    /// (`None`).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state
            .fail_with
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// From now on wait `delay` before answering every request but `/health`.
    pub fn delay_all(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether `/health` answers 200 (`true`, the default) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// From now on (`true`), a request that is not the first on its connection (health checks
    /// excluded) is read and then answered by closing the connection without a response byte:
    /// the keep-alive race, deterministic. Such requests are not counted in [`Self::hits`] but
    /// in [`Self::hits_for`]`("!closed")`.
    pub fn close_reused(&self, on: bool) {
        self.state.close_reused.store(on, Ordering::SeqCst);
    }

    /// From now on wait `delay` before answering `/health`.
    pub fn delay_health(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.health_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether responses carry a `Date` when the request does not set one (`/headers?Date=`):
    /// `true` by default, like any origin; `false` stands for an origin without a clock. Applies
    /// to connections accepted from now on (set it before the gateway connects).
    pub fn send_date(&self, on: bool) {
        self.state.send_date.store(on, Ordering::SeqCst);
    }

    /// The most requests (`/health` excluded) this upstream has worked on at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Stops abruptly: the listener is closed (new connections are refused) and every open
    /// connection is dropped mid-flight. Returns once both have happened.
    pub fn kill(&self) {
        let _ = self.shutdown.send(true);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

// === The server ===

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => panic!("cannot register the upstream listener: {e}"),
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let send_date = state.send_date.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let on_connection = Arc::new(AtomicU64::new(0));
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let nth = on_connection.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            if nth > 1
                                && req.uri().path() != "/health"
                                && state.close_reused.load(Ordering::SeqCst)
                            {
                                *state.hits.lock().entry("!closed".into()).or_default() += 1;
                                // An error from the service makes hyper drop the connection
                                // without writing a response.
                                return Err(std::io::Error::other("closing a reused connection"));
                            }
                            Ok(handle(req, &state).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .auto_date_header(send_date)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn handle(req: Request<Incoming>, state: &State) -> Response<Body> {
    let seq = state.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let path = req.uri().path().to_owned();
    let seen = SeenRequest {
        method: req.method().to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        headers: header_map(req.headers()),
    };
    *state.hits.lock().entry(path.clone()).or_default() += 1;
    {
        let mut log = state.seen.lock();
        if log.len() == SEEN_CAPACITY {
            log.pop_front();
        }
        log.push_back(seen.clone());
    }

    let mut response = if path == "/health" {
        let delay = state.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if state.unhealthy.load(Ordering::SeqCst) {
            text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        } else {
            text(StatusCode::OK, "ok")
        }
    } else {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        // Counted down on drop too: the gateway may give up on a request mid-flight.
        let _working = scopeguard(&state.in_flight);
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let response = match state.fail_with.load(Ordering::SeqCst) {
            0 => route(req, &seen, seq, state.addr).await,
            code => status_response(code),
        };
        response
    };
    let headers = response.headers_mut();
    headers.insert("x-upstream", value(&state.addr.to_string()));
    headers.insert("x-upstream-seq", value(&seq.to_string()));
    response
}

async fn route(
    req: Request<Incoming>,
    seen: &SeenRequest,
    seq: u64,
    addr: SocketAddr,
) -> Response<Body> {
    let params = query_params(seen.query.as_deref().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number =
        |name: &str, default: u64| param(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let content_type = param("type").unwrap_or("application/json").to_owned();
    let segments: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();

    match segments.as_slice() {
        ["status", code] => match code.parse() {
            Ok(code) => status_response(code),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad status code"),
        },
        ["bytes", n] => match (n.parse::<usize>(), param("encoding")) {
            (Ok(n), None) => with_type(Response::new(full(deterministic_body(n))), &content_type),
            (Ok(n), Some(coding)) => match encode(coding, &deterministic_body(n)) {
                Some(body) => {
                    let mut r = with_type(Response::new(full(body)), &content_type);
                    r.headers_mut()
                        .insert(hyper::header::CONTENT_ENCODING, value(coding));
                    r
                }
                None => text(StatusCode::BAD_REQUEST, "encoding is gzip or br"),
            },
            (Err(_), _) => text(StatusCode::BAD_REQUEST, "bad byte count"),
        },
        ["slow", ms] => match ms.parse() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow")
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "bad delay"),
        },
        ["chunked"] => {
            let chunks = number("chunks", 4);
            let delay = Duration::from_millis(number("delay_ms", 0));
            let size = usize::try_from(number("size", 1024)).unwrap_or(1024);
            let stream = futures::stream::unfold(0u64, move |i| async move {
                if i == chunks {
                    return None;
                }
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((
                    Ok(Frame::data(Bytes::from(deterministic_body(size)))),
                    i + 1,
                ))
            });
            let mut r = with_type(
                Response::new(StreamBody::new(stream).boxed_unsync()),
                &content_type,
            );
            if param("length") == Some("1") {
                let length = chunks * size as u64;
                r.headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, value(&length.to_string()));
            }
            r
        }
        ["etag", tag] => {
            let etag = value(&format!("\"{tag}\""));
            let matched = seen
                .headers
                .get("if-none-match")
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
            let mut response = if matched {
                let mut r = Response::new(full(Vec::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                let n = usize::try_from(number("body_len", 20_000)).unwrap_or(20_000);
                with_type(Response::new(full(deterministic_body(n))), &content_type)
            };
            response.headers_mut().insert(hyper::header::ETAG, etag);
            for (name, v) in &params {
                if matches!(name.as_str(), "body_len" | "type") {
                    continue;
                }
                if let (Ok(name), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    response.headers_mut().append(name, v);
                }
            }
            response
        }
        ["headers"] => {
            let body = match param("body_len").and_then(|n| n.parse().ok()) {
                Some(n) => deterministic_body(n),
                None => b"ok".to_vec(),
            };
            let mut response = Response::new(full(body));
            if let Some(status) = param("status").and_then(|s| s.parse().ok()) {
                if let Ok(status) = StatusCode::from_u16(status) {
                    *response.status_mut() = status;
                }
            }
            for (name, v) in &params {
                if matches!(name.as_str(), "body_len" | "status") {
                    continue;
                }
                if let (Ok(name), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    response.headers_mut().append(name, v);
                }
            }
            response
        }
        _ => {
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body"),
            };
            // FNV-1a 64 of the body, so a test can tell a body arrived byte for byte.
            let body_fnv = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            let echo = serde_json::json!({
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "headers": seen.headers,
                "body_len": body.len(),
                "body_fnv": format!("{body_fnv:016x}"),
                "seq": seq,
                "upstream": addr.to_string(),
            });
            with_type(
                Response::new(full(echo.to_string().into_bytes())),
                "application/json",
            )
        }
    }
}

// === Helpers ===

/// `body` encoded with `coding` (`gzip` or `br`).
fn encode(coding: &str, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).ok()?;
            e.finish().ok()
        }
        "br" => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 19);
            e.write_all(body).ok()?;
            drop(e);
            Some(out)
        }
        _ => None,
    }
}

/// Decrements `counter` when dropped.
struct CountDown<'a>(&'a AtomicU64);

impl Drop for CountDown<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn scopeguard(counter: &AtomicU64) -> CountDown<'_> {
    CountDown(counter)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = with_type(Response::new(full(body)), "text/plain");
    *response.status_mut() = status;
    response
}

fn with_type(mut response: Response<Body>, content_type: &str) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, value(content_type));
    response
}

fn value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn status_response(code: u16) -> Response<Body> {
    let Ok(status) = StatusCode::from_u16(code) else {
        return text(StatusCode::BAD_REQUEST, "bad status code");
    };
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        Vec::new()
    } else {
        format!("{{\"status\":{code}}}").into_bytes()
    };
    let mut response = with_type(Response::new(full(body)), "application/json");
    *response.status_mut() = status;
    response
}

fn header_map(headers: &hyper::HeaderMap) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    for (name, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    map
}

/// `n` bytes of JSON-like text (a list of invoice-like objects, cut at `n`), the same for the
/// same `n`: compressible like a real API response, not a run of one byte.
pub fn deterministic_body(n: usize) -> Vec<u8> {
    let mut out = String::with_capacity(n + 100);
    out.push('[');
    let mut i = 0u64;
    while out.len() < n {
        out.push_str(&format!(
            "{{\"id\":{i},\"tenant_id\":\"t{}\",\"invoice_status\":\"{}\",\"amount\":\"{}.{:02}\"}},",
            i % 7,
            ["draft", "sent", "paid", "void"][(i % 4) as usize],
            100 + (i * 37) % 9000,
            (i * 13) % 100
        ));
        i += 1;
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(n);
    bytes
}

/// Parses `a=1&b=x%20y` into decoded pairs, in order (the simulated OMS's rules).
pub fn query_params(query: &str) -> Vec<(String, String)> {
    omsgate::sim::query::QueryString::parse(query).into_pairs()
}
