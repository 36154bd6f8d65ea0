//! `omsgate run`: the gateway.

use std::path::PathBuf;

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(short, long, default_value = "config.toml")]
    pub config: PathBuf,
    /// Take over the listening sockets of a running omsgate (graceful upgrade; send the old
    /// process SIGQUIT after starting this one).
    #[arg(short, long)]
    pub upgrade: bool,
    /// Unix socket used to hand listeners over during an upgrade.
    #[arg(long, default_value = "/tmp/omsgate_upgrade.sock")]
    pub upgrade_sock: String,
}

/// Loads the config (exit 64 with every problem when invalid) and runs the server.
pub fn main(args: Args) -> i32 {
    // First of all: from here on a SIGHUP (a reload) can no longer terminate the process.
    crate::reload::install_hangup_handler();
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    crate::logging::init(&config.log);
    let opts = crate::server::ProcessOptions {
        upgrade: args.upgrade,
        config_path: Some(args.config.clone()),
        upgrade_sock: Some(args.upgrade_sock),
    };
    match crate::server::run(config, opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("omsgate: {e}");
            1
        }
    }
}
