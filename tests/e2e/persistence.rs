//! State outlives the process: definitions and learner snapshots are flushed at graceful shutdown (also on
//! SIGTERM of the real binary) and reloaded on start, and the experiment continues exactly where it was.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use safebet_proto as pb;
use safebet_service::{ExperimentsFile, Limits, SqliteStore, Store};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_continues_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // A control server that never restarts gets the same inputs.
    let control = TestServer::start().await;
    let mut control_admin = control.admin().await;
    let mut control_d = control.decisions().await;
    let mut spec = shared_spec(pb::Algorithm::Lints, 3);
    spec.alpha = Some(0.2);

    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    create(&mut admin, "e", spec.clone()).await;
    create(&mut control_admin, "e", spec.clone()).await;
    create(&mut admin, "paused", arms_spec(pb::Algorithm::Ucb1, &["x", "y"])).await;
    admin.pause_experiment(pb::PauseExperimentRequest { id: "paused".into() }).await.unwrap();
    for a in [&mut admin, &mut control_admin] {
        a.update_risk_budget(pb::UpdateRiskBudgetRequest { id: "e".into(), alpha: Some(0.3) }).await.unwrap();
    }
    let mut problem = LinearProblem::new(3, 4, 11);
    let mut step = |t: usize| {
        let mut request = per_action("e", problem.round(), 4, 1);
        request.client_event_id = format!("c{t}");
        request
    };
    let mut pending = Vec::new();
    for t in 0..30 {
        let request = step(t);
        let answer = d.decide(request.clone()).await.unwrap().into_inner();
        assert_eq!(answer, control_d.decide(request).await.unwrap().into_inner());
        if t % 3 == 0 {
            pending.push(answer);
        } else {
            let value = 0.1 * (answer.action_index as f64) + 0.05;
            d.reward(reward("e", &answer.event_id, value)).await.unwrap();
            control_d.reward(reward("e", &answer.event_id, value)).await.unwrap();
        }
    }
    let before = report(&mut admin, "e").await;
    server.stop().await.unwrap();

    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    assert_eq!(report(&mut admin, "e").await, before);
    let paused = admin.get_experiment(pb::GetExperimentRequest { id: "paused".into() }).await.unwrap().into_inner();
    assert_eq!(paused.state, pb::ExperimentState::Paused as i32);
    let e = admin.get_experiment(pb::GetExperimentRequest { id: "e".into() }).await.unwrap().into_inner();
    assert_eq!(e.spec.unwrap().alpha, Some(0.3));
    // Idempotency survives the restart, and so do the pending decisions.
    let again = d.decide(step(0)).await;
    assert_eq!(again.unwrap().into_inner().event_id, "c0");
    assert_eq!(report(&mut admin, "e").await.decisions, 30);
    for answer in &pending {
        d.reward(reward("e", &answer.event_id, 0.5)).await.unwrap();
        control_d.reward(reward("e", &answer.event_id, 0.5)).await.unwrap();
    }
    let done = d.reward(reward("e", &pending[0].event_id, 0.5)).await.unwrap_err();
    assert_eq!(done.code(), Code::AlreadyExists);
    // The learner continues bit for bit, random stream included.
    for t in 30..60 {
        let request = step(t);
        let answer = d.decide(request.clone()).await.unwrap().into_inner();
        assert_eq!(answer, control_d.decide(request).await.unwrap().into_inner(), "round {t}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_experiments_are_created_once_and_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = ExperimentsFile::parse(
        r#"
        [[experiment]]
        id = "declared"
        reward_timeout_ms = 60000
        policy = { algorithm = "clucb2", layout = { kind = "shared", dim = 2 }, alpha = 0.05 }
        "#,
    )
    .unwrap();
    let server = TestServer::start_with(dir.path(), file.experiment.clone(), Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    let got = admin.get_experiment(pb::GetExperimentRequest { id: "declared".into() }).await.unwrap().into_inner();
    assert_eq!(got.spec.as_ref().unwrap().alpha, Some(0.05));
    assert_eq!(got.spec.unwrap().reward_timeout_ms, 60000);
    d.decide(per_action("declared", vec![0.1, 0.2, 0.3, 0.4], 2, 0)).await.unwrap();
    server.stop().await.unwrap();

    let server = TestServer::start_with(dir.path(), file.experiment, Limits::default()).await;
    let mut admin = server.admin().await;
    assert_eq!(report(&mut admin, "declared").await.decisions, 1, "the stored state wins over the file");
    server.stop().await.unwrap();
}

/// Graceful shutdown lets in-flight calls finish and flushes their effects: every decision acknowledged
/// before the shutdown is in the reloaded state, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_keeps_every_acknowledged_decision() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut admin = server.admin().await;
    create(&mut admin, "busy", shared_spec(pb::Algorithm::Clucb, 8)).await;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut d = server.decisions().await;
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = Stream::new(client);
            loop {
                let features = (0..8 * 16).map(|_| stream.uniform() * 0.3).collect();
                match d.decide(per_action("busy", features, 16, 0)).await {
                    Ok(_) => acknowledged.fetch_add(1, Ordering::SeqCst),
                    Err(_) => break,
                };
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.stop().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    assert!(acknowledged > 100, "the load ran: {acknowledged}");
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut admin = server.admin().await;
    assert_eq!(report(&mut admin, "busy").await.decisions, acknowledged);
    server.stop().await.unwrap();
}

/// The real binary: `safebet serve` on an ephemeral port, SIGTERM, a clean exit, and the state on disk.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_flushes_its_state_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("experiments.toml");
    std::fs::write(
        &experiments,
        "[[experiment]]\nid = \"bin\"\npolicy = { algorithm = \"clucb\", layout = { kind = \"shared\", dim = 2 } }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_safebet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--experiments")
        .arg(&experiments)
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
    // Keep draining the log so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let channel = tonic::transport::Channel::from_shared(address).unwrap().connect().await.unwrap();
    let mut d = pb::decision_service_client::DecisionServiceClient::new(channel);
    for _ in 0..3 {
        d.decide(per_action("bin", vec![0.1, 0.2, 0.3, 0.4], 2, 0)).await.unwrap();
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "safebet serve exited with {status}");
    let log = drain.join().unwrap().join("\n");
    assert!(log.contains("SIGTERM received") && log.contains("state flushed"), "{log}");

    let stored = SqliteStore::open(&data).unwrap().load().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].snapshot.as_ref().map(|s| s.sequence), Some(3));
}
