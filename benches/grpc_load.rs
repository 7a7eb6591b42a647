//! Load generator for the gRPC decision service: the real server and a real tonic client on loopback, each
//! on its own 2-thread tokio runtime (so the two share this machine's cores as separate processes would).
//!
//! Scenarios, CLUCB, shared layout, d = 32, K = 16:
//! 1. unary `Decide`, closed loop, 64 requests in flight;
//! 2. unary `Decide`, open loop at a fixed 20,000 decisions/s, at most 64 in flight (latency at the target
//!    rate; by Little's law a closed loop at 64 in flight can only reach p99 < 2 ms above ~32k/s);
//! 3. `DecideBatch` of 100, closed loop, 8 batches in flight.
//!
//! `cargo bench --bench grpc_load` (add `-- --seconds 10` for longer runs, `--only unary|open|batch` for one
//! scenario). Prints decisions/s, latency p50/p99/p99.9 and the CPU time (client + server) per decision for
//! each scenario. Features travel as little-endian doubles (`features_le`); `--encoding packed` sends them as
//! `repeated double` instead, `--encoding f32` as little-endian floats (`features_f32_le`). By default every decision goes through the durable decision log (group commit,
//! fsync) in a temporary directory under `--data-dir DIR` (default `.`); `--store memory` logs nothing, to
//! measure what durability costs; `--sync-interval-ms MS` acknowledges log records once written and syncs
//! them every MS ms (`safebet serve --sync-interval-ms`). `--timeline FILE` writes the open loop's (or the batch loop's) every
//! request (due time, latency; CSV) to see when the slow ones happened; `--server-threads N` /
//! `--client-threads N` (default 2 each); `--snapshot-interval-s S` snapshots every S s instead of every 30 s
//! (each snapshot encodes the experiment's pending decisions); `--f32` creates the experiment with `feature_precision` F32 (features
//! rounded on arrival, logged as floats); `--batches-in-flight N` (default 8) for the batch loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use safebet_proto as pb;
use safebet_proto::decision_service_client::DecisionServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;
use safebet_service::{MemoryStore, ServeOptions, SqliteStore, Store};
use tonic::transport::Channel;

/// The allocator the `safebet` binary uses, so the server measured here is the one that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIM: usize = 32;
const ACTIONS: usize = 16;
const IN_FLIGHT: usize = 64;
const BATCH: usize = 100;
/// Batches in flight by default (`--batches-in-flight N`).
const BATCHES_IN_FLIGHT: usize = 8;
const OPEN_LOOP_RATE: f64 = 20_000.0;
const CONNECTIONS: usize = 4;

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// SplitMix64, so the requests are the same on every run.
fn stream(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How the client sends features: `repeated double`, little-endian doubles or little-endian floats.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Packed,
    Bytes,
    Floats,
}

/// A pool of distinct requests; features of norm <= 1, encoded as `encoding` says.
fn requests(n: usize, encoding: Encoding) -> Arc<Vec<pb::DecideRequest>> {
    let mut uniform = stream(42);
    let scale = 1.0 / (DIM as f64).sqrt();
    Arc::new(
        (0..n)
            .map(|i| pb::DecideRequest {
                experiment_id: "load".into(),
                actions: Some(pb::decide_request::Actions::PerAction({
                    let features: Vec<f64> = (0..DIM * ACTIONS).map(|_| uniform() * scale).collect();
                    let mut actions = pb::PerActionFeatures { num_actions: ACTIONS as u32, ..Default::default() };
                    match encoding {
                        Encoding::Packed => actions.features = features,
                        Encoding::Bytes => {
                            actions.features_le = features.iter().flat_map(|v| v.to_le_bytes()).collect()
                        }
                        Encoding::Floats => {
                            actions.features_f32_le = features.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect()
                        }
                    }
                    actions
                })),
                baseline: Some(pb::decide_request::Baseline::BaselineIndex((i % ACTIONS) as u32)),
                ..Default::default()
            })
            .collect(),
    )
}

/// CPU seconds (user + system) this process has used so far, to show how much of the machine a scenario took.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/self/stat (utime, stime), counted after the command name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used between two instants (sleeping until each).
async fn cpu_between(from: Instant, until: Instant) -> f64 {
    tokio::time::sleep_until(from.into()).await;
    let start = cpu_seconds();
    tokio::time::sleep_until(until.into()).await;
    cpu_seconds() - start
}

