//! `omsgate demo`: the gateway in front of the built-in simulated legacy OMS, in one process.
//!
//! The simulated OMS runs as a Pingora background service (so it starts inside the server's
//! runtimes, after any fork); the gateway runs with the embedded `demo.toml`: JWT identity with
//! the demo secret, in-memory cache and file audit (no Redis or Kafka needed).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::sim::{SimOptions, DEMO_JWT_SECRET};

/// Options of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Public listener of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener of the gateway (/metrics, /health, /ready).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub admin: SocketAddr,
    /// Listener of the simulated OMS (the gateway's upstream).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub oms: SocketAddr,
    /// Latency of every simulated OMS API request, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub latency_ms: u64,
    /// Concurrent requests the simulated OMS serves; the rest queue.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Invoices per tenant in the simulated OMS.
    #[arg(long, default_value_t = 1000)]
    pub invoices: usize,
    /// Tenants in the simulated OMS.
    #[arg(long, default_value_t = 5)]
    pub tenants: usize,
    /// Also serve the read routes from PostgreSQL: creates the reference OMS tables in this
    /// database, loads the simulated OMS's data into them, applies the bundled migrations, and
    /// binds the invoice, listing and payment routes to the pooled query paths.
    #[arg(long, value_name = "URL")]
    pub seed_db: Option<String>,
    /// Schema that `--seed-db` fills.
    #[arg(long, default_value = "public", value_name = "NAME")]
    pub db_schema: String,
}

/// Runs the simulated OMS inside the server's runtime.
struct SimService {
    addr: SocketAddr,
    opts: SimOptions,
}

#[async_trait]
impl BackgroundService for SimService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        match crate::sim::start(self.addr, self.opts.clone()).await {
            Ok(handle) => {
                let _ = shutdown.changed().await;
                handle.shutdown().await;
            }
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "Starting the simulated OMS failed.");
                std::process::exit(1);
            }
        }
    }
}

/// Renders the demo config; with `--seed-db` the read routes get their `query` bindings and the
/// config a `[database]` section.
pub fn render_config(args: &Args) -> String {
    let binding = |name: &str| match args.seed_db {
        Some(_) => format!("query = \"{name}\""),
        None => String::new(),
    };
    let mut text = include_str!("demo.toml")
        .replace("{listen}", &args.listen.to_string())
        .replace("{admin}", &args.admin.to_string())
        .replace("{oms}", &args.oms.to_string())
        .replace("{secret}", DEMO_JWT_SECRET)
        .replace("{query_invoice}", &binding("invoice_with_lines"))
        .replace("{query_invoice_list}", &binding("invoice_page"))
        .replace("{query_payments}", &binding("payment_page"));
    if let Some(url) = &args.seed_db {
        // toml::Value's Display quotes and escapes the strings.
        text.push_str(&format!(
            "\n[database]\nurl = {}\nschema = {}\n\n{}",
            toml::Value::String(url.clone()),
            toml::Value::String(args.db_schema.clone()),
            crate::db::queries::reference_toml()
        ));
    }
    text
}

/// `--seed-db`: the reference tables, the simulated OMS's data (same seed, tenants and
/// invoices), and the bundled migrations.
pub(crate) fn seed_database(url: &str, schema: &str, sim: &SimOptions) -> Result<(), String> {
    crate::db::check_identifier(schema).map_err(|e| format!("--db-schema: {e}"))?;
    let seeded = super::block_on(async {
        let client = crate::db::connect(url).await?;
        let options = crate::db::seed::SeedOptions {
            schema: schema.to_string(),
            apply_schema: true,
            tenants: sim.tenants,
            invoices_per_tenant: sim.invoices_per_tenant,
            seed: sim.seed,
        };
        let report = crate::db::seed::seed_with(&client, &options).await?;
        println!("Seeded schema `{schema}`: {report}.");
        crate::db::migrate::Migrator::new(schema)?
            .run(
                &client,
                crate::db::migrate::RunOptions::default(),
                &mut std::io::stdout(),
            )
            .await?;
        Ok::<(), crate::db::DbError>(())
    })?;
    seeded.map_err(|e| e.to_string())
}

/// Starts the simulated OMS and the gateway; prints how to try it.
pub fn main(args: Args) -> i32 {
    let text = render_config(&args);
    let config = match crate::config::Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo config: {e}");
            return super::EXIT_CONFIG;
        }
    };
    crate::logging::init(&config.log);
    let opts = SimOptions {
        latency: Duration::from_millis(args.latency_ms),
        workers: args.workers.max(1),
        tenants: args.tenants.max(2),
        invoices_per_tenant: args.invoices.max(1),
        ..SimOptions::default()
    };
    if let Some(url) = &args.seed_db {
        if let Err(e) = seed_database(url, &args.db_schema, &opts) {
            eprintln!("omsgate demo --seed-db: {e}");
            return 1;
        }
    }
    print_banner(&args);
    let sim = SimService {
        addr: args.oms,
        opts,
    };
    let extra: Vec<Box<dyn pingora::services::ServiceWithDependents>> = vec![Box::new(
        pingora::services::background::background_service("simulated OMS", sim),
    )];
    match crate::server::run_with(config, crate::server::ProcessOptions::default(), extra) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("omsgate demo: {e}");
            1
        }
    }
}

fn print_banner(args: &Args) {
    let ttl = Duration::from_secs(24 * 3600);
    let acme = crate::identity::issue_hs256(DEMO_JWT_SECRET, "tenant_id", "acme", "alice", ttl);
    let globex = crate::identity::issue_hs256(DEMO_JWT_SECRET, "tenant_id", "globex", "bob", ttl);
    let gw = format!("http://{}", args.listen);
    let admin = format!("http://{}", args.admin);
    println!(
        r#"
omsgate demo
  gateway (public)   {gw}
  admin              {admin}/metrics  {admin}/health  {admin}/ready
  simulated OMS      http://{oms}  ({lat} ms per request, {workers} workers)

Bearer tokens (valid 24 h):
  tenant acme   (alice): {acme}
  tenant globex (bob):   {globex}

Try:
  export TOKEN={acme}
  curl -s -H "Authorization: Bearer $TOKEN" '{gw}/api/v1/invoices?limit=2'
  curl -si -H "Authorization: Bearer $TOKEN" '{gw}/api/v1/invoices?status=open&limit=5' -o /dev/null -w '%{{http_code}} in %{{time_total}}s\n'
  curl -s -H "Authorization: Bearer $TOKEN" '{gw}/api/v1/payments?limit=3'
  curl -s '{admin}/metrics' | grep omsgate_http_requests_total
  curl -s '{admin}/ready'
"#,
        oms = args.oms,
        lat = args.latency_ms,
        workers = args.workers,
    );
}
