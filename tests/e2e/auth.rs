//! Access control: every RPC against every kind of key (none, unknown, admin, decide, each scoped or not).
//! Missing or unknown keys are UNAUTHENTICATED; the wrong role or an experiment outside the key's scope is
//! PERMISSION_DENIED; everything else reaches the service. Without keys, the server refuses to listen beyond
//! loopback.

use std::sync::Arc;

use safebet_proto as pb;
use safebet_proto::decision_service_client::DecisionServiceClient;
use safebet_proto::episode_service_client::EpisodeServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;
use safebet_service::{Keys, Limits, ServeError, ServeOptions, SqliteStore, hash_key};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::support::*;

fn keys() -> Keys {
    let entry = |id: &str, role: &str, experiments: &str, secret: &str| {
        format!("[[key]]\nid = \"{id}\"\nrole = \"{role}\"\n{experiments}sha256 = \"{}\"\n\n", hash_key(secret))
    };
    let text = [
        entry("ops", "admin", "", "admin-all"),
        entry("ops-a", "admin", "experiments = [\"a\"]\n", "admin-a"),
        entry("svc", "decide", "", "decide-all"),
        entry("svc-a", "decide", "experiments = [\"a\"]\n", "decide-a"),
    ]
    .concat();
    Keys::parse(&text).unwrap()
}

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

