//! Many concurrent clients on several experiments: every experiment's history, replayed sequentially in
//! `sequence` order through the engine alone, gives exactly the answers the service gave.

use std::sync::Arc;

use safebet_engine::{ActionSet, Fallback, Policy, Round};
use safebet_proto as pb;
use safebet_proto::decide_request::{Actions, Baseline};
use safebet_service::ExperimentDef;
use tokio::sync::Mutex;

use crate::support::*;

#[derive(Debug, Clone)]
enum Op {
    Decide { request: Box<pb::DecideRequest>, answer: pb::DecideResponse },
    Reward { event_id: String, value: f64, answer: pb::RewardResponse },
}

impl Op {
    fn sequence(&self) -> u64 {
        match self {
            Op::Decide { answer, .. } => answer.sequence,
            Op::Reward { answer, .. } => answer.sequence,
        }
    }
}

/// A deterministic request of experiment `spec` for (client, step).
fn request(id: &str, spec: &pb::ExperimentSpec, stream: &mut Stream) -> pb::DecideRequest {
    let actions = match spec.layout.as_ref().and_then(|l| l.kind.as_ref()) {
        Some(pb::layout::Kind::Shared(s)) => {
            let k = 5;
            let features = (0..k * s.dim).map(|_| stream.uniform() * 0.5).collect();
            Some(Actions::PerAction(pb::PerActionFeatures { features, num_actions: k, ..Default::default() }))
        }
        Some(pb::layout::Kind::Disjoint(d)) => Some(Actions::SharedContext(pb::SharedContext {
            context: (0..d.dim).map(|_| stream.uniform() * 0.5).collect(),
            ..Default::default()
        })),
        _ => Some(Actions::Arms(pb::Arms {})),
    };
    pb::DecideRequest {
        experiment_id: id.into(),
        actions,
        baseline: Some(Baseline::BaselineIndex((stream.next_u64() % 3) as u32)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_equal_a_sequential_replay() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let experiments: Vec<(&str, pb::ExperimentSpec)> = vec![
        ("clucb", shared_spec(pb::Algorithm::Clucb, 4)),
        ("lints", shared_spec(pb::Algorithm::Lints, 4)),
        ("greedy", pb::ExperimentSpec { seed: Some(9), ..shared_spec(pb::Algorithm::EpsilonGreedy, 3) }),
        ("clucb2", disjoint_spec(pb::Algorithm::Clucb2, 3, 4)),
        ("arms", arms_spec(pb::Algorithm::ConservativeUcb, &["a", "b", "c", "d"])),
    ];
    for (id, spec) in &experiments {
        create(&mut admin, id, spec.clone()).await;
    }
    let channels: Vec<_> = futures_channels(&server, 4).await;
    let logs: Vec<Arc<Mutex<Vec<Op>>>> = experiments.iter().map(|_| Arc::new(Mutex::new(Vec::new()))).collect();

    const CLIENTS: usize = 6;
    const STEPS: usize = 40;
    let mut tasks = Vec::new();
    for (e, (id, spec)) in experiments.iter().enumerate() {
        for client in 0..CLIENTS {
            let mut d = pb::decision_service_client::DecisionServiceClient::new(
                channels[(e * CLIENTS + client) % channels.len()].clone(),
            );
            let (id, spec, log) = (id.to_string(), spec.clone(), logs[e].clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = Stream::new((e * 1000 + client) as u64);
                for step in 0..STEPS {
                    // The last client of each experiment decides in batches of 4.
                    let requests: Vec<_> = if client == CLIENTS - 1 {
                        if step % 4 != 0 {
                            continue;
                        }
                        (0..4).map(|_| request(&id, &spec, &mut stream)).collect()
                    } else {
                        vec![request(&id, &spec, &mut stream)]
                    };
                    let answers: Vec<pb::DecideResponse> = if requests.len() == 1 {
                        vec![d.decide(requests[0].clone()).await.unwrap().into_inner()]
                    } else {
                        let batch = pb::DecideBatchRequest { requests: requests.clone() };
                        d.decide_batch(batch)
                            .await
                            .unwrap()
                            .into_inner()
                            .results
                            .into_iter()
                            .map(|r| match r.outcome {
                                Some(pb::decide_result::Outcome::Decision(a)) => a,
                                other => panic!("batch item failed: {other:?}"),
                            })
                            .collect()
                    };
                    for (request, answer) in requests.into_iter().zip(answers) {
                        log.lock().await.push(Op::Decide { request: Box::new(request), answer: answer.clone() });
                        let value = ((answer.action_index as f64 * 0.17 + stream.uniform() * 0.3) % 1.0).abs();
                        let applied = d.reward(reward(&id, &answer.event_id, value)).await.unwrap().into_inner();
                        log.lock().await.push(Op::Reward { event_id: answer.event_id, value, answer: applied });
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    for (e, (id, spec)) in experiments.iter().enumerate() {
        let mut ops = logs[e].lock().await.clone();
        ops.sort_by_key(Op::sequence);
        let sequences: Vec<u64> = ops.iter().map(Op::sequence).collect();
        assert_eq!(sequences, (1..=ops.len() as u64).collect::<Vec<_>>(), "{id}: a gap or repeat in the history");
        let definition = ExperimentDef::from_spec(id.to_string(), spec.clone()).unwrap();
        let mut policy = Policy::new(definition.policy).unwrap();
        let mut learned = 0;
        for op in &ops {
            match op {
                Op::Decide { request, answer } => {
                    let actions = match &request.actions {
                        Some(Actions::PerAction(p)) => {
                            ActionSet::PerAction { features: &p.features, num_actions: p.num_actions as usize }
                        }
                        Some(Actions::SharedContext(c)) => ActionSet::SharedContext { context: &c.context },
                        _ => ActionSet::Arms,
                    };
                    let Some(Baseline::BaselineIndex(b)) = request.baseline else { unreachable!() };
                    let round = Round { actions, baseline: b as usize, baseline_expected_reward: None };
                    let decision = policy.decide(&round).unwrap();
                    let what = format!("{id}, sequence {}", answer.sequence);
                    assert_eq!(answer.event_id, format!("#{}", decision.id), "{what}");
                    assert_eq!(answer.action_index as usize, decision.action, "{what}");
                    assert_eq!(answer.proposed_action_index as usize, decision.proposed_action, "{what}");
                    assert_eq!(answer.propensity.to_bits(), decision.propensity.probability.to_bits(), "{what}");
                    let fallback = match decision.fallback {
                        Fallback::None => pb::Fallback::None,
                        Fallback::Budget => pb::Fallback::Budget,
                        Fallback::Forced => pb::Fallback::Paused,
                    };
                    assert_eq!(answer.fallback, fallback as i32, "{what}");
                    assert_eq!(answer.model_version, policy.stats().model_version, "{what}");
                    learned += usize::from(!decision.played_baseline());
                }
                Op::Reward { event_id, value, answer } => {
                    let decision_id = event_id.trim_start_matches('#').parse().unwrap();
                    policy.observe_reward(decision_id, *value).unwrap();
                    assert_eq!(answer.model_version, policy.stats().model_version);
                }
            }
        }
        let report = report(&mut admin, id).await;
        let stats = policy.stats();
        assert_eq!(report.decisions, stats.decisions);
        assert_eq!(report.decisions as usize, (CLIENTS - 1) * STEPS + STEPS);
        assert_eq!(report.learner_plays, stats.learner_plays);
        assert_eq!(report.cumulative_reward.to_bits(), stats.reward_sum.to_bits());
        assert_eq!(report.model_version, stats.model_version);
        if *id == "lints" || *id == "greedy" {
            assert!(learned > 0, "{id}: randomised learners should explore at least once");
        }
    }
    server.stop().await.unwrap();
}

async fn futures_channels(server: &TestServer, n: usize) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(server.channel().await);
    }
    channels
}
