//! The durable decision log alone, without gRPC: what one logged decision costs the store.
//!
//! Commits groups of decision records (CLUCB shared layout, d = 32, K = 16: 512 doubles of features per
//! decision, as the gRPC load generator logs them; each record is framed into the journal with its features,
//! and its row goes to SQLite)
//! back to back into a `SqliteStore` in a temporary directory,
//! as the service's writer thread does under saturating load, for `--seconds` (default 10). Prints records/s,
//! the process's CPU time per record (the writer's inserts and commits plus the journal and checkpoint
//! threads), commit latency p50/p99/max and how long after a commit's start its records were durable (when
//! the service answers their callers), the sizes of the database, WAL and journal, and the bytes sent
//! to storage per record.
//!
//! `cargo bench --bench decision_log -- [--seconds N] [--group G] [--data-dir DIR]
//! [--wal-bound-frames F] [--sync-interval-ms MS] [--f32]` (MS > 0: records acknowledged once written, synced
//! every MS ms, as `safebet serve --sync-interval-ms`; `--f32`: features logged as floats, as for an experiment
//! with `feature_precision = "f32"`). The group size (default
//! 50) is about what 64 concurrent requests gather per commit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use safebet_engine::{Algorithm, Fallback, FeatureLayout, Layout, PolicyConfig};
use safebet_service::{
    DecisionRecord, ExperimentDef, FeaturePrecision, LogEntry, LogRecord, SqliteStore, Store, Write,
};

const DIM: usize = 32;
const ACTIONS: usize = 16;

/// CPU seconds (user + system) of this process so far; 100 ticks/s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes this process has written to storage so far (`write_bytes` of /proc/self/io), if the kernel says.
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok())
}

fn decision(sequence: u64, features: &[f64], features_f32: bool) -> Write {
    Write::Log(LogRecord {
        experiment_id: "load".into(),
        sequence,
        unix_ms: 1_764_000_000_000 + sequence as i64,
        entry: LogEntry::Decision(Box::new(DecisionRecord {
            decision_id: sequence,
            event_id: format!("#{sequence}"),
            client_event_id: false,
            num_actions: ACTIONS,
            features: features.to_vec(),
            features_f32,
            layout: Some(FeatureLayout::Shared),
            round_action_ids: Vec::new(),
            baseline: (sequence % ACTIONS as u64) as usize,
            baseline_expected_reward: None,
            paused: false,
            action: 3,
            action_id: String::new(),
            proposed_action: 3,
            propensity: 1.0,
            propensity_estimated: false,
            fallback: Fallback::None,
            played_baseline: false,
            model_version: sequence,
        })),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds: f64 = option("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let group: usize = option("--group").and_then(|s| s.parse().ok()).unwrap_or(50).max(1);
    let data_dir = PathBuf::from(option("--data-dir").unwrap_or_else(|| ".".into()));
    let dir = tempfile::tempdir_in(&data_dir).expect("temporary directory");
    let wal_bound = option("--wal-bound-frames")
        .and_then(|s| s.parse().ok())
        .unwrap_or(safebet_service::DEFAULT_WAL_RESTART_FRAMES);
    let mut store = SqliteStore::open_with_wal_bound(dir.path(), wal_bound).expect("store");
    let features_f32 = std::env::args().any(|a| a == "--f32");
    let sync_interval_ms = option("--sync-interval-ms").and_then(|s| s.parse::<u64>().ok()).filter(|&ms| ms > 0);
    if let Some(ms) = sync_interval_ms {
        store = store.with_sync_interval(Duration::from_millis(ms));
    }
    store
        .save_definition(&ExperimentDef {
            id: "load".into(),
            policy: PolicyConfig::new(Algorithm::Clucb, Layout::Shared { dim: DIM }),
            reward_timeout_ms: 2_000,
            action_ids: vec![],
            paused: false,
            created_unix_ms: 0,
            feature_precision: if features_f32 { FeaturePrecision::F32 } else { FeaturePrecision::F64 },
        })
        .expect("definition");

    // Features of norm <= 1 from a fixed stream, so every run writes the same bytes.
    let mut state = 42u64;
    let pool: Vec<Vec<f64>> = (0..64)
        .map(|_| {
            (0..DIM * ACTIONS)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let value = (state >> 11) as f64 / (1u64 << 53) as f64 / (DIM as f64).sqrt();
                    // An f32 experiment's features arrive rounded (the service rounds them before logging).
                    if features_f32 { f64::from(value as f32) } else { value }
                })
                .collect()
        })
        .collect();

    println!(
        "decision log, SQLite, decision records of {} {}, groups of {group}, {seconds} s, {}, in {}",
        DIM * ACTIONS,
        if features_f32 { "floats" } else { "doubles" },
        sync_interval_ms.map_or("synced before acknowledged".into(), |ms| format!("synced every {ms} ms")),
        dir.path().display()
    );
    let (cpu_start, io_start) = (cpu_seconds(), bytes_written());
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    // When the records were durable (callers answered), measured from the commit's start.
    let mut durable_after: Vec<Duration> = Vec::new();
    let mut sequence = 0u64;
    let mut writes: Vec<Write> = Vec::with_capacity(group);
    while started.elapsed().as_secs_f64() < seconds {
        // Building the records is part of what the service does per decision too.
        for _ in 0..group {
            sequence += 1;
            writes.push(decision(sequence, &pool[sequence as usize % pool.len()], features_f32));
        }
        let commit_started = Instant::now();
        let durable = Arc::new(Mutex::new(None));
        let mark = durable.clone();
        let on_durable = Box::new(move || *mark.lock().unwrap() = Some(commit_started.elapsed()));
        store.commit_answering(&writes, on_durable).expect("commit");
        latencies.push(commit_started.elapsed());
        durable_after.push(durable.lock().unwrap().expect("a committed group was durable"));
        writes.clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    latencies.sort_unstable();
    durable_after.sort_unstable();
    let quantile = |sorted: &[Duration], q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    let pick = |q: f64| quantile(&latencies, q);
    let durable_pick = |q: f64| quantile(&durable_after, q);
    let size = |suffix: &str| {
        std::fs::metadata(dir.path().join(format!("{}{suffix}", safebet_service::DATABASE_FILE)))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    println!(
        "{:>9.0} records/s  {:.1} CPU us per record ({:.2} cores busy)  commit p50 {:.2} ms  p99 {:.2} ms  \
         max {:.2} ms  ({} commits)",
        sequence as f64 / elapsed,
        cpu * 1e6 / sequence as f64,
        cpu / elapsed,
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        latencies.len(),
    );
    println!(
        "records durable (callers answered) after p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        durable_pick(0.5).as_secs_f64() * 1e3,
        durable_pick(0.99).as_secs_f64() * 1e3,
        durable_after.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let slow: Vec<String> = latencies
        .iter()
        .rev()
        .take_while(|l| l.as_millis() >= 50)
        .map(|l| format!("{:.0}", l.as_secs_f64() * 1e3))
        .collect();
    println!("commits held 50 ms or more: {} ({} ms)", slow.len(), slow.join(", "));
    let written = bytes_written().zip(io_start).map(|(end, start)| end.saturating_sub(start));
    println!(
        "database {:.1} MB, WAL {:.1} MB, journal {:.1} MB at the end; {} bytes sent to storage per record",
        size("") as f64 / 1e6,
        size("-wal") as f64 / 1e6,
        store.journal_bytes_on_disk().unwrap_or(0) as f64 / 1e6,
        written.map_or("unknown".into(), |w| format!("{:.0}", w as f64 / sequence as f64)),
    );
}
