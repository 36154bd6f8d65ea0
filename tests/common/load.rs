//! A bounded client loop against the gateway, for tests that change something (reload, upgrade)
//! while requests keep coming: `workers` loops of `GET url` (or `POST url` with a small JSON
//! body, [`Load::start_posts`]) on their own thread and tokio
//! runtime, until [`Load::stop`], `max_requests` in total, or a 60 s safety deadline, whichever
//! comes first. Every request's outcome is kept; assertions are on outcomes, never on timing.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hard bound on how long a load runs, whatever the test does.
const SAFETY_DEADLINE: Duration = Duration::from_secs(60);

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The response status, if there was a response.
    pub status: Option<u16>,
    /// The `x-upstream` header of the response (which test upstream answered).
    pub upstream: Option<String>,
    /// The error, if there was no response.
    pub error: Option<String>,
    /// Whether the error was a refused connection.
    pub refused: bool,
}

impl Outcome {
    /// A 2xx response.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// How the client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// Keepalive connections, reused across requests.
    Reused,
    /// A new TCP connection for every request (exercises the listener's accept queue).
    Fresh,
}

/// A running client loop.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` loops of `GET url`.
    pub fn start(
        url: String,
        workers: usize,
        connections: Connections,
        max_requests: usize,
    ) -> Load {
        Load::start_method(
            reqwest::Method::GET,
            url,
            workers,
            connections,
            max_requests,
        )
    }

    /// Starts `workers` loops of `POST url` with a small JSON body.
    pub fn start_posts(
        url: String,
        workers: usize,
        connections: Connections,
        max_requests: usize,
    ) -> Load {
        Load::start_method(
            reqwest::Method::POST,
            url,
            workers,
            connections,
            max_requests,
        )
    }

    fn start_method(
        method: reqwest::Method,
        url: String,
        workers: usize,
        connections: Connections,
        max_requests: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (t_stop, t_done, t_outcomes) = (stop.clone(), done.clone(), outcomes.clone());
        let thread = std::thread::Builder::new()
            .name("load".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build the load runtime: {e}"));
                runtime.block_on(async move {
                    let mut builder = reqwest::Client::builder()
                        .no_proxy()
                        .connect_timeout(Duration::from_secs(5))
                        .timeout(Duration::from_secs(10));
                    if connections == Connections::Fresh {
                        builder = builder.pool_max_idle_per_host(0);
                    }
                    let client = builder
                        .build()
                        .unwrap_or_else(|e| panic!("cannot build the load client: {e}"));
                    let deadline = Instant::now() + SAFETY_DEADLINE;
                    let mut tasks = Vec::new();
                    for _ in 0..workers {
                        let (client, url, method) = (client.clone(), url.clone(), method.clone());
                        let (stop, done, outcomes) =
                            (t_stop.clone(), t_done.clone(), t_outcomes.clone());
                        tasks.push(tokio::spawn(async move {
                            while !stop.load(Ordering::SeqCst)
                                && Instant::now() < deadline
                                && done.fetch_add(1, Ordering::SeqCst) < max_requests
                            {
                                let outcome = request(&client, &method, &url).await;
                                outcomes.lock().push(outcome);
                            }
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .unwrap_or_else(|e| panic!("cannot spawn the load thread: {e}"));
        Load {
            stop,
            done,
            outcomes,
            thread: Some(thread),
        }
    }

    /// Requests completed so far.
    pub fn completed(&self) -> usize {
        self.outcomes.lock().len()
    }

    /// Waits until `n` more requests have completed (or the load ended); whether they did.
    pub fn wait_for_more(&self, n: usize, timeout: Duration) -> bool {
        let target = self.completed() + n;
        super::wait_for(timeout, || self.completed() >= target)
    }

    /// The outcomes so far, in completion order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().clone()
    }

    /// Whether the loop is still sending (not stopped, not out of requests).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop, waits for the requests in flight, and returns every outcome.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.finish();
        self.outcomes()
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn request(client: &reqwest::Client, method: &reqwest::Method, url: &str) -> Outcome {
    let mut builder = client.request(method.clone(), url);
    if method == reqwest::Method::POST {
        builder = builder
            .header("content-type", "application/json")
            .body(r#"{"note":"load"}"#);
    }
    match builder.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let upstream = resp
                .headers()
                .get("x-upstream")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match resp.bytes().await {
                Ok(_) => Outcome {
                    status: Some(status),
                    upstream,
                    error: None,
                    refused: false,
                },
                Err(e) => Outcome {
                    status: Some(status),
                    upstream,
                    error: Some(format!("body: {e}")),
                    refused: false,
                },
            }
        }
        Err(e) => Outcome {
            status: None,
            upstream: None,
            refused: is_refused(&e),
            error: Some(error_chain(&e)),
        },
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        current = err.source();
    }
    false
}

// === Users with think time ===

/// One request of a simulated user.
#[derive(Clone, Debug)]
pub struct UserRequest {
    /// `GET`, `PATCH`, ...
    pub method: reqwest::Method,
    /// Path and query.
    pub path: String,
    /// Extra headers (a bearer token, `x-tenant-id`, ...).
    pub headers: Vec<(String, String)>,
    /// JSON body of writes.
    pub body: Option<String>,
}

/// What happened to one request of a simulated user.
#[derive(Clone, Debug)]
pub struct UserOutcome {
    /// The request's method.
    pub method: reqwest::Method,
    /// The response status, if there was a response.
    pub status: Option<u16>,
    /// The `x-cache` header (`HIT`, `MISS`, `STALE`, `BYPASS`, ...).
    pub cache: Option<String>,
    /// Whether the response had a `Retry-After` header.
    pub retry_after: bool,
    /// Whether the response body parsed as JSON.
    pub json: bool,
    /// Time to the whole response (recorded for reports, never asserted on in tests).
    pub latency: Duration,
    /// The error (connection, timeout, body), if the request failed.
    pub error: Option<String>,
}

impl UserOutcome {
    /// A 2xx response.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// A response served from the gateway's cache (`HIT` or `STALE`).
    pub fn served_from_cache(&self) -> bool {
        matches!(self.cache.as_deref(), Some("HIT") | Some("STALE"))
    }
}

/// `users` simulated users against `base` (`http://host:port`) for `duration`: each waits a
/// random fraction of `think` first (so they do not all start at once), then loops: the next of
/// its requests (`next(user, n)`), then `think` ± 20 % of pause. Connections are pooled and
/// reused (idle ones closed after 2 s, before any server's keep-alive timeout, so the client side
/// never races). Requests still running at the end are waited for (at most their 30 s timeout).
/// Blocks on a runtime of its own and returns every outcome.
pub fn run_users(
    base: &str,
    users: usize,
    think: Duration,
    duration: Duration,
    next: impl Fn(usize, u64) -> UserRequest + Send + Sync + 'static,
) -> Vec<UserOutcome> {
    let base = base.to_owned();
    let next = Arc::new(next);
    let thread = std::thread::Builder::new()
        .name("users".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot build the users runtime: {e}"));
            runtime.block_on(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30))
                    .pool_idle_timeout(Duration::from_secs(2))
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build the users client: {e}"));
                let end = Instant::now() + duration.min(SAFETY_DEADLINE);
                let mut tasks = Vec::with_capacity(users);
                for user in 0..users {
                    let (client, base, next) = (client.clone(), base.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut outcomes = Vec::new();
                        let start = think.mul_f64(rand::random::<f64>());
                        tokio::time::sleep(start).await;
                        let mut n = 0u64;
                        while Instant::now() < end {
                            let request = next(user, n);
                            n += 1;
                            outcomes.push(user_request(&client, &base, request).await);
                            let pause = think.mul_f64(0.8 + 0.4 * rand::random::<f64>());
                            tokio::time::sleep(pause).await;
                        }
                        outcomes
                    }));
                }
                let mut all = Vec::new();
                for t in tasks {
                    if let Ok(outcomes) = t.await {
                        all.extend(outcomes);
                    }
                }
                all
            })
        })
        .unwrap_or_else(|e| panic!("cannot spawn the users thread: {e}"));
    thread
        .join()
        .unwrap_or_else(|_| panic!("the users thread panicked"))
}

