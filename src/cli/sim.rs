//! `omsgate sim`: the simulated legacy OMS on its own (for benches, and to try the gateway in
//! front of a separate process).

use std::net::SocketAddr;
use std::time::Duration;

use crate::sim::SimOptions;

/// Options of `sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Latency of every API request, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub latency_ms: u64,
    /// Concurrent API requests served; the rest queue (0 = unlimited).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Tenants.
    #[arg(long, default_value_t = 5)]
    pub tenants: usize,
    /// Invoices per tenant.
    #[arg(long, default_value_t = 1000)]
    pub invoices: usize,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Route on the percent-decoded path, as the legacy app's uvicorn does
    /// (`SimOptions::legacy_paths`).
    #[arg(long)]
    pub legacy_paths: bool,
}

/// Runs the simulated OMS until SIGTERM or SIGINT.
pub fn main(args: Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("omsgate sim: cannot start a runtime: {e}");
            return 1;
        }
    };
    let opts = SimOptions {
        latency: Duration::from_millis(args.latency_ms),
        workers: args.workers,
        tenants: args.tenants.max(1),
        invoices_per_tenant: args.invoices.max(1),
        legacy_paths: args.legacy_paths,
        ..SimOptions::default()
    };
    rt.block_on(async move {
        let handle = match crate::sim::start(args.listen, opts).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("omsgate sim: cannot listen on {}: {e}", args.listen);
                return 1;
            }
        };
        println!("simulated OMS on http://{}", handle.addr);
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("omsgate sim: cannot watch signals: {e}");
                    return 1;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        handle.shutdown().await;
        0
    })
}
