//! `omsgate check-config PATH [--database]`: validate a config file, and with `--database` its
//! pooled queries against the database.

use std::path::PathBuf;

use crate::config::{Config, ConfigError, Problem};

/// Options of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file to validate.
    #[arg(default_value = "config.toml")]
    pub path: PathBuf,
    /// Also prepare every `[queries.NAME]` against the database (parameter and result types,
    /// missing functions, tables and columns); its problems are listed with the others.
    #[arg(long)]
    pub database: bool,
    /// PostgreSQL URL for `--database` (overrides `[database] url` and its `url_env`).
    #[arg(long, value_name = "URL", requires = "database")]
    pub database_url: Option<String>,
}

/// Validates the file; prints every problem and returns 64, or prints the warnings (settings that
/// work but are probably mistakes) and a summary and returns 0.
pub fn main(args: Args) -> i32 {
    let text = match std::fs::read_to_string(&args.path) {
        Ok(t) => t,
        Err(source) => {
            let e = ConfigError::Read {
                path: args.path.clone(),
                source,
            };
            eprintln!("{}: {e}", args.path.display());
            return super::EXIT_CONFIG;
        }
    };
    let (c, mut problems) = match Config::parse_with_problems(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", args.path.display());
            return super::EXIT_CONFIG;
        }
    };
    let mut checked = None;
    if args.database {
        let database = match &args.database_url {
            Some(url) => c.database.with_url(url, "--database-url"),
            None => c.database.clone(),
        };
        match database.require_url() {
            Err(e) => problems.push(Problem {
                key: "database.url".into(),
                reason: format!("--database: {e}"),
            }),
            Ok(_) => {
                let found = super::block_on(crate::db::queries::check_against_database(
                    &database, &c.queries,
                ));
                match found {
                    Ok(Ok(found)) => {
                        checked = Some(c.queries.iter().count());
                        problems.extend(found);
                    }
                    Ok(Err(e)) => problems.push(Problem {
                        key: "database.url".into(),
                        reason: format!("--database: {e}"),
                    }),
                    Err(e) => {
                        eprintln!("{}: {e}", args.path.display());
                        return super::EXIT_CONFIG;
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        eprintln!(
            "{}: {}",
            args.path.display(),
            ConfigError::Invalid(problems)
        );
        return super::EXIT_CONFIG;
    }
    for (key, reason) in c.upstream.warnings() {
        eprintln!("{}: warning: {key}: {reason}", args.path.display());
    }
    println!(
        "{}: OK ({} routes, {} upstream servers{})",
        args.path.display(),
        c.routes.routes.len(),
        c.upstream.servers.len(),
        match checked {
            Some(n) => format!(", {n} queries prepared against the database"),
            None => String::new(),
        }
    );
    0
}
