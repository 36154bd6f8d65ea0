//! `omsgate seed-db`: fills a PostgreSQL database with the simulated OMS's deterministic data
//! (the reference schema, tenants, invoices with lines, payments), for the demo, load tests and
//! benchmarks. `omsgate demo --seed-db` does the same through [`crate::db::seed`].

use crate::db::seed::{seed_with, SeedOptions};

/// Options of `seed-db`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL of the database to fill.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// Schema to fill (created tables go there too).
    #[arg(long, default_value = "public", value_name = "NAME")]
    pub schema: String,
    /// Number of tenants (`acme`, `globex`, `initech`, `umbrella`, `hooli`, `tenant-006`, ...).
    #[arg(long, default_value_t = 5)]
    pub tenants: usize,
    /// Invoices per tenant (each with 1 to 8 lines; about 4.5 on average).
    #[arg(long, default_value_t = 1000)]
    pub invoices: usize,
    /// Seed of the generated data (the simulated OMS uses 42 by default).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Do not create the reference tables; fill existing ones.
    #[arg(long)]
    pub no_schema: bool,
}

/// Runs `seed-db`; returns the exit code.
pub fn main(args: Args) -> i32 {
    if let Err(e) = crate::db::check_identifier(&args.schema) {
        eprintln!("--schema: {e}");
        return super::EXIT_CONFIG;
    }
    let options = SeedOptions {
        schema: args.schema.clone(),
        apply_schema: !args.no_schema,
        tenants: args.tenants,
        invoices_per_tenant: args.invoices,
        seed: args.seed,
    };
    let result = super::block_on(async {
        let client = crate::db::connect(&args.database_url).await?;
        seed_with(&client, &options).await
    });
    match result {
        Err(message) => {
            eprintln!("{message}");
            1
        }
        Ok(Ok(report)) => {
            println!("Seeded schema `{}`: {report}.", args.schema);
            0
        }
        Ok(Err(e)) => {
            eprintln!("omsgate seed-db: {e}");
            1
        }
    }
}
