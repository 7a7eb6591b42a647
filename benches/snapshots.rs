//! What a snapshot of an experiment costs: its size, the time to clone it (the service does so under the
//! experiment's lock) and to encode and decode it, as MessagePack (what the store keeps) and as JSON (what it
//! kept before, and what exports are), for a policy holding `--pending` decisions that wait for their rewards
//! (CLUCB, shared layout, d = 32, K = 16; each pending decision keeps its chosen action's 32 features).
//!
//! `cargo bench --bench snapshots -- [--pending N]` (default 40,000: a 2 s reward timeout at 20,000
//! decisions/s). Prints bytes, the best of five runs of each direction, and of a clone of the state.

use std::time::{Duration, Instant};

use safebet_engine::{ActionSet, Algorithm, Layout, Policy, PolicyConfig, Round};
use safebet_service::{decode_state, encode_state};

const DIM: usize = 32;
const ACTIONS: usize = 16;

/// The best of five runs of `work`.
fn best_of_five<T>(mut work: impl FnMut() -> T) -> (T, Duration) {
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..5 {
        let start = Instant::now();
        let value = work();
        best = best.min(start.elapsed());
        result = Some(value);
    }
    (result.expect("five runs"), best)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pending = args
        .iter()
        .position(|a| a == "--pending")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(40_000);
    let mut config = PolicyConfig::new(Algorithm::Clucb, Layout::Shared { dim: DIM });
    config.seed = 1;
    let mut policy = Policy::new(config).expect("a valid configuration");
    // Deterministic features of norm <= 1, different every round.
    let mut x = 0.1f64;
    let mut features = vec![0.0; DIM * ACTIONS];
    for round in 0..pending {
        for (i, f) in features.iter_mut().enumerate() {
            x = (x * 3.7 + (round + i) as f64 * 1e-3).fract();
            *f = x / (DIM as f64).sqrt();
        }
        let actions = ActionSet::PerAction { features: &features, num_actions: ACTIONS };
        policy.decide(&Round { actions, baseline: 0, baseline_expected_reward: None }).expect("a decision");
    }
    println!("snapshot of a CLUCB policy, d = {DIM}, K = {ACTIONS}, {pending} pending decisions (best of 5)");
    // The service clones the state under the experiment's lock (its decisions wait), then encodes the copy.
    let (_, clone) = best_of_five(|| policy.clone());
    println!("  clone (under the lock)  {:>9.3} ms", clone.as_secs_f64() * 1e3);
    let (packed, encode) = best_of_five(|| encode_state(&policy));
    let (_, decode) = best_of_five(|| decode_state::<Policy>(&packed).expect("decodes"));
    println!(
        "  MessagePack (stored)   {:>10.1} KB  encode {:>9.3} ms  decode {:>9.3} ms",
        packed.len() as f64 / 1e3,
        encode.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3
    );
    let (json, encode) = best_of_five(|| serde_json::to_vec(&policy).expect("encodes"));
    let (_, decode) = best_of_five(|| decode_state::<Policy>(&json).expect("decodes"));
    println!(
        "  JSON (before; exports) {:>10.1} KB  encode {:>9.3} ms  decode {:>9.3} ms",
        json.len() as f64 / 1e3,
        encode.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3
    );
}
