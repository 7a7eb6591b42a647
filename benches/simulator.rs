//! Simulator speed (issue 3): rounds per second for the Kazerouni scenario at 1 and 2 threads, and the
//! simulator's own per-round cost (environment + metrics) against the cost of the policy it drives.
//!
//! The overhead is measured by replay: one run is simulated while its inputs (action sets, baselines,
//! rewards) are recorded, then the same policy is fed the recorded inputs with nothing else in the loop. The
//! engine is deterministic, so the replay makes the same decisions (checked), and the difference between the
//! two timings is what the simulator adds. Both are timed in process CPU time, alternately, keeping the best
//! of each, so that other processes on a shared machine disturb the ratio as little as possible; the
//! throughput part is wall time, so it wants an idle machine (the load average is printed).
//!
//! `cargo bench --bench simulator` (options after `--`: `--seeds N` runs per policy and alpha for the
//! throughput part, default 6; `--repeats N` timings per figure, the best is kept, default 3).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use safebet_engine::{BaselineReward, Policy, PolicyConfig, Round};
use safebet_simulations::{
    Actions, Environment, LearnerConfig, RunOptions, Scenario, Shard, policy_seed, simulate, total_rounds,
};

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/simulations/scenarios/kazerouni2017.toml");
const OVERHEAD_ALPHA: f64 = 0.05;

/// The inputs of one simulated run, as the policy saw them.
struct Trace {
    /// Distinct action sets (the environment's pool), so the replay reads as little memory as the simulation.
    sets: Vec<Vec<f64>>,
    num_actions: usize,
    /// Per round: (action set, baseline, baseline's expected reward, observed reward, action played).
    rounds: Vec<(usize, usize, f64, f64, usize)>,
    regret: f64,
}

fn option(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} expects a number, got {v}")))
}

fn best_of<T>(repeats: u32, mut f: impl FnMut() -> (Duration, T)) -> (Duration, T) {
    let mut best = f();
    for _ in 1..repeats {
        let next = f();
        if next.0 < best.0 {
            best = next;
        }
    }
    best
}

/// CPU time of the whole process (all threads): immune to time slices lost to other processes.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn job_config(scenario: &Scenario, config: &PolicyConfig) -> PolicyConfig {
    let mut config = config.clone();
    config.alpha = OVERHEAD_ALPHA;
    config.delta = scenario.deltas[0];
    config.seed = policy_seed(scenario.seed, 0);
    config
}

/// Runs run 0 of `config` exactly as the simulator does, recording what the policy saw.
fn record(scenario: &Scenario, environment: &Environment, config: &PolicyConfig) -> Trace {
    let known = config.baseline_reward == BaselineReward::Known;
    let mut policy = Policy::new(config.clone()).expect("valid policy");
    let mut env = environment.instance(scenario.seed, 0).expect("a bandit environment");
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut trace = Trace { sets: Vec::new(), num_actions: 0, rounds: Vec::new(), regret: 0.0 };
    for t in 1..=scenario.horizon {
        let view = env.round(t);
        let Actions::PerAction { features, num_actions } = view.actions else {
            panic!("the Kazerouni scenario uses per-action features")
        };
        trace.num_actions = num_actions;
        let set = *index.entry(features.as_ptr() as usize).or_insert_with(|| {
            trace.sets.push(features.to_vec());
            trace.sets.len() - 1
        });
        let mu_b = view.mu[view.baseline];
        let round = Round {
            actions: view.action_set(),
            baseline: view.baseline,
            baseline_expected_reward: known.then_some(mu_b),
        };
        let decision = policy.decide(&round).expect("decide");
        let (mu_a, best, baseline) = (view.mu[decision.action], view.best, view.baseline);
        let reward = env.reward(mu_a);
        policy.observe_reward(decision.id, reward).expect("observe");
        trace.regret += best - mu_a;
        trace.rounds.push((set, baseline, mu_b, reward, decision.action));
    }
    trace
}

