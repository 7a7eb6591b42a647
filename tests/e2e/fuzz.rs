//! Hostile and broken input, fuzzed: arbitrary bytes decoded as each request type, and arbitrary field values
//! (NaN, infinities, huge counts, odd strings), sent to the real server. Whatever arrives, the service never
//! panics or fails internally, and a rejected request changes nothing (the experiment's report and the
//! episodic report are identical before and after). Bounded: a few hundred cases per request type.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use safebet_proto as pb;
use safebet_proto::decide_request::Actions;
use safebet_proto::decision_service_client::DecisionServiceClient;
use safebet_proto::episode_service_client::EpisodeServiceClient;
use safebet_proto::experiment_admin_client::ExperimentAdminClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

/// Codes a service that is merely refusing bad input may answer with; anything else means it broke.
fn acceptable(code: Code) -> bool {
    !matches!(code, Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss)
}

struct Clients {
    admin: ExperimentAdminClient<Channel>,
    decisions: DecisionServiceClient<Channel>,
    episodes: EpisodeServiceClient<Channel>,
}

impl Clients {
    async fn state(&mut self) -> (pb::ExperimentReport, pb::EpisodicReport) {
        let report = self.admin.get_report(pb::GetReportRequest { id: "f".into() }).await.unwrap().into_inner();
        let episodic = self
            .episodes
            .get_episodic_report(pb::GetEpisodicReportRequest { experiment_id: "r".into() })
            .await
            .unwrap()
            .into_inner();
        (report, episodic)
    }

    /// Sends one request; checks the invariants.
    async fn send(&mut self, request: Fuzzed) {
        let before = self.state().await;
        let result = match request.clone() {
            Fuzzed::Decide(r) => self.decisions.decide(r).await.map(drop),
            Fuzzed::DecideBatch(r) => self.decisions.decide_batch(r).await.map(drop),
            Fuzzed::Reward(r) => self.decisions.reward(r).await.map(drop),
            Fuzzed::RewardBatch(r) => self.decisions.reward_batch(r).await.map(drop),
            Fuzzed::Create(r) => self.admin.create_experiment(r).await.map(drop),
            Fuzzed::Budget(r) => self.admin.update_risk_budget(r).await.map(drop),
            Fuzzed::Import(r) => self.admin.import_model(r).await.map(drop),
            Fuzzed::Observe(r) => self.episodes.observe(r).await.map(drop),
            Fuzzed::CreateEpisodic(r) => self.episodes.create_episodic_experiment(r).await.map(drop),
            Fuzzed::EpisodicBudget(r) => self.episodes.update_episodic_risk_budget(r).await.map(drop),
            Fuzzed::StartEpisode(r) => self.episodes.start_episode(r).await.map(drop),
            Fuzzed::EndEpisode(r) => self.episodes.end_episode(r).await.map(drop),
            Fuzzed::ImportEpisodic(r) => self.episodes.import_episodic_experiment(r).await.map(drop),
        };
        if let Err(status) = result {
            assert!(acceptable(status.code()), "{request:?} broke the service: {status:?}");
            assert_eq!(self.state().await, before, "rejected {request:?} changed state ({status:?})");
        }
    }
}

#[derive(Debug, Clone)]
enum Fuzzed {
    Decide(pb::DecideRequest),
    DecideBatch(pb::DecideBatchRequest),
    Reward(pb::RewardRequest),
    RewardBatch(pb::RewardBatchRequest),
    Create(pb::CreateExperimentRequest),
    Budget(pb::UpdateRiskBudgetRequest),
    Import(pb::ImportModelRequest),
    Observe(pb::ObserveRequest),
    CreateEpisodic(pb::CreateEpisodicExperimentRequest),
    EpisodicBudget(pb::UpdateEpisodicRiskBudgetRequest),
    StartEpisode(pb::StartEpisodeRequest),
    EndEpisode(pb::EndEpisodeRequest),
    ImportEpisodic(pb::ImportEpisodicExperimentRequest),
}