struct Measured {
    decisions: u64,
    elapsed: Duration,
    /// Latency of every call, nanoseconds.
    latencies: Vec<u64>,
    /// CPU seconds the process used during the scenario.
    cpu: f64,
}

impl Measured {
    fn print(mut self, scenario: &str, unit: &str) {
        self.latencies.sort_unstable();
        let pick = |q: f64| {
            let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len()) - 1;
            self.latencies[i] as f64 / 1e6
        };
        println!(
            "{scenario:<52} {:>9.0} decisions/s  {unit} latency p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  \
             ({} calls, {:.2} cores busy, {:.1} CPU us per decision)",
            self.decisions as f64 / self.elapsed.as_secs_f64(),
            pick(0.50),
            pick(0.99),
            pick(0.999),
            self.latencies.len(),
            self.cpu / self.elapsed.as_secs_f64(),
            self.cpu * 1e6 / self.decisions.max(1) as f64,
        );
    }
}

async fn unary_closed_loop(
    channels: &[Channel],
    pool: Arc<Vec<pb::DecideRequest>>,
    run: Duration,
    warmup: Duration,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + run;
    let mut tasks = Vec::new();
    for task in 0..IN_FLIGHT {
        let mut client = DecisionServiceClient::new(channels[task % channels.len()].clone());
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(200_000);
            let mut i = task;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                client.decide(pool[i % pool.len()].clone()).await.expect("decide");
                if sent >= measure_from {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
                i += IN_FLIGHT;
            }
            latencies
        }));
    }
    let cpu = cpu_between(measure_from, until).await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Measured { decisions: latencies.len() as u64, elapsed: run, latencies, cpu }
}

/// Issues requests on a fixed schedule: request n is due at `n / rate`. 64 worker tasks (the in-flight cap)
/// take the next due request in turn; a worker ahead of the schedule sleeps until the request is due and
/// times it from when it was sent, a worker behind it (all 64 were busy) sends at once and times it from when
/// it was due, so requests the server held back are charged for their wait (no coordinated omission).
/// tokio's timers tick in milliseconds, so requests leave in bursts of up to one millisecond's worth (20):
/// a harsher arrival pattern than an even one, and no pacing thread or task per request eating the cores the
/// server needs.
///
/// The first `warmup` runs at the same rate unmeasured, as the closed loops' first second does: the server's
/// tables of pending decisions grow under this load (the generator reports no rewards), and their first
/// doublings are start-up, not steady state. With `timeline`, writes every measured request's due time and
/// latency (CSV, milliseconds) there, to see when the slow ones happened.
async fn unary_open_loop(
    channels: &[Channel],
    pool: Arc<Vec<pb::DecideRequest>>,
    run: Duration,
    warmup: Duration,
    timeline: Option<&str>,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let cpu_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_seconds()
    });
    let warm = (OPEN_LOOP_RATE * warmup.as_secs_f64()) as u64;
    let total = warm + (OPEN_LOOP_RATE * run.as_secs_f64()) as u64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..IN_FLIGHT {
        let mut client = DecisionServiceClient::new(channels[task % channels.len()].clone());
        let (pool, next) = (pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity((total as usize) / IN_FLIGHT + 1);
            let mut late = 0u64;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(n as f64 / OPEN_LOOP_RATE);
                let timed_from = if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    late += u64::from(n >= warm);
                    due
                };
                client.decide(pool[n as usize % pool.len()].clone()).await.expect("decide");
                if n >= warm {
                    latencies.push((n - warm, timed_from.elapsed().as_nanos() as u64));
                }
            }
            (latencies, late)
        }));
    }
    let mut timed = Vec::with_capacity(total as usize);
    let mut late = 0;
    for task in tasks {
        let (mut l, n) = task.await.unwrap();
        timed.append(&mut l);
        late += n;
    }
    if let Some(path) = timeline {
        timed.sort_unstable();
        let mut csv = String::from("due_ms,latency_ms\n");
        for (n, latency) in &timed {
            csv.push_str(&format!("{:.3},{:.3}\n", *n as f64 * 1e3 / OPEN_LOOP_RATE, *latency as f64 / 1e6));
        }
        std::fs::write(path, csv).expect("writing the timeline");
    }
    let latencies: Vec<u64> = timed.into_iter().map(|(_, latency)| latency).collect();
    let elapsed = measure_from.elapsed();
    println!("  (open loop: {late} requests were sent after they were due, timed from when they were due)");
    let cpu = cpu_seconds() - cpu_start.await.unwrap();
    Measured { decisions: latencies.len() as u64, elapsed, latencies, cpu }
}

