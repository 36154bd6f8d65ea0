//! Subcommands, one module each; [`dispatch`] runs one and returns the process exit code.

use clap::{Parser, Subcommand};

pub mod audit_sink;
pub mod check_config;
pub mod demo;
pub mod loadtest;
pub mod migrate;
pub mod print_config;
pub mod query_check;
pub mod run;
pub mod seed_db;
pub mod sim;

/// Exit code for bad configuration or usage (`EX_USAGE`/`EX_CONFIG` family: 64).
pub const EXIT_CONFIG: i32 = 64;

/// Runs `f` to completion on a new current-thread runtime (the one-shot database subcommands);
/// the error says why no runtime could be started.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    Ok(runtime.block_on(f))
}

/// omsgate: a fast, observable gateway in front of a legacy Order/Invoice Management System.
#[derive(Debug, Parser)]
#[command(name = "omsgate", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(run::Args),
    /// Run the gateway in front of the built-in simulated legacy OMS (one process).
    Demo(demo::Args),
    /// Run the simulated legacy OMS alone.
    Sim(sim::Args),
    /// Load-test the OMS and omsgate with an open-model scenario (or `--demo`): latency from
    /// the intended send time, capacity search, terminal/JSON/HTML report.
    Loadtest(loadtest::Args),
    /// Validate a config file: exit 0, or list every problem and exit 64.
    CheckConfig(check_config::Args),
    /// Print the effective config (defaults filled in, secrets masked) as TOML.
    PrintConfig(print_config::Args),
    /// Apply the bundled migrations (indexes, query functions) to the OMS database, or show
    /// their `status`.
    Migrate(migrate::Args),
    /// Ask the OMS and the pooled query the same sample requests and compare the answers (JSON,
    /// semantically); exit 1 on any difference.
    QueryCheck(query_check::Args),
    /// Fill a PostgreSQL database with the simulated OMS's data (reference schema included).
    SeedDb(seed_db::Args),
    /// Load the audit topic into the OMS's `audit_events` table (consumer group, batches,
    /// offsets committed after the database transaction).
    AuditSink(audit_sink::Args),
}

/// Runs the chosen subcommand and returns the exit code.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::Demo(a) => demo::main(a),
        Command::Sim(a) => sim::main(a),
        Command::Loadtest(a) => loadtest::main(a),
        Command::CheckConfig(a) => check_config::main(a),
        Command::PrintConfig(a) => print_config::main(a),
        Command::Migrate(a) => migrate::main(a),
        Command::QueryCheck(a) => query_check::main(a),
        Command::SeedDb(a) => seed_db::main(a),
        Command::AuditSink(a) => audit_sink::main(a),
    }
}
