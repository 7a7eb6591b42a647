//! Acknowledged means durable: the decision log survives `kill -9` of the real binary, a failing disk turns
//! into UNAVAILABLE without memory running ahead of the log, a decision answered from the journal survives
//! the commit that then failed, and an exported experiment continues elsewhere exactly as it would have at
//! home.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use safebet_proto as pb;
use safebet_proto::decide_request::Actions;
use safebet_proto::decision_service_client::DecisionServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;
use safebet_service::{
    Experiment, ExperimentDef, Limits, LogEntry, LogRecord, OnDurable, Snapshot, SqliteStore, Store, StoreError,
    StoredExperiment, Write,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

/// A server process, killed when dropped (also when a failing assertion unwinds the test).
pub(crate) struct ServerProcess(Child);

impl ServerProcess {
    /// SIGKILL: no shutdown, no flush.
    pub(crate) fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `safebet serve` on an ephemeral port; returns the process and its address once it serves.
pub(crate) fn spawn_server(
    data: &Path,
    experiments: &Path,
) -> (ServerProcess, String, std::thread::JoinHandle<Vec<String>>) {
    spawn_server_with(data, experiments, &[])
}

/// [`spawn_server`] with more arguments for `safebet serve`.
pub(crate) fn spawn_server_with(
    data: &Path,
    experiments: &Path,
    more: &[&str],
) -> (ServerProcess, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_safebet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--snapshot-interval-secs", "1", "--data-dir"])
        .arg(data)
        .arg("--experiments")
        .arg(experiments)
        .args(more)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server exited before serving").unwrap();
        if line.contains("safebet serving")
            && let Some(start) = line.find("127.0.0.1:")
        {
            let port: String = line[start + 10..].chars().take_while(char::is_ascii_digit).collect();
            break format!("http://127.0.0.1:{port}");
        }
    };
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (ServerProcess(child), address, drain)
}

pub(crate) async fn connect(address: &str) -> Channel {
    Channel::from_shared(address.to_owned()).unwrap().connect().await.unwrap()
}

/// What the clients were told: decisions (event id -> action) and rewards (event ids).
#[derive(Default)]
struct Acknowledged {
    decisions: HashMap<String, u32>,
    rewards: HashSet<String>,
}

/// Decide-and-reward traffic on `experiment` until the server dies; every acknowledgement is recorded.
async fn drive(address: String, experiment: &'static str, worker: u64, round: u64, acked: Arc<Mutex<Acknowledged>>) {
    let channel = match Channel::from_shared(address).unwrap().connect().await {
        Ok(channel) => channel,
        Err(_) => return,
    };
    let mut client = DecisionServiceClient::new(channel);
    let mut stream = Stream::new(worker * 1000 + round);
    for n in 0.. {
        let event = format!("{experiment}-r{round}-w{worker}-{n}");
        let features = (0..4 * 4).map(|_| stream.uniform() - 0.5).collect();
        let mut request = per_action(experiment, features, 4, 0);
        request.client_event_id = event.clone();
        let Ok(answer) = client.decide(request).await else { return };
        let action = answer.into_inner().action_index;
        acked.lock().unwrap().decisions.insert(event.clone(), action);
        if stream.uniform() < 0.7 {
            let value = 0.2 + 0.2 * f64::from(action) * stream.uniform();
            match client.reward(reward(experiment, &event, value)).await {
                Ok(_) => {
                    acked.lock().unwrap().rewards.insert(event);
                }
                // The server was killed mid-call: the connection is gone, however the client words it.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ) =>
                {
                    return;
                }
                Err(status) => panic!("reward {event}: {status:?}"),
            }
        }
    }
}

/// The whole log of `experiment`, from the store.
fn full_log(store: &SqliteStore, experiment: &str) -> Vec<LogRecord> {
    let mut records = Vec::new();
    store
        .read_log(Some(experiment), &mut |record| {
            records.push(record);
            Ok::<(), StoreError>(())
        })
        .unwrap();
    records
}

/// The experiment rebuilt from nothing but its definition and the whole log.
fn fresh_replay(store: &SqliteStore, experiment: &str) -> Experiment {
    let definition: ExperimentDef = store.load_experiment(experiment).unwrap().unwrap().definition;
    let stored = StoredExperiment { definition, snapshot: None, log: full_log(store, experiment) };
    Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap()
}

fn policy_of_state(state: &[u8]) -> serde_json::Value {
    let value: serde_json::Value = safebet_service::decode_state(state).unwrap();
    value["policy"].clone()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    kill_9_restarts(20, &[]).await;
}

/// With a sync interval, records are acknowledged before they are synced: the process's crash still loses
/// none of them (the kernel holds what was written), even though the kill lands between syncs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_sync_interval_kill_9_still_loses_nothing_acknowledged() {
    kill_9_restarts(10, &["--sync-interval-ms", "200"]).await;
}