/// With `timeline`, writes every measured batch's send time and latency there (CSV, milliseconds since the
/// measurement began).
async fn batch_closed_loop(
    channels: &[Channel],
    pool: Arc<Vec<pb::DecideRequest>>,
    run: Duration,
    warmup: Duration,
    timeline: Option<&str>,
    in_flight: usize,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + run;
    let mut tasks = Vec::new();
    for task in 0..in_flight {
        let mut client = DecisionServiceClient::new(channels[task % channels.len()].clone());
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = task * BATCH;
            loop {
                let requests: Vec<_> = (0..BATCH).map(|j| pool[(i + j) % pool.len()].clone()).collect();
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let answer = client.decide_batch(pb::DecideBatchRequest { requests }).await.expect("batch");
                assert_eq!(answer.get_ref().results.len(), BATCH);
                if sent >= measure_from {
                    latencies.push(((sent - measure_from).as_nanos() as u64, sent.elapsed().as_nanos() as u64));
                }
                i += BATCH * in_flight;
            }
            latencies
        }));
    }
    let cpu = cpu_between(measure_from, until).await;
    let mut timed = Vec::new();
    for task in tasks {
        timed.extend(task.await.unwrap());
    }
    if let Some(path) = timeline {
        timed.sort_unstable();
        let mut csv = String::from("sent_ms,latency_ms\n");
        for (sent, latency) in &timed {
            csv.push_str(&format!("{:.3},{:.3}\n", *sent as f64 / 1e6, *latency as f64 / 1e6));
        }
        std::fs::write(path, csv).expect("writing the timeline");
    }
    let latencies: Vec<u64> = timed.into_iter().map(|(_, latency)| latency).collect();
    Measured { decisions: latencies.len() as u64 * BATCH as u64, elapsed: run, latencies, cpu }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The value after `name`, if given.
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str);
    let seconds = option("--seconds").and_then(|s| s.parse::<f64>().ok()).unwrap_or(5.0);
    let only = option("--only").map(str::to_owned);
    let timeline = option("--timeline").map(str::to_owned);
    let wanted = move |name: &str| only.as_deref().is_none_or(|o| o == name);
    let run = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs(1);

    // The store: the durable SQLite log (default) in a temporary directory under --data-dir (default: the
    // working directory, so the disk measured is the project's, not a tmpfs), or nothing at all.
    let base = option("--data-dir").map(str::to_owned);
    let data = tempfile::tempdir_in(base.as_deref().unwrap_or(".")).expect("temporary data directory");
    let memory = option("--store").is_some_and(|s| s == "memory");
    let threads = |flag: &str| option(flag).and_then(|s| s.parse().ok()).unwrap_or(2);
    let (server_threads, client_threads) = (threads("--server-threads"), threads("--client-threads"));
    // How the client sends features: `bytes` (features_le, the default), `packed` (repeated double) or `f32`
    // (features_f32_le).
    let encoding = match option("--encoding") {
        Some("packed") => Encoding::Packed,
        Some("f32") => Encoding::Floats,
        _ => Encoding::Bytes,
    };
    // `--snapshot-interval-s S`: snapshot every S seconds instead of the service's 30 (to see what one costs).
    let snapshot_interval_s = option("--snapshot-interval-s").and_then(|s| s.parse::<f64>().ok()).filter(|&s| s > 0.0);
    // `--f32`: the experiment keeps its features as f32 (feature_precision F32: half the log).
    let features_f32 = args.iter().any(|a| a == "--f32");
    let batches_in_flight = option("--batches-in-flight")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(BATCHES_IN_FLIGHT);
    let server_runtime = runtime("server", server_threads);
    let listener = server_runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
    let address = listener.local_addr().unwrap();
    let sync_interval_ms = option("--sync-interval-ms").and_then(|s| s.parse::<u64>().ok()).filter(|&ms| ms > 0);
    let (store, store_name): (Arc<dyn Store>, String) = match (memory, sync_interval_ms) {
        (true, _) => (Arc::new(MemoryStore), "memory (nothing logged)".into()),
        (false, None) => (
            Arc::new(SqliteStore::open(data.path()).expect("store")),
            "SQLite decision log, fsync per group commit".into(),
        ),
        (false, Some(ms)) => (
            Arc::new(SqliteStore::open(data.path()).expect("store").with_sync_interval(Duration::from_millis(ms))),
            format!("SQLite decision log, acknowledged once written, fsync every {ms} ms"),
        ),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(safebet_service::run(
        listener,
        async move {
            let _ = stopped.await;
        },
        {
            let mut options = ServeOptions::new(store);
            if let Some(seconds) = snapshot_interval_s {
                options.snapshot_interval = Duration::from_secs_f64(seconds);
            }
            options
        },
    ));

    let client_runtime = runtime("client", client_threads);
    client_runtime.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            let endpoint = Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(16 << 20));
            let channel = loop {
                match endpoint.connect().await {
                    Ok(channel) => break channel,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            channels.push(channel);
        }
        let mut admin = ExperimentAdminClient::new(channels[0].clone());
        admin
            .create_experiment(pb::CreateExperimentRequest {
                id: "load".into(),
                spec: Some(pb::ExperimentSpec {
                    algorithm: pb::Algorithm::Clucb as i32,
                    layout: Some(pb::Layout {
                        kind: Some(pb::layout::Kind::Shared(pb::SharedLayout { dim: DIM as u32 })),
                    }),
                    // Decisions nobody rewards leave the ledger after 2 s, as in production.
                    reward_timeout_ms: 2000,
                    feature_precision: if features_f32 { pb::FeaturePrecision::F32 } else { pb::FeaturePrecision::F64 }
                        as i32,
                    ..Default::default()
                }),
            })
            .await
            .expect("create experiment");
        let pool = requests(1024, encoding);
        // Warm the learner up with rewarded rounds, so the measured decisions run the full safety check.
        let mut client = DecisionServiceClient::new(channels[0].clone());
        let mut uniform = stream(7);
        for i in 0..2000 {
            let answer = client.decide(pool[i % pool.len()].clone()).await.unwrap().into_inner();
            client
                .reward(pb::RewardRequest {
                    experiment_id: "load".into(),
                    event_id: answer.event_id,
                    value: Some(0.3 + 0.4 * uniform()),
                })
                .await
                .unwrap();
        }
        println!(
            "gRPC load, loopback, CLUCB shared d = {DIM}, K = {ACTIONS}, {CONNECTIONS} HTTP/2 connections, \
             server on {server_threads} and client on {client_threads} worker threads, {seconds} s per scenario, \
             features as {}{}, store: {}",
            match encoding {
                Encoding::Packed => "packed doubles",
                Encoding::Bytes => "little-endian doubles",
                Encoding::Floats => "little-endian floats",
            },
            if features_f32 { " (experiment keeps f32)" } else { "" },
            store_name
        );
        // Between scenarios the previous one's unrewarded decisions time out (2 s), so each starts alike.
        let settle = Duration::from_millis(2500);
        if wanted("unary") {
            unary_closed_loop(&channels, pool.clone(), run, warmup)
                .await
                .print(&format!("Decide, closed loop, {IN_FLIGHT} in flight"), "call");
            tokio::time::sleep(settle).await;
        }
        if wanted("open") {
            unary_open_loop(&channels, pool.clone(), run, warmup, timeline.as_deref())
                .await
                .print(&format!("Decide, open loop at {OPEN_LOOP_RATE:.0}/s, <= {IN_FLIGHT} in flight"), "call");
            tokio::time::sleep(settle).await;
        }
        if wanted("batch") {
            batch_closed_loop(&channels, pool.clone(), run, warmup, timeline.as_deref(), batches_in_flight)
                .await
                .print(&format!("DecideBatch of {BATCH}, closed loop, {batches_in_flight} in flight"), "batch");
        }
    });
    let _ = stop.send(());
    server_runtime.block_on(server).expect("server task").expect("server");
}
