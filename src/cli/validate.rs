//! `safebet validate`: check a policy configuration before an experiment runs it.

use std::path::PathBuf;

use anyhow::Context;
use safebet_engine::{Policy, PolicyConfig};

/// Check a policy configuration file (TOML or JSON) and print it with every default filled in.
///
/// The file holds one policy, for example:
///
///   algorithm = "clucb2"
///   layout = { kind = "shared", dim = 32 }
///   alpha = 0.05
///   baseline_reward = "unknown"
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The configuration file; `.json` is read as JSON, anything else as TOML.
    pub file: PathBuf,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let config: PolicyConfig = if args.file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid policy configuration", args.file.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a valid policy configuration", args.file.display()))?
    };
    Policy::new(config.clone()).with_context(|| format!("{} is rejected", args.file.display()))?;
    println!("{}", toml::to_string_pretty(&config)?);
    if let Some(guard) = config.drift_guard {
        eprintln!(
            "note: drift guard: a false alarm within 1,000,000 rewards has probability at most {:.2e} for any \
             noise within noise_scale (sub-Gaussian, Gaussian included)",
            guard.false_alarm_bound(1_000_000)
        );
    }
    if !config.algorithm.is_conservative() {
        eprintln!(
            "note: {} is unconstrained: it gives no baseline-safety guarantee. Use clucb, clucb2 or conservative_ucb.",
            config.algorithm.name()
        );
    }
    Ok(())
}
