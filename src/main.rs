//! The `omsgate` binary: parses the command line and dispatches to a subcommand.
#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc instead of glibc's malloc: fewer instructions per proxied request (see the commit
/// that chose it and benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = omsgate::cli::Cli::parse();
    std::process::exit(omsgate::cli::dispatch(cli));
}
