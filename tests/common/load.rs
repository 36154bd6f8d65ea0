//! A bounded client loop against the gateway, for tests that change something (reload, upgrade)
//! while requests keep coming: `workers` loops of `GET url` on their own thread and tokio
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
                        let (client, url) = (client.clone(), url.clone());
                        let (stop, done, outcomes) =
                            (t_stop.clone(), t_done.clone(), t_outcomes.clone());
                        tasks.push(tokio::spawn(async move {
                            while !stop.load(Ordering::SeqCst)
                                && Instant::now() < deadline
                                && done.fetch_add(1, Ordering::SeqCst) < max_requests
                            {
                                let outcome = request(&client, &url).await;
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

async fn request(client: &reqwest::Client, url: &str) -> Outcome {
    match client.get(url).send().await {
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
