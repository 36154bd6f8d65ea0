//! `omsgate migrate [--database-url URL] [--config PATH] [--dir DIR] [--dry-run] [status]`:
//! applies the bundled migrations to the OMS database, then the operator's own from `--dir`, or
//! shows their status.
//!
//! The URL comes from `--database-url`, else `[database] url` (or its `url_env`) in the config
//! file when one is given or `config.toml` exists, else `DATABASE_URL`.

use std::path::PathBuf;

use crate::db::migrate::{print_migration, Migration, Migrator, RunOptions, MIGRATIONS, OPERATOR};
use crate::db::{DatabaseConfig, DbError};

/// Exit code when the database refuses or fails a migration.
pub const EXIT_FAILED: i32 = 1;

/// Options of `migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL of the OMS database (overrides the config file and DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Config file whose `[database]` section gives the URL and schema. Default `config.toml`
    /// when it exists.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Schema holding the OMS tables (overrides `[database] schema`).
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// Print the SQL that would run, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The operator's migrations (`NNNN_name.sql`: functions, views, indexes for the pooled
    /// queries), applied after the bundled ones and recorded with `source = 'operator'`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `status`: list each migration as applied, pending or changed-checksum.
    #[arg(value_parser = ["status"])]
    pub action: Option<String>,
}

/// Runs `migrate`; returns the exit code.
pub fn main(args: Args) -> i32 {
    let config = match database_config(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("{message}");
            return super::EXIT_CONFIG;
        }
    };
    let result = match super::block_on(run(&args, &config)) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_FAILED;
        }
    };
    match result {
        Ok(code) => code,
        // `omsgate migrate --dry-run | head`: the reader left; nothing went wrong here.
        Err(DbError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(DbError::Config(message)) => {
            eprintln!("{message}");
            super::EXIT_CONFIG
        }
        Err(e) => {
            eprintln!("omsgate migrate: {e}");
            EXIT_FAILED
        }
    }
}

/// The `[database]` settings: from the config file when given (or `config.toml` when present),
/// then the command-line overrides.
fn database_config(args: &Args) -> Result<DatabaseConfig, String> {
    let path = args.config.clone().or_else(|| {
        let default = PathBuf::from("config.toml");
        default.exists().then_some(default)
    });
    let mut config = match &path {
        Some(path) => {
            crate::config::Config::load(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .database
        }
        None => DatabaseConfig::default(),
    };
    if let Some(url) = &args.database_url {
        config = config.with_url(url.clone(), "--database-url");
    }
    if let Some(schema) = &args.schema {
        crate::db::check_identifier(schema).map_err(|e| format!("--schema: {e}"))?;
        config.schema = schema.clone();
    }
    Ok(config)
}

async fn run(args: &Args, config: &DatabaseConfig) -> Result<i32, DbError> {
    let migrator = Migrator::new(&config.schema)?;
    let files = match &args.dir {
        Some(dir) => crate::db::migrate::load_dir(dir)?,
        None => vec![],
    };
    let operator: Vec<Migration<'_>> = files
        .iter()
        .map(|(version, name, sql)| Migration {
            version: *version,
            name,
            sql,
        })
        .collect();
    let operator_migrator = match &args.dir {
        Some(_) => {
            Some(Migrator::with_migrations(&config.schema, &operator)?.with_source(OPERATOR))
        }
        None => None,
    };
    let mut out = std::io::stdout();
    let url = match config.require_url() {
        Ok(url) => url,
        Err(e) if args.dry_run && args.action.is_none() => {
            // Without a database every migration is shown, so the SQL can be reviewed offline.
            println!("-- No database given ({e}); showing every migration.\n");
            for m in MIGRATIONS.iter().chain(&operator) {
                print_migration(&mut out, m)?;
            }
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let client = crate::db::connect_trusting(url, &config.trust_roots, None).await?;
    if args.action.as_deref() == Some("status") {
        let mut up_to_date = true;
        for m in std::iter::once(&migrator).chain(operator_migrator.as_ref()) {
            up_to_date &= print_status(&client, m, &config.schema).await?;
        }
        // Exit 0 only when up to date, so scripts and readiness checks can rely on it.
        return Ok(if up_to_date { 0 } else { 2 });
    }
    let options = RunOptions {
        dry_run: args.dry_run,
    };
    migrator.run(&client, options, &mut out).await?;
    if let Some(m) = &operator_migrator {
        m.run(&client, options, &mut out).await?;
    }
    Ok(0)
}

/// Prints the status of one runner's migrations; whether they are all applied and valid.
async fn print_status(
    client: &tokio_postgres::Client,
    migrator: &Migrator<'_>,
    schema: &str,
) -> Result<bool, DbError> {
    let status = migrator.status(client).await?;
    if migrator.source() == OPERATOR {
        println!("Operator migrations (--dir) in schema `{schema}`:");
    } else {
        println!("Migrations in schema `{schema}`:");
    }
    for m in &status.migrations {
        println!("  {m}");
    }
    for (version, name) in &status.unknown {
        if migrator.source() == OPERATOR {
            println!("  {version:04}_{name:<37} applied, but not in --dir");
        } else {
            println!("  {version:04}_{name:<37} applied by a newer omsgate (not bundled here)");
        }
    }
    let changed = status
        .migrations
        .iter()
        .filter(|m| matches!(m.state, crate::db::migrate::State::Changed { .. }))
        .count();
    println!(
        "{} applied, {} pending, {} changed-checksum, {} skipped.",
        status.migrations.len() - status.pending() - changed - status.skipped(),
        status.pending(),
        changed,
        status.skipped()
    );
    Ok(status.up_to_date())
}
