//! The Prometheus endpoint, scraped: decision and reward counters, latency histograms, per-experiment
//! gauges (bandit and episodic experiments) and store commit latency are there after some traffic.

use std::sync::Arc;
use std::time::Duration;

use safebet_proto as pb;
use safebet_service::{ServeOptions, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

/// One test per process: the Prometheus recorder is process-wide. The store syncs every 5 ms (rather than
/// before each answer), so its gauge of acknowledged records waiting for a sync is exported too; the other
/// metrics are the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_reports_traffic_latency_and_budget() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap().with_sync_interval(Duration::from_millis(5));
    let mut options = ServeOptions::new(Arc::new(store));
    options.metrics_listen = Some(metrics_address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(safebet_service::run(
        listener,
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    let channel = loop {
        match tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut admin = pb::experiment_admin_client::ExperimentAdminClient::new(channel.clone());
    let mut d = pb::decision_service_client::DecisionServiceClient::new(channel.clone());
    create(&mut admin, "scraped", shared_spec(pb::Algorithm::Clucb, 2)).await;
    for _ in 0..30 {
        let answer = d.decide(per_action("scraped", vec![0.3, 0.1, 0.2, 0.4], 2, 0)).await.unwrap().into_inner();
        d.reward(reward("scraped", &answer.event_id, 0.5)).await.unwrap();
    }
    let mut episodes = pb::episode_service_client::EpisodeServiceClient::new(channel);
    let spec = pb::EpisodicSpec {
        algorithm: pb::RlAlgorithm::ConservativeUcbvi as i32,
        states: 3,
        actions: 2,
        horizon: 4,
        baseline_policy: vec![0, 0, 0],
        baseline_value: Some(0.5),
        ..Default::default()
    };
    let create_episodic = pb::CreateEpisodicExperimentRequest { id: "episodes".into(), spec: Some(spec) };
    episodes.create_episodic_experiment(create_episodic).await.unwrap();
    let start = pb::StartEpisodeRequest { experiment_id: "episodes".into(), episode: Some(0) };
    episodes.start_episode(start).await.unwrap();
    let pause = pb::PauseEpisodicExperimentRequest { experiment_id: "episodes".into() };
    episodes.pause_episodic_experiment(pause).await.unwrap();
    let refused = d.decide(per_action("scraped", vec![f64::NAN; 4], 2, 0)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    tokio::time::sleep(Duration::from_millis(1200)).await; // one gauge refresh
    let text = scrape(metrics_address).await;
    for expected in [
        "safebet_decisions_total{experiment=\"scraped\"} 30",
        "safebet_rewards_total{experiment=\"scraped\"} 30",
        "safebet_rpc_duration_seconds_bucket{rpc=\"Decide\"",
        "safebet_rpc_errors_total{rpc=\"Decide\",code=\"InvalidArgument\"} 1",
        "safebet_pending_rewards{experiment=\"scraped\"} 0",
        "safebet_baseline_share{experiment=\"scraped\"}",
        "safebet_budget_margin{experiment=\"scraped\"}",
        "safebet_drift_alarm{experiment=\"scraped\"} 0",
        "safebet_store_commit_seconds_bucket",
        "safebet_store_durable_seconds_bucket",
        "safebet_decisions_by_outcome_total{experiment=\"scraped\",outcome=",
        "safebet_episodes{experiment=\"episodes\"} 1",
        "safebet_baseline_share{experiment=\"episodes\"} 1",
        "safebet_budget_margin{experiment=\"episodes\"}",
        "safebet_paused{experiment=\"episodes\"} 1",
        "safebet_alpha{experiment=\"episodes\"} 0.1",
        "safebet_store_bytes{part=\"database\"}",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    // 30 decisions of 2 actions x 2 features: at least 30 x 32 bytes of features on disk.
    let features: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("safebet_store_bytes{part=\"features\"} "))
        .unwrap_or_else(|| panic!("no journal gauge in\n{text}"))
        .parse()
        .unwrap();
    assert!(features >= 30.0 * 32.0, "feature files hold {features} bytes");
    let unsynced: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("safebet_store_unsynced_records "))
        .unwrap_or_else(|| panic!("no unsynced-records gauge in\n{text}"))
        .parse()
        .unwrap();
    assert!(unsynced < 60.0, "{unsynced} records wait for a sync that runs every 5 ms");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