/// Calls `rpc` about experiment `b` (or on nothing, for listing) with `key`; returns the status code.
async fn call(channel: &Channel, rpc: &str, key: Option<&str>) -> Code {
    let mut admin = ExperimentAdminClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let mut episodes = EpisodeServiceClient::new(channel.clone());
    let id = || "b".to_string();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    match rpc {
        "CreateExperiment" => code(
            admin
                .create_experiment(with_key(
                    pb::CreateExperimentRequest { id: id(), spec: Some(shared_spec(pb::Algorithm::Clucb, 2)) },
                    key,
                ))
                .await
                .map(drop),
        ),
        "GetExperiment" => {
            code(admin.get_experiment(with_key(pb::GetExperimentRequest { id: id() }, key)).await.map(drop))
        }
        "ListExperiments" => code(admin.list_experiments(with_key(pb::ListExperimentsRequest {}, key)).await.map(drop)),
        "UpdateRiskBudget" => code(
            admin
                .update_risk_budget(with_key(pb::UpdateRiskBudgetRequest { id: id(), alpha: Some(0.2) }, key))
                .await
                .map(drop),
        ),
        "PauseExperiment" => {
            code(admin.pause_experiment(with_key(pb::PauseExperimentRequest { id: id() }, key)).await.map(drop))
        }
        "ResumeExperiment" => {
            code(admin.resume_experiment(with_key(pb::ResumeExperimentRequest { id: id() }, key)).await.map(drop))
        }
        "GetReport" => code(admin.get_report(with_key(pb::GetReportRequest { id: id() }, key)).await.map(drop)),
        "ExportModel" => code(admin.export_model(with_key(pb::ExportModelRequest { id: id() }, key)).await.map(drop)),
        "ImportModel" => code(
            admin
                .import_model(with_key(pb::ImportModelRequest { model: b"{}".to_vec(), id: id() }, key))
                .await
                .map(drop),
        ),
        "DeleteExperiment" => code(
            admin.delete_experiment(with_key(pb::DeleteExperimentRequest { id: "gone".into() }, key)).await.map(drop),
        ),
        "Decide" => code(decisions.decide(with_key(per_action("b", vec![0.1; 4], 2, 0), key)).await.map(drop)),
        "DecideBatch" => code(
            decisions
                .decide_batch(with_key(
                    pb::DecideBatchRequest { requests: vec![per_action("b", vec![0.1; 4], 2, 0)] },
                    key,
                ))
                .await
                .map(drop),
        ),
        "Reward" => code(decisions.reward(with_key(reward("b", "#0", 0.5), key)).await.map(drop)),
        "RewardBatch" => code(
            decisions
                .reward_batch(with_key(pb::RewardBatchRequest { rewards: vec![reward("b", "#0", 0.5)] }, key))
                .await
                .map(drop),
        ),
        "StartEpisode" => code(
            episodes
                .start_episode(with_key(pb::StartEpisodeRequest { experiment_id: id(), ..Default::default() }, key))
                .await
                .map(drop),
        ),
        "GetEpisodicExperiment" => code(
            episodes
                .get_episodic_experiment(with_key(pb::GetEpisodicExperimentRequest { experiment_id: id() }, key))
                .await
                .map(drop),
        ),
        "ListEpisodicExperiments" => code(
            episodes.list_episodic_experiments(with_key(pb::ListEpisodicExperimentsRequest {}, key)).await.map(drop),
        ),
        "UpdateEpisodicRiskBudget" => code(
            episodes
                .update_episodic_risk_budget(with_key(
                    pb::UpdateEpisodicRiskBudgetRequest { experiment_id: id(), alpha: Some(0.2) },
                    key,
                ))
                .await
                .map(drop),
        ),
        "PauseEpisodicExperiment" => code(
            episodes
                .pause_episodic_experiment(with_key(pb::PauseEpisodicExperimentRequest { experiment_id: id() }, key))
                .await
                .map(drop),
        ),
        "ResumeEpisodicExperiment" => code(
            episodes
                .resume_episodic_experiment(with_key(pb::ResumeEpisodicExperimentRequest { experiment_id: id() }, key))
                .await
                .map(drop),
        ),
        "GetEpisodicReport" => code(
            episodes
                .get_episodic_report(with_key(pb::GetEpisodicReportRequest { experiment_id: id() }, key))
                .await
                .map(drop),
        ),
        other => panic!("no such RPC in the matrix: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_the_key_its_role_and_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let server = TestServer::start_keyed(store, vec![], Limits::default(), keys()).await;
    let channel = server.channel().await;
    // Experiment "b" exists, so permitted calls reach it; the scoped keys only cover "a".
    let mut admin = ExperimentAdminClient::new(channel.clone());
    admin
        .create_experiment(with_key(
            pb::CreateExperimentRequest { id: "b".into(), spec: Some(shared_spec(pb::Algorithm::Clucb, 2)) },
            Some("admin-all"),
        ))
        .await
        .unwrap();

    let admin_rpcs = [
        "CreateExperiment",
        "GetExperiment",
        "ListExperiments",
        "UpdateRiskBudget",
        "PauseExperiment",
        "ResumeExperiment",
        "GetReport",
        "ExportModel",
        "ImportModel",
        "DeleteExperiment",
        "GetEpisodicReport",
        "GetEpisodicExperiment",
        "ListEpisodicExperiments",
        "UpdateEpisodicRiskBudget",
        "PauseEpisodicExperiment",
        "ResumeEpisodicExperiment",
    ];
    let decide_rpcs = ["Decide", "DecideBatch", "Reward", "RewardBatch", "StartEpisode"];
    let denied = |code: Code| matches!(code, Code::Unauthenticated | Code::PermissionDenied);
    let mut checked = 0;
    for rpc in admin_rpcs.iter().chain(&decide_rpcs) {
        let needs_admin = admin_rpcs.contains(rpc);
        let unscoped = matches!(*rpc, "ListExperiments" | "ListEpisodicExperiments");
        assert_eq!(call(&channel, rpc, None).await, Code::Unauthenticated, "{rpc} without a key");
        assert_eq!(call(&channel, rpc, Some("guess")).await, Code::Unauthenticated, "{rpc} with an unknown key");
        let (right_all, right_a, wrong) =
            if needs_admin { ("admin-all", "admin-a", "decide-all") } else { ("decide-all", "decide-a", "admin-all") };
        let code = call(&channel, rpc, Some(right_all)).await;
        assert!(!denied(code), "{rpc} with the right role: {code:?}");
        assert_eq!(call(&channel, rpc, Some(wrong)).await, Code::PermissionDenied, "{rpc} with the wrong role");
        let scoped = call(&channel, rpc, Some(right_a)).await;
        if unscoped {
            assert!(!denied(scoped), "{rpc} needs no scope: {scoped:?}");
        } else {
            assert_eq!(scoped, Code::PermissionDenied, "{rpc} on an experiment outside the key's scope");
        }
        checked += 1;
    }
    assert_eq!(checked, admin_rpcs.len() + decide_rpcs.len());
    // A scoped decide key works inside its scope.
    admin
        .create_experiment(with_key(
            pb::CreateExperimentRequest { id: "a".into(), spec: Some(shared_spec(pb::Algorithm::Clucb, 2)) },
            Some("admin-a"),
        ))
        .await
        .unwrap();
    let mut decisions = DecisionServiceClient::new(channel.clone());
    decisions.decide(with_key(per_action("a", vec![0.1; 4], 2, 0), Some("decide-a"))).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let options = ServeOptions::new(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    let result = safebet_service::run(listener, std::future::ready(()), options).await;
    assert!(matches!(result, Err(ServeError::Unauthenticated(_))), "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("without API keys"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_who_changed_what_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let server = TestServer::start_keyed(store, vec![], Limits::default(), keys()).await;
    let mut admin = ExperimentAdminClient::new(server.channel().await);
    let spec = shared_spec(pb::Algorithm::Clucb, 2);
    admin
        .create_experiment(with_key(pb::CreateExperimentRequest { id: "a".into(), spec: Some(spec) }, Some("admin-a")))
        .await
        .unwrap();
    admin
        .update_risk_budget(with_key(
            pb::UpdateRiskBudgetRequest { id: "a".into(), alpha: Some(0.25) },
            Some("admin-all"),
        ))
        .await
        .unwrap();
    admin.pause_experiment(with_key(pb::PauseExperimentRequest { id: "a".into() }, Some("admin-a"))).await.unwrap();
    admin.resume_experiment(with_key(pb::ResumeExperimentRequest { id: "a".into() }, Some("admin-a"))).await.unwrap();
    // A refused change leaves no entry.
    let refused = admin
        .update_risk_budget(with_key(pb::UpdateRiskBudgetRequest { id: "a".into(), alpha: Some(1.5) }, Some("admin-a")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    admin.delete_experiment(with_key(pb::DeleteExperimentRequest { id: "a".into() }, Some("admin-all"))).await.unwrap();

    let scoped_all = admin
        .list_audit_entries(with_key(pb::ListAuditEntriesRequest { experiment_id: String::new() }, Some("admin-a")))
        .await
        .unwrap_err();
    assert_eq!(scoped_all.code(), Code::PermissionDenied, "a scoped key may not read every experiment's trail");
    let entries = admin
        .list_audit_entries(with_key(pb::ListAuditEntriesRequest { experiment_id: "a".into() }, Some("admin-a")))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let trail: Vec<(&str, &str)> = entries.iter().map(|e| (e.actor.as_str(), e.action.as_str())).collect();
    assert_eq!(
        trail,
        [
            ("ops-a", "create"),
            ("ops", "update_risk_budget"),
            ("ops-a", "pause"),
            ("ops-a", "resume"),
            ("ops", "delete")
        ]
    );
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert!(entries[0].before.is_empty());
    assert_eq!(json(&entries[1].before)["definition"]["policy"]["alpha"], 0.1);
    assert_eq!(json(&entries[1].after)["definition"]["policy"]["alpha"], 0.25);
    assert_eq!(json(&entries[2].after)["definition"]["paused"], true);
    assert_eq!(json(&entries[3].after)["definition"]["paused"], false);
    assert!(entries[4].after.is_empty() && !entries[4].before.is_empty());
    assert!(entries.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
    server.stop().await.unwrap();
}
