//! Episodic RL speed in the simulator (issue 6): episodes per second for RiverSwim (6 states, H = 20) and
//! the cliff grid-world (4 x 6, H = 20), at 1 and 2 threads, for UCBVI and conservative UCBVI (every policy
//! and alpha of the shipped scenarios, fewer episodes and seeds).
//!
//! `cargo bench --bench episodes` (options after `--`: `--seeds N`, default 4; `--episodes N`, default 2000).
//! Wall time: it wants an idle machine.

use std::time::Instant;

use safebet_simulations::{RunOptions, Scenario, Shard, simulate, total_rounds};

fn option(args: &[String], flag: &str, default: usize) -> usize {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds = option(&args, "--seeds", 4);
    let episodes = option(&args, "--episodes", 2000);
    println!("episodic RL in the simulator: {seeds} seeds x {episodes} episodes per policy and alpha, wall time");
    println!("{:<12} {:>8} {:>10} {:>14} {:>12}", "scenario", "threads", "wall (s)", "episodes/s", "steps/s");
    for name in ["riverswim", "cliff"] {
        let path = format!("{}/simulations/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let mut scenario = Scenario::from_file(std::path::Path::new(&path)).expect("scenario parses");
        scenario.horizon = episodes as u64;
        let steps_per_episode = 20.0;
        let mut rates = Vec::new();
        for threads in [1usize, 2] {
            let options = RunOptions { runs: Some(seeds as u32), threads, shard: Shard::WHOLE };
            let total = total_rounds(&scenario, &options);
            let started = Instant::now();
            simulate(&scenario, &options, &|_| {}).expect("simulation runs");
            let wall = started.elapsed().as_secs_f64();
            let rate = total as f64 / wall;
            rates.push(rate);
            println!("{name:<12} {threads:>8} {wall:>10.2} {rate:>14.0} {:>12.0}", rate * steps_per_episode);
        }
        println!("{name:<12} speed-up 2 threads vs 1: {:.2}x", rates[1] / rates[0]);
    }
}
