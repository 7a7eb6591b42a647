//! Subcommands of the `safebet` binary. Each lives in its own module and stays thin.

use clap::{Parser, Subcommand};

/// safebet: learn a better policy online without ever doing worse than the baseline you run today.
///
/// Conservative bandit learners (CLUCB, CLUCB2, conservative UCB) explore only while, with probability at
/// least 1 - delta, their cumulative reward stays at or above (1 - alpha) times the baseline's, at every round.
#[derive(Debug, Parser)]
#[command(name = "safebet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a policy configuration file and print it with defaults filled in.
    Validate(validate::ValidateArgs),
    /// Simulate a scenario's policies before rollout: regret, baseline-constraint violations, plots.
    Simulate(simulate::SimulateArgs),
    /// Run the gRPC decision service (decisions, rewards, episodes, experiment admin, health, reflection).
    Serve(serve::ServeArgs),
    /// Off-policy evaluation: estimate a target policy's value from logged decisions (IPS, SNIPS, DM, DR).
    Ope(ope::OpeArgs),
    /// Export the decision log as JSON lines or CSV (rewards joined to decisions; --transitions: episode steps).
    Log(log::LogArgs),
    /// Write an experiment's complete state (model, budget ledger, pending decisions or running episode) to a file.
    Export(transfer::ExportArgs),
    /// Create an experiment on a server from a file written by `safebet export`.
    Import(transfer::ImportArgs),
    /// Make API keys for `safebet serve --keys`.
    Keys(keys::KeysArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Ope(args) => ope::run(args),
        Command::Log(args) => log::run(args),
        Command::Export(args) => transfer::export(args),
        Command::Import(args) => transfer::import(args),
        Command::Keys(args) => keys::run(args),
    }
}

mod keys;
mod log;
mod ope;
mod serve;
mod simulate;
mod transfer;
mod validate;
