//! `safebet keys new`: makes an API key and the line that configures it.

use std::io::Read;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use safebet_service::hash_key;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a random API key: prints the key (give it to the caller) and the keys-file entry holding only its
    /// hash (give that to the server).
    New(NewArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Create, change, pause, delete, export, import and report on experiments.
    Admin,
    /// Decide and report rewards (and run episodes).
    Decide,
}

#[derive(Debug, Args)]
struct NewArgs {
    /// What the key may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// A name for the key, shown in logs and the audit trail.
    #[arg(long)]
    id: String,
    /// Limit the key to these experiments (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    experiments: Vec<String>,
}

pub fn run(args: KeysArgs) -> Result<()> {
    let KeysCommand::New(args) = args.command;
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret)).context("reading /dev/urandom")?;
    let key: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let role = match args.role {
        RoleArg::Admin => "admin",
        RoleArg::Decide => "decide",
    };
    println!("key (give it to the caller; it is not stored anywhere): {key}");
    println!();
    println!("keys-file entry (give it to the server):");
    println!("[[key]]");
    println!("id = {:?}", args.id);
    println!("role = \"{role}\"");
    if !args.experiments.is_empty() {
        println!("experiments = {:?}", args.experiments);
    }
    println!("sha256 = \"{}\"", hash_key(&key));
    Ok(())
}
