//! Shared helpers: a server on 127.0.0.1:0 with its own data directory, clients, specs and a small
//! deterministic linear problem.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use safebet_proto as pb;
use safebet_proto::decision_service_client::DecisionServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;
use safebet_service::{ExperimentDef, Keys, Limits, ServeError, ServeOptions, SqliteStore, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running in-process server.
pub struct TestServer {
    pub address: std::net::SocketAddr,
    /// Keeps a temporary data directory alive (None when the test owns the directory).
    _temp: Option<Arc<tempfile::TempDir>>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// A server with a fresh temporary data directory and default limits.
    pub async fn start() -> TestServer {
        let temp = Arc::new(tempfile::tempdir().unwrap());
        let mut server = Self::start_with(temp.path(), Vec::new(), Limits::default()).await;
        server._temp = Some(temp);
        server
    }

    /// A server on `data_dir`, with declared experiments and limits.
    pub async fn start_with(data_dir: &Path, declared: Vec<ExperimentDef>, limits: Limits) -> TestServer {
        Self::start_on(Arc::new(SqliteStore::open(data_dir).unwrap()), declared, limits).await
    }

    /// A server on any store.
    pub async fn start_on(store: Arc<dyn Store>, declared: Vec<ExperimentDef>, limits: Limits) -> TestServer {
        Self::start_keyed(store, declared, limits, Keys::none()).await
    }

    /// A server on any store, with API keys.
    pub async fn start_keyed(
        store: Arc<dyn Store>,
        declared: Vec<ExperimentDef>,
        limits: Limits,
        keys: Keys,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut options = ServeOptions::new(store);
        options.keys = keys;
        options.declared = declared;
        options.limits = limits;
        options.timeout_check_interval = Duration::from_millis(10);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(safebet_service::run(
            listener,
            async move {
                let _ = rx.await;
            },
            options,
        ));
        TestServer { address, _temp: None, shutdown: Some(tx), handle: Some(handle) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn channel(&self) -> Channel {
        for _ in 0..100 {
            if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server at {} did not come up", self.address);
    }

    pub async fn decisions(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> ExperimentAdminClient<Channel> {
        ExperimentAdminClient::new(self.channel().await)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn shared_spec(algorithm: pb::Algorithm, dim: u32) -> pb::ExperimentSpec {
    pb::ExperimentSpec {
        algorithm: algorithm as i32,
        layout: Some(pb::Layout { kind: Some(pb::layout::Kind::Shared(pb::SharedLayout { dim })) }),
        ..Default::default()
    }
}

pub fn disjoint_spec(algorithm: pb::Algorithm, dim: u32, actions: u32) -> pb::ExperimentSpec {
    pb::ExperimentSpec {
        algorithm: algorithm as i32,
        layout: Some(pb::Layout {
            kind: Some(pb::layout::Kind::Disjoint(pb::DisjointLayout { dim, actions, action_ids: vec![] })),
        }),
        ..Default::default()
    }
}

pub fn arms_spec(algorithm: pb::Algorithm, ids: &[&str]) -> pb::ExperimentSpec {
    pb::ExperimentSpec {
        algorithm: algorithm as i32,
        layout: Some(pb::Layout {
            kind: Some(pb::layout::Kind::Arms(pb::ArmsLayout {
                actions: ids.len() as u32,
                action_ids: ids.iter().map(|s| s.to_string()).collect(),
            })),
        }),
        ..Default::default()
    }
}

pub async fn create(admin: &mut ExperimentAdminClient<Channel>, id: &str, spec: pb::ExperimentSpec) -> pb::Experiment {
    admin
        .create_experiment(pb::CreateExperimentRequest { id: id.into(), spec: Some(spec) })
        .await
        .unwrap_or_else(|s| panic!("creating {id}: {s:?}"))
        .into_inner()
}

pub async fn report(admin: &mut ExperimentAdminClient<Channel>, id: &str) -> pb::ExperimentReport {
    admin.get_report(pb::GetReportRequest { id: id.into() }).await.unwrap().into_inner()
}

/// A per-action Decide request.
pub fn per_action(experiment: &str, features: Vec<f64>, k: u32, baseline: u32) -> pb::DecideRequest {
    pb::DecideRequest {
        experiment_id: experiment.into(),
        actions: Some(pb::decide_request::Actions::PerAction(pb::PerActionFeatures {
            features,
            num_actions: k,
            ..Default::default()
        })),
        baseline: Some(pb::decide_request::Baseline::BaselineIndex(baseline)),
        ..Default::default()
    }
}

pub fn reward(experiment: &str, event_id: &str, value: f64) -> pb::RewardRequest {
    pb::RewardRequest { experiment_id: experiment.into(), event_id: event_id.into(), value: Some(value) }
}

/// SplitMix64: a tiny seeded stream, so test problems are reproducible without depending on an RNG crate.
#[derive(Debug, Clone)]
pub struct Stream(u64);

impl Stream {
    pub fn new(seed: u64) -> Self {
        Stream(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A linear problem: K actions with d features in the unit ball's positive part, theta* of norm <= 1, so
/// expected rewards lie in [0, 1].
pub struct LinearProblem {
    pub dim: usize,
    pub actions: usize,
    pub theta: Vec<f64>,
    stream: Stream,
}

impl LinearProblem {
    pub fn new(dim: usize, actions: usize, seed: u64) -> Self {
        let mut stream = Stream::new(seed);
        let raw: Vec<f64> = (0..dim).map(|_| stream.uniform()).collect();
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        LinearProblem { dim, actions, theta: raw.iter().map(|v| v / norm).collect(), stream }
    }

    /// Features of one round, row-major, each row of norm <= 1.
    pub fn round(&mut self) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.dim * self.actions);
        for _ in 0..self.actions {
            let row: Vec<f64> = (0..self.dim).map(|_| self.stream.uniform()).collect();
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-9);
            x.extend(row.iter().map(|v| v / norm));
        }
        x
    }

    pub fn mean(&self, features: &[f64], action: usize) -> f64 {
        features[action * self.dim..(action + 1) * self.dim].iter().zip(&self.theta).map(|(a, b)| a * b).sum()
    }

    /// The action of the round with the k-th highest mean (0 = best).
    pub fn ranked(&self, features: &[f64], rank: usize) -> usize {
        let mut order: Vec<usize> = (0..self.actions).collect();
        order.sort_by(|&a, &b| self.mean(features, b).total_cmp(&self.mean(features, a)));
        order[rank]
    }

    /// A noisy reward in [0, 1].
    pub fn reward(&mut self, features: &[f64], action: usize) -> f64 {
        let noise = (self.stream.uniform() - 0.5) * 0.1;
        (self.mean(features, action) + noise).clamp(0.0, 1.0)
    }
}

/// Runs `safebet log` on the store in `data` in `format` (with `extra` flags), writing to `output`, and
/// returns the JSON lines it wrote (none for CSV).
pub fn export_log(data: &Path, format: &str, extra: &[&str], output: &Path) -> Vec<serde_json::Value> {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_safebet"))
        .args(["log", "--format", format])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .arg("--output")
        .arg(output)
        .status()
        .unwrap();
    assert!(status.success(), "safebet log {format} {extra:?}");
    let text = std::fs::read_to_string(output).unwrap();
    if format != "jsonl" {
        return Vec::new();
    }
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