/// Feeds the recorded inputs to a fresh policy; returns the time and the number of decisions that differ
/// from the recording (0 when the replay is faithful).
fn replay(trace: &Trace, config: &PolicyConfig) -> (Duration, usize) {
    let known = config.baseline_reward == BaselineReward::Known;
    let mut policy = Policy::new(config.clone()).expect("valid policy");
    let mut mismatches = 0;
    let started = cpu_time();
    for &(set, baseline, mu_b, reward, action) in &trace.rounds {
        let round = Round {
            actions: safebet_engine::ActionSet::PerAction {
                features: &trace.sets[set],
                num_actions: trace.num_actions,
            },
            baseline,
            baseline_expected_reward: known.then_some(mu_b),
        };
        let decision = policy.decide(&round).expect("decide");
        mismatches += usize::from(decision.action != action);
        policy.observe_reward(decision.id, reward).expect("observe");
    }
    (cpu_time() - started, mismatches)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds = option(&args, "--seeds", 6);
    let repeats = option(&args, "--repeats", 3).max(1);
    let scenario = Scenario::from_file(std::path::Path::new(SCENARIO)).expect("the Kazerouni scenario parses");
    println!(
        "simulator bench: {} ({:?}), {} policies x {} alphas, horizon {}, {seeds} seeds, best of {repeats}, \
         load average {}",
        scenario.name,
        scenario.layout().expect("a bandit scenario"),
        scenario.policies.len(),
        scenario.alphas.len(),
        scenario.horizon,
        load_average()
    );

    println!("\nthroughput (whole scenario, all policies and alphas):");
    println!("{:>8}  {:>10}  {:>12}", "threads", "wall (s)", "rounds/s");
    let mut rates = Vec::new();
    for threads in [1usize, 2] {
        let options = RunOptions { runs: Some(seeds), threads, shard: Shard::WHOLE };
        let rounds = total_rounds(&scenario, &options);
        let (wall, _) = best_of(repeats, || {
            let started = Instant::now();
            let set = simulate(&scenario, &options, &|_| {}).expect("simulation runs");
            (started.elapsed(), set.records.len())
        });
        let rate = rounds as f64 / wall.as_secs_f64();
        rates.push(rate);
        println!("{threads:>8}  {:>10.2}  {rate:>12.0}", wall.as_secs_f64());
    }
    println!("speed-up 2 threads vs 1: {:.2}x", rates[1] / rates[0]);

    println!(
        "\nsimulator overhead (one run of {} rounds, alpha = {OVERHEAD_ALPHA}, one thread, CPU time):",
        scenario.horizon
    );
    println!("{:>16}  {:>14}  {:>16}  {:>9}", "policy", "policy (us/rd)", "simulator (us/rd)", "overhead");
    let environment = Environment::load(&scenario).expect("environment loads");
    for policy in &scenario.policies {
        let mut single = scenario.clone();
        single.policies.retain(|p| p.label == policy.label);
        single.alphas = vec![OVERHEAD_ALPHA];
        let LearnerConfig::Bandit(config) = &policy.config else {
            panic!("the Kazerouni scenario has bandit policies")
        };
        let config = job_config(&scenario, config);
        let trace = record(&scenario, &environment, &config);
        let options = RunOptions { runs: Some(1), threads: 1, shard: Shard::WHOLE };
        let (mut sim, mut alone) = (Duration::MAX, Duration::MAX);
        for _ in 0..repeats {
            let started = cpu_time();
            let set = simulate(&single, &options, &|_| {}).expect("simulation runs");
            sim = sim.min(cpu_time() - started);
            assert_eq!(set.records[0].final_regret, trace.regret, "the recorded run must be the simulator's run 0");
            let (replayed, mismatches) = replay(&trace, &config);
            assert_eq!(mismatches, 0, "the replay must make the recorded decisions");
            alone = alone.min(replayed);
        }
        let per_round = |d: Duration| d.as_secs_f64() * 1e6 / scenario.horizon as f64;
        let (p, s) = (per_round(alone), per_round(sim));
        println!("{:>16}  {p:>14.3}  {s:>16.3}  {:>8.1}%", policy.label, 100.0 * (s - p) / p);
    }
}