/// Arbitrary bytes decoded as every request type (those that decode at all).
fn from_bytes(bytes: &[u8]) -> Vec<Fuzzed> {
    let mut out = Vec::new();
    if let Ok(r) = pb::DecideRequest::decode(bytes) {
        out.push(Fuzzed::Decide(r));
    }
    if let Ok(r) = pb::DecideBatchRequest::decode(bytes) {
        out.push(Fuzzed::DecideBatch(r));
    }
    if let Ok(r) = pb::RewardRequest::decode(bytes) {
        out.push(Fuzzed::Reward(r));
    }
    if let Ok(r) = pb::RewardBatchRequest::decode(bytes) {
        out.push(Fuzzed::RewardBatch(r));
    }
    if let Ok(r) = pb::CreateExperimentRequest::decode(bytes) {
        out.push(Fuzzed::Create(r));
    }
    if let Ok(r) = pb::UpdateRiskBudgetRequest::decode(bytes) {
        out.push(Fuzzed::Budget(r));
    }
    if let Ok(r) = pb::ImportModelRequest::decode(bytes) {
        out.push(Fuzzed::Import(r));
    }
    if let Ok(r) = pb::ObserveRequest::decode(bytes) {
        out.push(Fuzzed::Observe(r));
    }
    if let Ok(r) = pb::CreateEpisodicExperimentRequest::decode(bytes) {
        out.push(Fuzzed::CreateEpisodic(r));
    }
    if let Ok(r) = pb::UpdateEpisodicRiskBudgetRequest::decode(bytes) {
        out.push(Fuzzed::EpisodicBudget(r));
    }
    if let Ok(r) = pb::StartEpisodeRequest::decode(bytes) {
        out.push(Fuzzed::StartEpisode(r));
    }
    if let Ok(r) = pb::EndEpisodeRequest::decode(bytes) {
        out.push(Fuzzed::EndEpisode(r));
    }
    if let Ok(r) = pb::ImportEpisodicExperimentRequest::decode(bytes) {
        out.push(Fuzzed::ImportEpisodic(r));
    }
    out
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MAX),
        -2.0..2.0f64,
        any::<f64>(),
    ]
}

fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![Just("f".to_string()), Just("r".to_string()), Just(String::new()), "\\PC{0,8}", ".{0,300}"]
}

/// Structured requests: the right shapes with hostile values.
fn structured() -> impl Strategy<Value = Fuzzed> {
    // Features as packed doubles, little-endian doubles or little-endian floats, possibly cut short.
    let decide = (any_id(), prop::collection::vec(any_float(), 0..40), 0u32..20, 0u32..20, ".{0,5}", 0u8..3, 0usize..4)
        .prop_map(|(experiment_id, features, num_actions, baseline, event, encoding, cut)| {
            let mut request = per_action(&experiment_id, features, num_actions, baseline);
            request.client_event_id = event;
            if let Some(Actions::PerAction(p)) = request.actions.as_mut() {
                let mut bytes: Vec<u8> = match encoding {
                    1 => p.features.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    2 => p.features.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
                    _ => Vec::new(),
                };
                bytes.truncate(bytes.len().saturating_sub(cut));
                match encoding {
                    1 => p.features_le = bytes,
                    2 => p.features_f32_le = bytes,
                    _ => {}
                }
                if encoding != 0 {
                    p.features.clear();
                }
            }
            Fuzzed::Decide(request)
        });
    let reward =
        (any_id(), prop_oneof![Just("#0".to_string()), Just("#18446744073709551615".into()), ".{0,12}"], any_float())
            .prop_map(|(experiment, event, value)| Fuzzed::Reward(reward(&experiment, &event, value)));
    let budget = (any_id(), prop::option::of(any_float()))
        .prop_map(|(id, alpha)| Fuzzed::Budget(pb::UpdateRiskBudgetRequest { id, alpha }));
    let observe = (0u32..30, 0u32..10, 0u32..5, prop::option::of(any_float()), 0u32..10).prop_map(
        |(step, state, action, reward, next_state)| {
            Fuzzed::Observe(pb::ObserveRequest { experiment_id: "r".into(), step, state, action, reward, next_state })
        },
    );
    let create =
        (any_id(), 0u32..5000, any_float(), any_float(), any_float()).prop_map(|(id, dim, alpha, delta, noise)| {
            let mut spec = shared_spec(pb::Algorithm::Clucb, dim);
            spec.alpha = Some(alpha);
            spec.delta = Some(delta);
            spec.noise_scale = Some(noise);
            Fuzzed::Create(pb::CreateExperimentRequest { id, spec: Some(spec) })
        });
    let episodic_budget = (any_id(), prop::option::of(any_float())).prop_map(|(experiment_id, alpha)| {
        Fuzzed::EpisodicBudget(pb::UpdateEpisodicRiskBudgetRequest { experiment_id, alpha })
    });
    let episode = prop::option::of(prop_oneof![0u64..4, Just(u64::MAX)]);
    let start = (any_id(), episode.clone())
        .prop_map(|(experiment_id, episode)| Fuzzed::StartEpisode(pb::StartEpisodeRequest { experiment_id, episode }));
    let end = (any_id(), episode)
        .prop_map(|(experiment_id, episode)| Fuzzed::EndEpisode(pb::EndEpisodeRequest { experiment_id, episode }));
    // An episodic export whose k-th number is replaced by a hostile one: sizes, counts, actions, indices.
    let export = episodic_export();
    let numbers = export.match_indices(|c: char| c.is_ascii_digit()).count();
    let import = (
        0..numbers,
        prop_oneof![Just("-1"), Just("1e308"), Just("18446744073709551615"), Just("7"), Just("0")],
        0u32..1000,
    )
        .prop_map(move |(k, hostile, suffix)| {
            let (at, _) = export.match_indices(|c: char| c.is_ascii_digit()).nth(k).expect("k < numbers");
            let model = format!("{}{hostile}{}", &export[..at], &export[at + 1..]);
            let id = format!("imported-{suffix}");
            Fuzzed::ImportEpisodic(pb::ImportEpisodicExperimentRequest { model: model.into_bytes(), id })
        });
    prop_oneof![decide, reward, budget, observe, create, episodic_budget, start, end, import]
}