/// Drives concurrent decisions and rewards against `safebet serve` (with `serve_args`), kills it at random
/// moments `restarts` times, and checks after each restart that everything acknowledged is in the log exactly
/// once and that the restarted server's state is a fresh replay of the log.
#[cfg(unix)]
async fn kill_9_restarts(restarts: u64, serve_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("experiments.toml");
    std::fs::write(
        &experiments,
        "[[experiment]]\nid = \"clucb\"\npolicy = { algorithm = \"clucb2\", layout = { kind = \"shared\", dim = 4 } }\n\
         [[experiment]]\nid = \"lints\"\npolicy = { algorithm = \"lints\", layout = { kind = \"shared\", dim = 4 } }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut moments = Stream::new(2026);
    let mut snapshots_seen = 0;
    for round in 0..restarts {
        let (mut child, address, drain) = spawn_server_with(&data, &experiments, serve_args);
        let mut workers = Vec::new();
        for worker in 0..4u64 {
            let experiment = if worker % 2 == 0 { "clucb" } else { "lints" };
            workers.push(tokio::spawn(drive(address.clone(), experiment, worker, round, acked.clone())));
        }
        // Every few rounds, live long enough for a periodic snapshot, so recovery starts from one.
        let lifetime = if round % 5 == 4 { 1200 } else { 60 + moments.next_u64() % 400 };
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        child.kill_9();
        for worker in workers {
            worker.await.unwrap();
        }
        drop(drain);

        // What `safebet log` (read-only, no replay) shows right after the crash is what a restart loads.
        let seen_after_crash = {
            let reader = SqliteStore::open_read_only(&data).unwrap();
            ["clucb", "lints"].map(|experiment| full_log(&reader, experiment))
        };
        // Everything acknowledged is in the log, exactly once. Opened for writing once (which replays the
        // journal, as a restart would), then read-only: the restarted server below needs the store's lock.
        drop(SqliteStore::open(&data).unwrap());
        let store = SqliteStore::open_read_only(&data).unwrap();
        for (experiment, seen) in ["clucb", "lints"].iter().zip(&seen_after_crash) {
            assert!(full_log(&store, experiment) == *seen, "round {round}: {experiment}'s log changed in the replay");
        }
        {
            let seen = acked.lock().unwrap();
            let mut decisions: HashMap<String, (u64, usize)> = HashMap::new();
            let mut rewards: HashMap<(String, u64), usize> = HashMap::new();
            for experiment in ["clucb", "lints"] {
                let log = full_log(&store, experiment);
                for (i, record) in log.iter().enumerate() {
                    assert_eq!(record.sequence, i as u64 + 1, "{experiment}: the log has a gap");
                    match &record.entry {
                        LogEntry::Decision(d) => {
                            decisions.insert(d.event_id.clone(), (d.decision_id, d.action));
                        }
                        LogEntry::Reward { decision_id, .. } => {
                            *rewards.entry((experiment.to_owned(), *decision_id)).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                let stored = store.load_experiment(experiment).unwrap().unwrap();
                if stored.snapshot.is_some() {
                    snapshots_seen += 1;
                }
            }
            for (event, action) in &seen.decisions {
                let (_, logged) =
                    decisions.get(event).unwrap_or_else(|| panic!("round {round}: acknowledged {event} lost"));
                assert_eq!(*logged as u32, *action, "{event}: the log holds another action than the one answered");
            }
            for event in &seen.rewards {
                let experiment = event.split('-').next().unwrap().to_owned();
                let (decision_id, _) = decisions[event];
                assert_eq!(rewards.get(&(experiment, decision_id)), Some(&1), "reward of {event} lost");
            }
            assert!(rewards.values().all(|&n| n == 1), "a reward was applied twice");
        }

        // The restarted server's state is the log's, bit for bit.
        let (mut child, address, drain) = spawn_server_with(&data, &experiments, serve_args);
        let mut admin = ExperimentAdminClient::new(connect(&address).await).max_decoding_message_size(256 << 20);
        for experiment in ["clucb", "lints"] {
            let replayed = fresh_replay(&store, experiment);
            let exported =
                admin.export_model(pb::ExportModelRequest { id: experiment.into() }).await.unwrap().into_inner();
            let (snapshot, _) = replayed.snapshot(true).unwrap();
            assert_eq!(exported.sequence, snapshot.sequence, "{experiment}: position after restart");
            let served: serde_json::Value = serde_json::from_slice(&exported.model).unwrap();
            assert_eq!(served["state"]["policy"], policy_of_state(&snapshot.state), "{experiment}: model and ledger");
            let served_report = report(&mut admin, experiment).await;
            let replayed_report = replayed.report();
            assert_eq!(served_report.decisions, replayed_report.stats.decisions);
            assert_eq!(served_report.rewards_pending, replayed_report.stats.pending);
            assert_eq!(served_report.cumulative_reward.to_bits(), replayed_report.stats.reward_sum.to_bits());
        }
        // Rewards of acknowledged-but-unrewarded decisions still join; rewarded ones are refused.
        if round == restarts - 1 {
            let mut client = DecisionServiceClient::new(connect(&address).await);
            let (pending, done) = {
                let acked = acked.lock().unwrap();
                let pending = acked.decisions.keys().find(|e| !acked.rewards.contains(*e)).unwrap().clone();
                (pending, acked.rewards.iter().next().unwrap().clone())
            };
            let experiment = |e: &str| e.split('-').next().unwrap().to_owned();
            client.reward(reward(&experiment(&pending), &pending, 0.5)).await.unwrap();
            let again = client.reward(reward(&experiment(&done), &done, 0.5)).await.unwrap_err();
            assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
        }
        child.kill_9();
        drop(drain);
    }
    let acked = acked.lock().unwrap();
    eprintln!(
        "{restarts} kill -9 restarts ({serve_args:?}): {} decisions and {} rewards acknowledged, all in the log; {snapshots_seen} \
         recoveries started from a snapshot",
        acked.decisions.len(),
        acked.rewards.len()
    );
    assert!(acked.decisions.len() > 500, "the load ran: {}", acked.decisions.len());
    assert!(snapshots_seen > 0, "some recoveries should start from a snapshot");
}

/// A store whose commits fail while `broken` is set: a full disk, a read-only directory.
struct FlakyStore {
    inner: SqliteStore,
    broken: Arc<AtomicBool>,
}

impl FlakyStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            let error = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
            return Err(StoreError::DataDir { path: "test".into(), source: error });
        }
        Ok(())
    }
}

impl Store for FlakyStore {
    fn save_definition(&self, definition: &ExperimentDef) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_definition(definition)
    }
    fn delete_experiment(&self, id: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_experiment(id)
    }
    fn save_snapshots(&self, snapshots: &[Snapshot]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_snapshots(snapshots)
    }
    fn load(&self) -> Result<Vec<StoredExperiment>, StoreError> {
        self.inner.load()
    }
    fn load_experiment(&self, id: &str) -> Result<Option<StoredExperiment>, StoreError> {
        self.inner.load_experiment(id)
    }
    fn commit_answering(&self, writes: &[Write], durable: OnDurable) -> Result<(), StoreError> {
        self.check()?;
        self.inner.commit_answering(writes, durable)
    }
    fn read_log(
        &self,
        experiment: Option<&str>,
        visit: &mut dyn FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.read_log(experiment, visit)
    }
    fn recent_log(&self, experiment: &str, limit: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.inner.recent_log(experiment, limit)
    }
    fn probe(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.probe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_unavailable_and_memory_never_runs_ahead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let store = Arc::new(FlakyStore { inner: SqliteStore::open(dir.path()).unwrap(), broken: broken.clone() });
    let server = TestServer::start_on(store, vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    create(&mut admin, "e", shared_spec(pb::Algorithm::Clucb, 2)).await;
    let decide = |n: u32| {
        let mut request = per_action("e", vec![0.1, 0.2, 0.3, 0.4 * f64::from(n % 3)], 2, 0);
        request.client_event_id = format!("n{n}");
        request
    };
    for n in 0..5 {
        d.decide(decide(n)).await.unwrap();
    }
    d.reward(reward("e", "n0", 0.5)).await.unwrap();
    let before = report(&mut admin, "e").await;

    broken.store(true, Ordering::SeqCst);
    let failed = d.decide(decide(5)).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("No space left on device"), "{}", failed.message());
    for attempt in [d.decide(decide(6)).await.unwrap_err(), d.reward(reward("e", "n1", 0.5)).await.unwrap_err()] {
        assert_eq!(attempt.code(), Code::Unavailable, "{attempt:?}");
    }
    // The refused decision is not in memory: the report equals the state before the failure (after the
    // service rebuilt the experiment from the log, within a second or so).
    tokio::time::sleep(Duration::from_millis(300)).await;
    broken.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.decide(decide(7)).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the service did not resume: {status:?}"),
        }
    }
    let after = report(&mut admin, "e").await;
    assert_eq!(after.decisions, before.decisions + 1, "only the decision after recovery counts");
    assert_eq!(after.sequence, before.sequence + 1);
    // n5 was never acknowledged, so it is unknown; n1 (acknowledged before the failure) still takes its reward.
    assert_eq!(d.reward(reward("e", "n5", 0.5)).await.unwrap_err().code(), Code::NotFound);
    d.reward(reward("e", "n1", 0.5)).await.unwrap();
    server.stop().await.unwrap();
}

