//! `omsgate check-config PATH`: validate a config file.

use std::path::PathBuf;

/// Options of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file to validate.
    #[arg(default_value = "config.toml")]
    pub path: PathBuf,
}

/// Validates the file; prints every problem and returns 64, or prints the warnings (settings that
/// work but are probably mistakes) and a summary and returns 0.
pub fn main(args: Args) -> i32 {
    match crate::config::Config::load(&args.path) {
        Ok(c) => {
            for (key, reason) in c.upstream.warnings() {
                eprintln!("{}: warning: {key}: {reason}", args.path.display());
            }
            println!(
                "{}: OK ({} routes, {} upstream servers)",
                args.path.display(),
                c.routes.routes.len(),
                c.upstream.servers.len()
            );
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", args.path.display());
            super::EXIT_CONFIG
        }
    }
}