async fn user_request(client: &reqwest::Client, base: &str, r: UserRequest) -> UserOutcome {
    let started = Instant::now();
    let mut builder = client.request(r.method.clone(), format!("{base}{}", r.path));
    for (k, v) in &r.headers {
        builder = builder.header(k, v);
    }
    if let Some(body) = r.body {
        builder = builder
            .header("content-type", "application/json")
            .body(body);
    }
    let mut outcome = UserOutcome {
        method: r.method,
        status: None,
        cache: None,
        retry_after: false,
        json: false,
        latency: Duration::ZERO,
        error: None,
    };
    match builder.send().await {
        Ok(resp) => {
            outcome.status = Some(resp.status().as_u16());
            outcome.cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            outcome.retry_after = resp.headers().contains_key("retry-after");
            match resp.bytes().await {
                Ok(body) => {
                    outcome.json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
                }
                Err(e) => outcome.error = Some(format!("body: {}", error_chain(&e))),
            }
        }
        Err(e) => outcome.error = Some(error_chain(&e)),
    }
    outcome.latency = started.elapsed();
    outcome
}

/// A summary line of outcomes for failure messages and test output: counts by status (and
/// `error`), by `x-cache`, and the first few errors.
pub fn summarize(outcomes: &[UserOutcome]) -> String {
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    let mut by_cache = std::collections::BTreeMap::<String, usize>::new();
    for o in outcomes {
        let status = match (o.status, &o.error) {
            (_, Some(_)) => "error".to_owned(),
            (Some(s), None) => s.to_string(),
            (None, None) => "none".to_owned(),
        };
        *by_status.entry(status).or_default() += 1;
        *by_cache
            .entry(o.cache.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    let errors: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.error.as_deref())
        .take(3)
        .collect();
    format!(
        "{} requests; status {by_status:?}; x-cache {by_cache:?}; first errors {errors:?}",
        outcomes.len()
    )
}