/// A valid export of a small, fresh episodic experiment (what ExportEpisodicExperiment writes).
fn episodic_export() -> String {
    use safebet_engine::{EpisodicConfig, EpisodicLearner, RlAlgorithm, StartState};
    let config = EpisodicConfig {
        algorithm: RlAlgorithm::ConservativeUcbvi,
        states: 3,
        actions: 2,
        horizon: 4,
        start: StartState::Fixed { state: 0 },
        baseline_policy: vec![0, 1, 0],
        baseline_value: Some(0.5),
        alpha: 0.1,
        delta: 0.05,
        reward_range: [0.0, 1.0],
        bonus_scale: 1.0,
    };
    let learner = serde_json::to_string(&EpisodicLearner::new(config).unwrap()).unwrap();
    format!(
        r#"{{"format":"{}","id":"imported","state":{{"learner":{learner},"sequence":0}}}}"#,
        safebet_service::EPISODIC_EXPORT_FORMAT
    )
}

#[test]
fn fuzzed_requests_never_break_the_service_and_rejections_change_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (server, clients) = runtime.block_on(async {
        let server = TestServer::start().await;
        let mut admin = server.admin().await;
        // Features kept as f32, so hostile doubles also meet the float32 range check.
        let mut spec = shared_spec(pb::Algorithm::Clucb, 2);
        spec.feature_precision = pb::FeaturePrecision::F32 as i32;
        create(&mut admin, "f", spec).await;
        let mut episodes = EpisodeServiceClient::new(server.channel().await);
        let spec = pb::EpisodicSpec {
            algorithm: pb::RlAlgorithm::ConservativeUcbvi as i32,
            states: 3,
            actions: 2,
            horizon: 5,
            baseline_policy: vec![0, 0, 0],
            ..Default::default()
        };
        episodes
            .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "r".into(), spec: Some(spec) })
            .await
            .unwrap();
        episodes
            .start_episode(pb::StartEpisodeRequest { experiment_id: "r".into(), ..Default::default() })
            .await
            .unwrap();
        // The export the import cases mutate is a valid one.
        let model = episodic_export().into_bytes();
        let base = pb::ImportEpisodicExperimentRequest { model, id: "imported-base".into() };
        episodes.import_episodic_experiment(base).await.unwrap();
        let clients = Clients { admin, decisions: server.decisions().await, episodes };
        (server, std::cell::RefCell::new(clients))
    });
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            for request in from_bytes(&bytes) {
                runtime.block_on(clients.borrow_mut().send(request));
            }
            Ok(())
        })
        .unwrap();
    let mut runner = TestRunner::new(Config { cases: 600, failure_persistence: None, ..Config::default() });
    runner
        .run(&structured(), |request| {
            runtime.block_on(clients.borrow_mut().send(request));
            Ok(())
        })
        .unwrap();
    runtime.block_on(server.stop()).unwrap();
}
