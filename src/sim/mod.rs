//! The simulated legacy OMS used by `omsgate demo`, the integration tests and the benches.
//!
//! A small HTTP/1.1 server (hyper) imitating the slow FastAPI OMS that omsgate sits in front
//! of: tenants, invoices with lines and payments held in memory, seeded deterministically by
//! [`data::generate`]. Like one uvicorn worker pool it serves at most [`SimOptions::workers`]
//! API requests at a time (the rest queue in arrival order) and each API request holds its
//! worker for [`SimOptions::latency`]. It counts what it served ([`SimHandle::stats`], `GET
//! /__stats`) and echoes requests back (`/__echo`) so tests can see what the gateway forwarded.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = omsgate::sim::start("127.0.0.1:0".parse().unwrap(), Default::default()).await?;
//! let token = sim.token("acme");
//! // GET {sim.url()}/api/v1/invoices with `Authorization: Bearer {token}` ...
//! assert_eq!(sim.stats().requests, 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Endpoints are described in `docs/testing.md` ("Simulated OMS") and in [`api`].

mod api;
pub mod data;
pub mod query;
mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The HS256 secret the demo (and, by default, the simulated OMS) uses for tokens.
pub const DEMO_JWT_SECRET: &str = "omsgate-demo-secret-change-me";

/// How long [`SimHandle::shutdown`] waits, beyond the latency, for in-flight requests.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How the simulated OMS behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Time each API request holds its worker before it is answered. Default 500 ms.
    pub latency: Duration,
    /// API requests served at once; the rest wait in FIFO order. `0` means unlimited.
    /// Default 4.
    pub workers: usize,
    /// HS256 secret verifying `Authorization: Bearer` tokens. Default [`DEMO_JWT_SECRET`].
    pub jwt_secret: String,
    /// Token claim holding the tenant. Default `"tenant_id"`.
    pub tenant_claim: String,
    /// Header naming the tenant when no bearer token is sent. Default `"x-tenant-id"`.
    pub tenant_header: String,
    /// Seed of the generated data. Default 42.
    pub seed: u64,
    /// Number of tenants (`acme`, `globex`, `initech`, `umbrella`, `hooli`, `tenant-006`, ...).
    /// Default 5.
    pub tenants: usize,
    /// Invoices generated per tenant. Default 1000.
    pub invoices_per_tenant: usize,
    /// Route on the percent-decoded path, as uvicorn/Starlette do (`/api/v1/%69nvoices` and
    /// `/api%2Fv1/invoices` are `/api/v1/invoices`; malformed escapes stay as they are).
    /// Invoice ids are accepted in every spelling the legacy app takes either way (upper case,
    /// without hyphens, braced, `urn:uuid:`). Default false: the path is routed as received.
    pub legacy_paths: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            latency: Duration::from_millis(500),
            workers: 4,
            jwt_secret: DEMO_JWT_SECRET.into(),
            tenant_claim: "tenant_id".into(),
            tenant_header: "x-tenant-id".into(),
            seed: 42,
            tenants: 5,
            invoices_per_tenant: 1_000,
            legacy_paths: false,
        }
    }
}

impl SimOptions {
    /// The dataset the simulated OMS starts with (the same rows a PostgreSQL seed gets).
    pub fn dataset(&self) -> data::Dataset {
        data::generate(self.seed, self.tenants, self.invoices_per_tenant)
    }
}

/// What the simulated OMS has served since start or the last reset (`GET /__stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// API requests received (everything except `/health`, `/__stats` and `/__echo`).
    pub requests: u64,
    /// API requests by route: `invoice_list`, `invoice_get`, `invoice_create`,
    /// `invoice_replace`, `invoice_patch`, `invoice_delete`, `payment_list`, `unknown`.
    pub by_route: BTreeMap<String, u64>,
    /// API requests holding a worker now.
    pub in_flight: u64,
    /// Most API requests that held a worker at once; never above the worker count.
    pub max_in_flight: u64,
    /// API requests waiting for a worker now.
    pub queued: u64,
    /// `GET /health` requests.
    pub health: u64,
    /// `/__echo` requests.
    pub echo: u64,
}

/// A running simulated OMS. Dropping it stops the server like [`SimHandle::shutdown`], without
/// waiting.
#[must_use = "dropping the handle stops the simulated OMS"]
pub struct SimHandle {
    /// The bound address (the real port when started on port 0).
    pub addr: SocketAddr,
    shared: Arc<api::Shared>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// `http://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A bearer token for `tenant` (subject `"{tenant}-user"`), signed with the sim's secret and
    /// tenant claim, valid for an hour.
    pub fn token(&self, tenant: &str) -> String {
        let o = &self.shared.options;
        crate::identity::issue_hs256(
            &o.jwt_secret,
            &o.tenant_claim,
            tenant,
            &format!("{tenant}-user"),
            Duration::from_secs(3_600),
        )
    }

    /// Counters since start or the last reset.
    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// Zeroes the counters (`max_in_flight` restarts from the current `in_flight`).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Changes the per-request latency from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Makes every API request fail with `status` (after the latency) until called with `None`,
    /// to imitate a broken OMS. `/health` stays up.
    pub fn set_failure(&self, status: Option<http::StatusCode>) {
        self.shared.set_failure(status);
    }

    /// Stops accepting connections, lets in-flight requests finish (closing idle keep-alive
    /// connections at once) and waits for that, for at most the latency plus a few seconds.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }

    /// Stops at once: closes the listener and every connection, in-flight requests included.
    pub fn abort(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `addr` (port 0 picks a free port), spawns the simulated OMS on the current tokio
/// runtime and returns once it accepts connections.
pub async fn start(addr: SocketAddr, options: SimOptions) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(api::Shared::new(options)?);
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
    tracing::info!(%addr, "Simulated OMS listening.");
    Ok(SimHandle {
        addr,
        shared,
        stop,
        accept: Some(accept),
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<api::Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A send or the handle being dropped both mean stop.
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "Simulated OMS accept failed.");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    let deadline = shared.latency() + DRAIN_GRACE;
    let drained = tokio::time::timeout(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "Simulated OMS drain deadline passed."
        );
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<api::Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(shared.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "Simulated OMS connection ended with an error.");
    }
}
