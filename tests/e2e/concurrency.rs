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

/// A `DecideBatch` decides each run of items for one experiment under one hold of its lock: its answers must
/// be exactly those the same requests get one `Decide` at a time on a twin experiment, across runs longer
/// than one hold, a bad item inside a run (it fails alone and takes no sequence), another experiment's items
/// between runs and an idempotent retry inside the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_as_its_items_would_one_by_one() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let spec = pb::ExperimentSpec { seed: Some(3), ..shared_spec(pb::Algorithm::Clucb, 4) };
    for id in ["batched", "twin", "other"] {
        create(&mut admin, id, spec.clone()).await;
    }
    let mut d = pb::decision_service_client::DecisionServiceClient::new(server.channel().await);
    let mut stream = Stream::new(11);
    let for_experiment = |mut request: pb::DecideRequest, id: &str| {
        request.experiment_id = id.into();
        request
    };
    for round in 0..3 {
        // 90 items: 40 for `batched`, a NaN one, 39 more (the 20th with a client event id that the last
        // repeats), 3 for `other`, then 7 for `batched` again.
        let mut items: Vec<pb::DecideRequest> = (0..90)
            .map(|i| {
                let id = if (80..83).contains(&i) { "other" } else { "batched" };
                request(id, &spec, &mut stream)
            })
            .collect();
        if let Some(Actions::PerAction(p)) = &mut items[40].actions {
            p.features[3] = f64::NAN;
        }
        items[60].client_event_id = format!("retry-{round}");
        items[79] = items[60].clone();
        let results =
            d.decide_batch(pb::DecideBatchRequest { requests: items.clone() }).await.unwrap().into_inner().results;
        assert_eq!(results.len(), items.len());
        let mut rewards = Vec::new();
        for (i, (item, result)) in items.iter().zip(results).enumerate() {
            let batched = match result.outcome {
                Some(pb::decide_result::Outcome::Decision(answer)) => answer,
                Some(pb::decide_result::Outcome::Error(e)) if i == 40 => {
                    assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{}", e.message);
                    continue;
                }
                other => panic!("round {round}, item {i}: {other:?}"),
            };
            if item.experiment_id != "batched" {
                continue;
            }
            let alone = d.decide(for_experiment(item.clone(), "twin")).await.unwrap().into_inner();
            assert_eq!(batched, alone, "round {round}, item {i}: the batch answered otherwise than Decide");
            if i != 79 {
                rewards.push((batched.event_id, stream.uniform()));
            }
        }
        // The same rewards for both, so the next round decides with a model that learned.
        for (event_id, value) in rewards {
            for id in ["batched", "twin"] {
                d.reward(reward(id, &event_id, value)).await.unwrap();
            }
        }
    }
    let (batched, twin) = (report(&mut admin, "batched").await, report(&mut admin, "twin").await);
    assert_eq!((batched.decisions, batched.rewards_received), (twin.decisions, twin.rewards_received));
    assert_eq!(batched.decisions, 3 * 85, "85 decisions a round: the NaN item and the retry decide nothing");
    assert_eq!(batched.cumulative_reward.to_bits(), twin.cumulative_reward.to_bits());
}
