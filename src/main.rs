//! The `omsgate` binary: parses the command line and dispatches to a subcommand.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = omsgate::cli::Cli::parse();
    std::process::exit(omsgate::cli::dispatch(cli));
}
