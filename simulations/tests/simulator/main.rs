//! Integration tests of the simulator: determinism across threads and shards, error messages for bad
//! scenarios, and the shipped scenarios. Horizons and seed counts are small so `cargo test --release` is fast.

mod bad_scenarios;
mod determinism;
mod drift;
mod measurement;
mod rl;
mod shipped;

use std::path::{Path, PathBuf};

use safebet_simulations::Scenario;

/// A small linear scenario exercising conservative and unconstrained policies, two alphas, two deltas, a
/// checkpoint constraint, LinTS's random stream and delayed rewards.
pub const SMALL: &str = r#"
name = "small"
horizon = 400
seeds = 5
seed = 11
alphas = [0.05, 0.2]
deltas = [0.05, 0.2]
curve_points = 12

[environment.linear]
dim = 4
actions = 6
noise = "bernoulli"
baseline_quantile = 0.8
context_pool = 16

[feedback]
delay = "geometric"
mean_delay = 3.0
loss = 0.1
timeout = 20

[[policies]]
label = "LinUCB"
algorithm = "linucb"
noise_scale = 0.5

[[policies]]
label = "LinTS"
algorithm = "lints"
noise_scale = 0.5

[[policies]]
label = "CLUCB2, checkpoints"
algorithm = "clucb2"
baseline_reward = "unknown"
noise_scale = 0.5
constraint = { kind = "checkpoint", every = 100 }

[[policies]]
label = "CLUCB known"
algorithm = "clucb"
baseline_reward = "known"
noise_scale = 0.5
"#;

pub fn small_scenario() -> Scenario {
    Scenario::from_toml_str(SMALL, "small.toml", Path::new(".")).expect("the small scenario parses")
}

/// The crate's directory (simulations/).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// summary.json with its one run-dependent line (wall time) removed.
pub fn summary_without_wall_time(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json exists");
    text.lines().filter(|l| !l.trim_start().starts_with("\"wall_seconds\"")).collect::<Vec<_>>().join("\n")
}

pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}