/// A store whose one armed commit fails after its log records were made durable and their callers answered,
/// with the rows and the journal position it wrote taken back out of the database: what a power cut or an
/// IO error between the journal's sync and SQLite's commit leaves.
struct RowLosingStore {
    inner: SqliteStore,
    database: std::path::PathBuf,
    armed: Arc<AtomicBool>,
}

impl RowLosingStore {
    fn journal_position(connection: &rusqlite::Connection) -> Option<(i64, i64)> {
        connection.query_row("SELECT file, offset FROM journal", [], |r| Ok((r.get(0)?, r.get(1)?))).ok()
    }
}

impl Store for RowLosingStore {
    fn save_definition(&self, definition: &ExperimentDef) -> Result<(), StoreError> {
        self.inner.save_definition(definition)
    }
    fn delete_experiment(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_experiment(id)
    }
    fn save_snapshots(&self, snapshots: &[Snapshot]) -> Result<(), StoreError> {
        self.inner.save_snapshots(snapshots)
    }
    fn load(&self) -> Result<Vec<StoredExperiment>, StoreError> {
        self.inner.load()
    }
    fn load_experiment(&self, id: &str) -> Result<Option<StoredExperiment>, StoreError> {
        self.inner.load_experiment(id)
    }
    fn commit_answering(&self, writes: &[Write], durable: OnDurable) -> Result<(), StoreError> {
        let armed = writes.iter().all(|w| matches!(w, Write::Log(_))) && self.armed.swap(false, Ordering::SeqCst);
        if !armed {
            return self.inner.commit_answering(writes, durable);
        }
        let connection = rusqlite::Connection::open(&self.database).unwrap();
        connection.busy_timeout(Duration::from_secs(5)).unwrap();
        let position = Self::journal_position(&connection);
        self.inner.commit_answering(writes, durable)?;
        for write in writes {
            if let Write::Log(record) = write {
                connection
                    .execute(
                        "DELETE FROM log WHERE experiment_id = ?1 AND sequence = ?2",
                        rusqlite::params![record.experiment_id, record.sequence as i64],
                    )
                    .unwrap();
            }
        }
        match position {
            Some((file, offset)) => {
                connection.execute("UPDATE journal SET file = ?1, offset = ?2", [file, offset]).unwrap();
            }
            None => {
                connection.execute("DELETE FROM journal", []).unwrap();
            }
        }
        let error = std::io::Error::other("simulated: the transaction failed after the journal was synced");
        Err(StoreError::DataDir { path: "test".into(), source: error })
    }
    fn read_log(
        &self,
        experiment: Option<&str>,
        visit: &mut dyn FnMut(LogRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.read_log(experiment, visit)
    }
    fn recent_log(&self, experiment: &str, limit: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.inner.recent_log(experiment, limit)
    }
    fn probe(&self) -> Result<(), StoreError> {
        self.inner.probe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_answered_before_its_commit_failed_survives_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let store = Arc::new(RowLosingStore {
        inner: SqliteStore::open(dir.path()).unwrap(),
        database: dir.path().join(safebet_service::DATABASE_FILE),
        armed: armed.clone(),
    });
    let server = TestServer::start_on(store, vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    create(&mut admin, "e", shared_spec(pb::Algorithm::Clucb, 2)).await;
    let decide = |n: u32| {
        let mut request = per_action("e", vec![0.1, 0.2, 0.3, 0.4 * f64::from(n % 3)], 2, 0);
        request.client_event_id = format!("n{n}");
        request
    };
    for n in 0..3 {
        d.decide(decide(n)).await.unwrap();
    }
    let before = report(&mut admin, "e").await;
    // Acknowledged: the journal had it on disk when the caller was answered, whatever the tables say.
    armed.store(true, Ordering::SeqCst);
    let acknowledged = d.decide(decide(3)).await.unwrap().into_inner();
    // The failed commit stops the writer; the service then replays the journal into the tables (probe),
    // rebuilds the experiment from them, and resumes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.decide(decide(4)).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the service did not resume: {status:?}"),
        }
    }
    let after = report(&mut admin, "e").await;
    assert_eq!(after.decisions, before.decisions + 2, "the acknowledged decision and the one after recovery");
    assert_eq!(after.sequence, before.sequence + 2);
    // Its reward is taken, and its row is back in the log.
    d.reward(reward("e", "n3", 0.5)).await.unwrap();
    server.stop().await.unwrap();
    let reopened = SqliteStore::open(dir.path()).unwrap();
    let mut logged = Vec::new();
    reopened
        .read_log(Some("e"), &mut |record| {
            logged.push(record);
            Ok(())
        })
        .unwrap();
    let decision = logged
        .iter()
        .find_map(|r| match &r.entry {
            LogEntry::Decision(d) if d.event_id == "n3" => Some(d),
            _ => None,
        })
        .expect("the acknowledged decision is in the log");
    assert_eq!(decision.action as u32, acknowledged.action_index);
    assert_eq!(decision.features.len(), 4, "with its features");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_experiment_decides_identically_after_import_elsewhere() {
    let home = TestServer::start().await;
    let away = TestServer::start().await;
    let (mut home_admin, mut home_d) = (home.admin().await, home.decisions().await);
    let (mut away_admin, mut away_d) = (away.admin().await, away.decisions().await);
    let mut spec = shared_spec(pb::Algorithm::Lints, 3);
    spec.alpha = Some(0.2);
    spec.reward_timeout_ms = 60_000;
    create(&mut home_admin, "moving", spec).await;
    let mut problem = LinearProblem::new(3, 4, 11);
    let mut pending = Vec::new();
    for t in 0..200 {
        let features = problem.round();
        let mut request = per_action("moving", features.clone(), 4, 0);
        request.client_event_id = format!("t{t}");
        let answer = home_d.decide(request).await.unwrap().into_inner();
        // A quarter of the rewards are still outstanding at export time.
        if t % 4 == 0 {
            pending.push((answer.event_id, problem.reward(&features, answer.action_index as usize)));
        } else {
            let value = problem.reward(&features, answer.action_index as usize);
            home_d.reward(reward("moving", &answer.event_id, value)).await.unwrap();
        }
    }
    let exported = home_admin.export_model(pb::ExportModelRequest { id: "moving".into() }).await.unwrap().into_inner();
    let imported = away_admin
        .import_model(pb::ImportModelRequest { model: exported.model.clone(), id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.id, "moving");
    let again = away_admin
        .import_model(pb::ImportModelRequest { model: exported.model.clone(), id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let garbage =
        away_admin.import_model(pb::ImportModelRequest { model: b"{}".to_vec(), id: "x".into() }).await.unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");

    // Outstanding rewards join on both sides, then both sides see the same rounds.
    for (event, value) in &pending {
        home_d.reward(reward("moving", event, *value)).await.unwrap();
        away_d.reward(reward("moving", event, *value)).await.unwrap();
    }
    for t in 200..300 {
        let features = problem.round();
        let mut request = per_action("moving", features.clone(), 4, 0);
        request.client_event_id = format!("t{t}");
        let a = home_d.decide(request.clone()).await.unwrap().into_inner();
        let b = away_d.decide(request).await.unwrap().into_inner();
        assert_eq!(a, b, "round {t}: the imported experiment decided differently");
        let value = problem.reward(&features, a.action_index as usize);
        home_d.reward(reward("moving", &a.event_id, value)).await.unwrap();
        away_d.reward(reward("moving", &b.event_id, value)).await.unwrap();
    }
    let (a, b) = (report(&mut home_admin, "moving").await, report(&mut away_admin, "moving").await);
    assert_eq!(
        (a.decisions, a.cumulative_reward.to_bits(), a.alpha),
        (b.decisions, b.cumulative_reward.to_bits(), b.alpha)
    );
    home.stop().await.unwrap();
    away.stop().await.unwrap();
}

/// `safebet log` exports what the service logged, rewards joined, in a form `safebet ope log` reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_command_exports_decisions_with_rewards_for_ope() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    create(&mut admin, "logged", shared_spec(pb::Algorithm::EpsilonGreedy, 2)).await;
    // An f32 experiment: the log (and the export) hold the features rounded, exactly as it learned from them.
    let mut compact = shared_spec(pb::Algorithm::Clucb, 2);
    compact.feature_precision = pb::FeaturePrecision::F32 as i32;
    let created = create(&mut admin, "compact", compact).await;
    assert_eq!(created.spec.unwrap().feature_precision, pb::FeaturePrecision::F32 as i32);
    let compact_rounds: Vec<Vec<f64>> =
        (0..5).map(|t| vec![0.1 * t as f64, 1.0 / 3.0, -0.7, 1e-3 * t as f64]).collect();
    for (t, features) in compact_rounds.iter().enumerate() {
        let mut request = per_action("compact", features.clone(), 2, 0);
        if let (1, Some(Actions::PerAction(p))) = (t % 2, request.actions.as_mut()) {
            // Every other round as floats on the wire, as a caller with float32 features would send them.
            p.features_f32_le = p.features.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
            p.features.clear();
        }
        d.decide(request).await.unwrap();
    }
    let mut problem = LinearProblem::new(2, 3, 5);
    for t in 0..120 {
        let features = problem.round();
        let answer = d.decide(per_action("logged", features.clone(), 3, 0)).await.unwrap().into_inner();
        if t % 10 != 0 {
            let value = problem.reward(&features, answer.action_index as usize);
            d.reward(reward("logged", &answer.event_id, value)).await.unwrap();
        }
    }
    // The report compares learner and baseline off-policy on the same log.
    let comparison = report(&mut admin, "logged").await.learner_vs_baseline.expect("the report's OPE comparison");
    assert_eq!(comparison.rounds, 108);
    assert!(comparison.lower <= comparison.estimate && comparison.estimate <= comparison.upper);
    assert!((comparison.level - 0.95).abs() < 1e-12);
    server.stop().await.unwrap();
    let jsonl = dir.path().join("log.jsonl");
    let csv = dir.path().join("log.csv");
    export_log(dir.path(), "csv", &["--experiment", "logged"], &csv);
    let lines = export_log(dir.path(), "jsonl", &["--experiment", "logged"], &jsonl);
    assert_eq!(lines.len(), 120);
    let compact_lines = export_log(dir.path(), "jsonl", &["--experiment", "compact"], &dir.path().join("c.jsonl"));
    let exported: Vec<Vec<f64>> = compact_lines
        .iter()
        .map(|l| l["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let rounded: Vec<Vec<f64>> =
        compact_rounds.iter().map(|x| x.iter().map(|v| f64::from(*v as f32)).collect()).collect();
    assert_eq!(exported, rounded, "the f32 experiment's features, rounded once");
    assert_eq!(lines.iter().filter(|l| l["reward"].is_null()).count(), 12);
    assert_eq!(lines[0]["features"].as_array().unwrap().len(), 6);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 121);
    for path in [&jsonl, &csv] {
        let output = Command::new(env!("CARGO_BIN_EXE_safebet"))
            .args(["ope", "log", "--resamples", "1000", "--target", "baseline", "--json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let evaluation: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(evaluation["rewarded"], 108);
        if path == &csv {
            // CSV carries no features: DM and DR fall back to a per-action reward model.
            assert_eq!(evaluation["reward_model"], "per_action");
            continue;
        }
        // The same numbers as the report's: one estimator, one log (features included), one seed.
        assert_eq!(evaluation["reward_model"], "linear");
        let difference = &evaluation["targets"][0]["logged_minus_target"];
        assert_eq!(difference["estimate"].as_f64(), Some(comparison.estimate));
        assert_eq!(difference["lower"].as_f64(), Some(comparison.lower));
        assert_eq!(difference["upper"].as_f64(), Some(comparison.upper));
    }
}

/// A state of more than a megabyte (thousands of decisions waiting for rewards) is snapshotted into a file
/// of its own at shutdown; a restart loads it, and the next snapshot replaces the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_goes_to_a_file_and_restarts_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = || -> Vec<String> {
        std::fs::read_dir(dir.path().join("snapshots"))
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    create(&mut admin, "big", shared_spec(pb::Algorithm::Clucb, 32)).await;
    let mut problem = LinearProblem::new(32, 4, 11);
    let mut event_ids = Vec::new();
    for _ in 0..50 {
        let requests = (0..100).map(|_| per_action("big", problem.round(), 4, 0)).collect();
        let batch = d.decide_batch(pb::DecideBatchRequest { requests }).await.unwrap().into_inner();
        event_ids.extend(batch.results.into_iter().filter_map(|r| match r.outcome {
            Some(pb::decide_result::Outcome::Decision(decision)) => Some(decision.event_id),
            _ => None,
        }));
    }
    assert_eq!(event_ids.len(), 5_000);
    let before = report(&mut admin, "big").await;
    assert_eq!(before.rewards_pending, 5_000);
    server.stop().await.unwrap();
    let staged = files();
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert!(std::fs::metadata(dir.path().join("snapshots").join(&staged[0])).unwrap().len() > 1 << 20);

    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    let after = report(&mut admin, "big").await;
    assert_eq!((after.decisions, after.rewards_pending), (before.decisions, before.rewards_pending));
    assert_eq!(after.model_version, before.model_version);
    // The pending decisions came back with it: their rewards are taken.
    for event_id in &event_ids[..10] {
        d.reward(reward("big", event_id, 0.5)).await.unwrap();
    }
    server.stop().await.unwrap();
    let replaced = files();
    assert_eq!(replaced.len(), 1, "the older file is gone: {replaced:?}");
    assert_ne!(replaced, staged);
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut admin = server.admin().await;
    assert_eq!(report(&mut admin, "big").await.rewards_pending, 4_990);
    server.stop().await.unwrap();
}
