//! `safebet`: the command-line entry point. Glue only: every subcommand hands off to a library crate.

mod cli;

use clap::Parser;

/// mimalloc instead of glibc malloc: the service allocates a request's decoded features (KiBs) and answers on
/// every call from several threads, and glibc's arena locks and page returns cost about a tenth of the
/// server's time under `DecideBatch` load (perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::run(args)
}
