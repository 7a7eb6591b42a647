//! `safebet`: the command-line entry point. Glue only: every subcommand hands off to a library crate.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::run(args)
}
