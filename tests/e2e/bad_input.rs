//! Every field, wrongly filled: the right status, a message that says what is wrong, and nothing changed.

use safebet_proto as pb;
use safebet_proto::decide_request::{Actions, Baseline};
use safebet_service::Limits;
use tonic::{Code, Status};

use crate::support::*;

fn check(what: &str, result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) {
    let status = match result {
        Ok(ok) => panic!("{what}: expected {code:?}, got {ok:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().to_lowercase().contains(&needle.to_lowercase()),
        "{what}: message {:?} should mention {needle:?}",
        status.message()
    );
}

fn with_per_action(mut request: pb::DecideRequest, edit: impl FnOnce(&mut pb::PerActionFeatures)) -> pb::DecideRequest {
    if let Some(Actions::PerAction(p)) = &mut request.actions {
        edit(p);
    }
    request
}

async fn everything(server: &TestServer) -> Vec<pb::ExperimentReport> {
    let mut admin = server.admin().await;
    let list = admin.list_experiments(pb::ListExperimentsRequest {}).await.unwrap().into_inner();
    let mut reports = Vec::new();
    for e in list.experiments {
        reports.push(report(&mut admin, &e.id).await);
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_decide_and_reward_requests_are_refused_and_change_nothing() {
    let limits = Limits { max_actions: 8, max_batch: 4, max_message_bytes: 64 << 10, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], limits).await;
    let mut admin = server.admin().await;
    let mut d = server.decisions().await;
    create(&mut admin, "shared", shared_spec(pb::Algorithm::Clucb, 3)).await;
    let mut known = shared_spec(pb::Algorithm::Clucb, 2);
    known.baseline_reward = pb::BaselineReward::Known as i32;
    create(&mut admin, "known", known).await;
    create(&mut admin, "disjoint", disjoint_spec(pb::Algorithm::Linucb, 3, 4)).await;
    create(&mut admin, "arms", arms_spec(pb::Algorithm::Ucb1, &["a", "b", "c"])).await;
    let mut compact = shared_spec(pb::Algorithm::Clucb, 3);
    compact.feature_precision = pb::FeaturePrecision::F32 as i32;
    create(&mut admin, "compact", compact).await;

    let good = per_action("shared", vec![0.1, 0.2, 0.3, 0.3, 0.2, 0.1], 2, 0);
    let rewarded = d.decide(good.clone()).await.unwrap().into_inner();
    d.reward(reward("shared", &rewarded.event_id, 0.5)).await.unwrap();
    let pending = d.decide(good.clone()).await.unwrap().into_inner();
    let before = everything(&server).await;

    // Decide: which experiment.
    check(
        "empty experiment",
        d.decide(pb::DecideRequest { experiment_id: String::new(), ..good.clone() }).await,
        Code::InvalidArgument,
        "experiment id is empty",
    );
    check(
        "bad experiment id",
        d.decide(pb::DecideRequest { experiment_id: "a b".into(), ..good.clone() }).await,
        Code::InvalidArgument,
        "contains",
    );
    check(
        "unknown experiment",
        d.decide(pb::DecideRequest { experiment_id: "nope".into(), ..good.clone() }).await,
        Code::NotFound,
        "unknown experiment 'nope'",
    );
    // The actions.
    check(
        "missing actions",
        d.decide(pb::DecideRequest { actions: None, ..good.clone() }).await,
        Code::InvalidArgument,
        "needs per_action",
    );
    check(
        "wrong layout",
        d.decide(pb::DecideRequest {
            actions: Some(Actions::SharedContext(pb::SharedContext { context: vec![0.1; 3], ..Default::default() })),
            ..good.clone()
        })
        .await,
        Code::FailedPrecondition,
        "give per_action, not shared_context",
    );
    check(
        "no actions",
        d.decide(with_per_action(good.clone(), |p| {
            p.num_actions = 0;
            p.features.clear()
        }))
        .await,
        Code::InvalidArgument,
        "at least one action",
    );
    check(
        "too many actions",
        d.decide(per_action("shared", vec![0.1; 27], 9, 0)).await,
        Code::ResourceExhausted,
        "too many actions",
    );
    check(
        "wrong dimension",
        d.decide(with_per_action(good.clone(), |p| p.features.pop().map(drop).unwrap_or(()))).await,
        Code::InvalidArgument,
        "wrong dimension",
    );
    check(
        "num_actions disagrees",
        d.decide(with_per_action(good.clone(), |p| p.num_actions = 3)).await,
        Code::InvalidArgument,
        "wrong dimension",
    );
    check(
        "NaN feature",
        d.decide(with_per_action(good.clone(), |p| p.features[4] = f64::NAN)).await,
        Code::InvalidArgument,
        "features[4] (action 1, feature 1) is NaN",
    );
    check(
        "infinite feature",
        d.decide(with_per_action(good.clone(), |p| p.features[0] = f64::INFINITY)).await,
        Code::InvalidArgument,
        "must be finite",
    );
    check(
        "feature beyond float32 for an f32 experiment",
        d.decide(pb::DecideRequest {
            experiment_id: "compact".into(),
            ..with_per_action(good.clone(), |p| p.features[2] = -1e39)
        })
        .await,
        Code::InvalidArgument,
        "features[2] (action 0, feature 2) is -1e39, beyond float32's range",
    );
    // The same features as little-endian bytes.
    let le = |values: &[f64]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let good_features = vec![0.1, 0.2, 0.3, 0.3, 0.2, 0.1];
    check(
        "features twice",
        d.decide(with_per_action(good.clone(), |p| p.features_le = le(&good_features))).await,
        Code::InvalidArgument,
        "both per_action.features and per_action.features_le are set",
    );
    let as_bytes = |edit: &dyn Fn(&mut Vec<u8>)| {
        with_per_action(good.clone(), |p| {
            p.features_le = le(&p.features);
            p.features.clear();
            edit(&mut p.features_le);
        })
    };
    check(
        "ragged bytes",
        d.decide(as_bytes(&|b| b.truncate(13))).await,
        Code::InvalidArgument,
        "features_le has 13 bytes, not a whole number of 8-byte",
    );
    check(
        "bytes dimension",
        d.decide(as_bytes(&|b| b.truncate(40))).await,
        Code::InvalidArgument,
        "wrong dimension: per_action.features_le has 5 values",
    );
    check(
        "NaN in bytes",
        d.decide(as_bytes(&|b| b[24..32].copy_from_slice(&f64::NAN.to_le_bytes()))).await,
        Code::InvalidArgument,
        "per_action.features_le[3] (action 1, feature 0) is NaN",
    );
    check(
        "infinity in bytes",
        d.decide(as_bytes(&|b| b[0..8].copy_from_slice(&f64::NEG_INFINITY.to_le_bytes()))).await,
        Code::InvalidArgument,
        "features_le[0] (action 0, feature 0) is -inf",
    );
    // As little-endian floats.
    let le32 = |values: &[f64]| values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect::<Vec<u8>>();
    let as_floats = |edit: &dyn Fn(&mut Vec<u8>)| {
        with_per_action(good.clone(), |p| {
            p.features_f32_le = le32(&p.features);
            p.features.clear();
            edit(&mut p.features_f32_le);
        })
    };
    check(
        "ragged floats",
        d.decide(as_floats(&|b| b.truncate(13))).await,
        Code::InvalidArgument,
        "features_f32_le has 13 bytes, not a whole number of 4-byte",
    );
    check(
        "floats dimension",
        d.decide(as_floats(&|b| b.truncate(20))).await,
        Code::InvalidArgument,
        "wrong dimension: per_action.features_f32_le has 5 values",
    );
    check(
        "NaN in floats",
        d.decide(as_floats(&|b| b[12..16].copy_from_slice(&f32::NAN.to_le_bytes()))).await,
        Code::InvalidArgument,
        "per_action.features_f32_le[3] (action 1, feature 0) is NaN",
    );
    check(
        "doubles and floats",
        d.decide(with_per_action(as_bytes(&|_| {}), |p| p.features_f32_le = le32(&good_features))).await,
        Code::InvalidArgument,
        "both per_action.features_le and per_action.features_f32_le are set",
    );
    check(
        "action ids count",
        d.decide(with_per_action(good.clone(), |p| p.action_ids = vec!["x".into()])).await,
        Code::InvalidArgument,
        "1 ids for 2 actions",
    );
    check(
        "duplicate action ids",
        d.decide(with_per_action(good.clone(), |p| p.action_ids = vec!["x".into(), "x".into()])).await,
        Code::InvalidArgument,
        "appears twice",
    );
    check(
        "empty action id",
        d.decide(with_per_action(good.clone(), |p| p.action_ids = vec!["x".into(), String::new()])).await,
        Code::InvalidArgument,
        "action_ids[1]",
    );
    // The baseline.
    check(
        "missing baseline",
        d.decide(pb::DecideRequest { baseline: None, ..good.clone() }).await,
        Code::InvalidArgument,
        "baseline is required",
    );
    check(
        "baseline out of range",
        d.decide(pb::DecideRequest { baseline: Some(Baseline::BaselineIndex(2)), ..good.clone() }).await,
        Code::InvalidArgument,
        "baseline_index 2 is out of range",
    );
    check(
        "baseline id unknown",
        d.decide(pb::DecideRequest { baseline: Some(Baseline::BaselineActionId("zz".into())), ..good.clone() }).await,
        Code::InvalidArgument,
        "names no action",
    );
    check(
        "baseline id without ids",
        d.decide(pb::DecideRequest { baseline: Some(Baseline::BaselineActionId("a".into())), ..good.clone() }).await,
        Code::InvalidArgument,
        "names no action",
    );
    // The client event id.
    check(
        "reserved event id",
        d.decide(pb::DecideRequest { client_event_id: "#1".into(), ..good.clone() }).await,
        Code::InvalidArgument,
        "reserved",
    );
    check(
        "long event id",
        d.decide(pb::DecideRequest { client_event_id: "e".repeat(300), ..good.clone() }).await,
        Code::InvalidArgument,
        "limit is 256",
    );
    check(
        "control chars",
        d.decide(pb::DecideRequest { client_event_id: "a\nb".into(), ..good.clone() }).await,
        Code::InvalidArgument,
        "control",
    );
    // Known baseline rewards.
    let known = per_action("known", vec![0.1, 0.2, 0.3, 0.4], 2, 0);
    check(
        "missing baseline reward",
        d.decide(known.clone()).await,
        Code::FailedPrecondition,
        "baseline_expected_reward",
    );
    check(
        "NaN baseline reward",
        d.decide(pb::DecideRequest { baseline_expected_reward: Some(f64::NAN), ..known.clone() }).await,
        Code::InvalidArgument,
        "baseline_expected_reward must be finite",
    );
    check(
        "baseline reward out of range",
        d.decide(pb::DecideRequest { baseline_expected_reward: Some(2.0), ..known.clone() }).await,
        Code::InvalidArgument,
        "outside the declared range",
    );
    // Disjoint and arms layouts.
    let context = |c: Vec<f64>| pb::DecideRequest {
        experiment_id: "disjoint".into(),
        actions: Some(Actions::SharedContext(pb::SharedContext { context: c, ..Default::default() })),
        baseline: Some(Baseline::BaselineIndex(0)),
        ..Default::default()
    };
    check("context dimension", d.decide(context(vec![0.1, 0.2])).await, Code::InvalidArgument, "wrong dimension");
    check("context NaN", d.decide(context(vec![0.1, f64::NAN, 0.2])).await, Code::InvalidArgument, "context[1] is NaN");
    let context_bytes = |c: &[f64], ragged: bool| {
        let mut bytes: Vec<u8> = c.iter().flat_map(|v| v.to_le_bytes()).collect();
        if ragged {
            bytes.pop();
        }
        pb::DecideRequest {
            actions: Some(Actions::SharedContext(pb::SharedContext { context_le: bytes, ..Default::default() })),
            ..context(vec![])
        }
    };
    check(
        "context bytes dimension",
        d.decide(context_bytes(&[0.1, 0.2], false)).await,
        Code::InvalidArgument,
        "shared_context.context_le has 2 values",
    );
    check("context bytes ragged", d.decide(context_bytes(&[0.1; 3], true)).await, Code::InvalidArgument, "23 bytes");
    check(
        "context bytes NaN",
        d.decide(context_bytes(&[0.1, 0.2, f64::NAN], false)).await,
        Code::InvalidArgument,
        "context_le[2] is NaN",
    );
    check(
        "context twice",
        d.decide(pb::DecideRequest {
            actions: Some(Actions::SharedContext(pb::SharedContext {
                context: vec![0.1; 3],
                context_le: vec![0; 24],
                ..Default::default()
            })),
            ..context(vec![])
        })
        .await,
        Code::InvalidArgument,
        "both shared_context.context and shared_context.context_le",
    );
    check(
        "context floats ragged",
        d.decide(pb::DecideRequest {
            actions: Some(Actions::SharedContext(pb::SharedContext {
                context_f32_le: vec![0; 10],
                ..Default::default()
            })),
            ..context(vec![])
        })
        .await,
        Code::InvalidArgument,
        "shared_context.context_f32_le has 10 bytes, not a whole number of 4-byte",
    );
    check(
        "context floats infinite",
        d.decide(pb::DecideRequest {
            actions: Some(Actions::SharedContext(pb::SharedContext {
                context_f32_le: [0.5_f32, f32::INFINITY, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            })),
            ..context(vec![])
        })
        .await,
        Code::InvalidArgument,
        "shared_context.context_f32_le[1] is inf",
    );
    check(
        "disjoint baseline",
        d.decide(pb::DecideRequest { baseline: Some(Baseline::BaselineIndex(4)), ..context(vec![0.1; 3]) }).await,
        Code::InvalidArgument,
        "4 actions",
    );
    check(
        "arms given features",
        d.decide(pb::DecideRequest { experiment_id: "arms".into(), ..good.clone() }).await,
        Code::FailedPrecondition,
        "give arms",
    );
    // Oversized messages are refused while decoding, before any work.
    let oversized = d.decide(per_action("shared", vec![0.1; 3 * 8 * 400], 8, 0)).await;
    check("oversized request", oversized, Code::OutOfRange, "too large");

    // Batches: over the limit as a whole, per item otherwise.
    let batch = pb::DecideBatchRequest { requests: vec![good.clone(); 5] };
    check("batch too large", d.decide_batch(batch).await, Code::ResourceExhausted, "over the limit of 4");
    let rewards = pb::RewardBatchRequest { rewards: vec![reward("shared", "#1", 0.1); 5] };
    check("reward batch too large", d.reward_batch(rewards).await, Code::ResourceExhausted, "over the limit of 4");

    // Rewards.
    check("empty event id", d.reward(reward("shared", "", 0.5)).await, Code::InvalidArgument, "event_id is empty");
    check(
        "missing value",
        d.reward(pb::RewardRequest { value: None, ..reward("shared", &pending.event_id, 0.5) }).await,
        Code::InvalidArgument,
        "value is required",
    );
    check("NaN reward", d.reward(reward("shared", &pending.event_id, f64::NAN)).await, Code::InvalidArgument, "finite");
    check(
        "reward out of range",
        d.reward(reward("shared", &pending.event_id, 1.5)).await,
        Code::InvalidArgument,
        "outside the declared range [0, 1]",
    );
    check("unknown server event", d.reward(reward("shared", "#99", 0.5)).await, Code::NotFound, "unknown event");
    check(
        "unknown client event",
        d.reward(reward("shared", "nope", 0.5)).await,
        Code::NotFound,
        "unknown event 'nope'",
    );
    check("malformed server event", d.reward(reward("shared", "#x", 0.5)).await, Code::InvalidArgument, "malformed");
    check(
        "duplicate reward",
        d.reward(reward("shared", &rewarded.event_id, 0.5)).await,
        Code::AlreadyExists,
        "already has its reward",
    );
    check("reward unknown experiment", d.reward(reward("nope", "#0", 0.5)).await, Code::NotFound, "unknown experiment");

    assert_eq!(everything(&server).await, before, "a rejected request changed something");

    // Per-item results: the bad item fails alone, the good ones are decided.
    let mut bad_item = good.clone();
    bad_item.baseline = None;
    let batch = pb::DecideBatchRequest { requests: vec![good.clone(), bad_item, good.clone()] };
    let results = d.decide_batch(batch).await.unwrap().into_inner().results;
    use pb::decide_result::Outcome;
    assert!(matches!(results[0].outcome, Some(Outcome::Decision(_))));
    match &results[1].outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("baseline is required"), "{}", e.message);
        }
        other => panic!("expected an item error, got {other:?}"),
    }
    assert!(matches!(results[2].outcome, Some(Outcome::Decision(_))));
    let rewards = pb::RewardBatchRequest {
        rewards: vec![reward("shared", &pending.event_id, 0.4), reward("shared", &pending.event_id, 0.4)],
    };
    let results = d.reward_batch(rewards).await.unwrap().into_inner().results;
    assert!(matches!(results[0].outcome, Some(pb::reward_result::Outcome::Applied(_))));
    assert!(
        matches!(&results[1].outcome, Some(pb::reward_result::Outcome::Error(e)) if e.code == Code::AlreadyExists as i32),
        "{results:?}"
    );
    let after = report(&mut admin, "shared").await;
    assert_eq!((after.decisions, after.rewards_received), (4, 2));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_are_refused_and_change_nothing() {
    let limits = Limits { max_dim: 16, max_actions: 8, max_experiments: 3, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], limits).await;
    let mut admin = server.admin().await;
    create(&mut admin, "kept", shared_spec(pb::Algorithm::Clucb, 3)).await;
    let before = everything(&server).await;

    let base = shared_spec(pb::Algorithm::Clucb, 3);
    let cases: Vec<(&str, String, Option<pb::ExperimentSpec>, Code, &str)> = vec![
        ("empty id", String::new(), Some(base.clone()), Code::InvalidArgument, "empty"),
        ("bad id", "x/y".into(), Some(base.clone()), Code::InvalidArgument, "contains '/'"),
        ("long id", "x".repeat(129), Some(base.clone()), Code::InvalidArgument, "limit is 128"),
        ("taken id", "kept".into(), Some(base.clone()), Code::AlreadyExists, "already exists"),
        ("missing spec", "n".into(), None, Code::InvalidArgument, "spec is required"),
        (
            "no algorithm",
            "n".into(),
            Some(pb::ExperimentSpec { algorithm: 0, ..base.clone() }),
            Code::InvalidArgument,
            "algorithm is required",
        ),
        (
            "unknown algorithm",
            "n".into(),
            Some(pb::ExperimentSpec { algorithm: 99, ..base.clone() }),
            Code::InvalidArgument,
            "not a known algorithm",
        ),
        (
            "no layout",
            "n".into(),
            Some(pb::ExperimentSpec { layout: None, ..base.clone() }),
            Code::InvalidArgument,
            "layout is required",
        ),
        ("dim 0", "n".into(), Some(shared_spec(pb::Algorithm::Clucb, 0)), Code::InvalidArgument, "dim"),
        (
            "dim over limit",
            "n".into(),
            Some(shared_spec(pb::Algorithm::Clucb, 17)),
            Code::InvalidArgument,
            "over the limit of 16",
        ),
        (
            "actions over limit",
            "n".into(),
            Some(disjoint_spec(pb::Algorithm::Clucb, 2, 9)),
            Code::InvalidArgument,
            "over the limit of 8",
        ),
        ("no actions", "n".into(), Some(disjoint_spec(pb::Algorithm::Clucb, 2, 0)), Code::InvalidArgument, "actions"),
        (
            "alpha 1",
            "n".into(),
            Some(pb::ExperimentSpec { alpha: Some(1.0), ..base.clone() }),
            Code::InvalidArgument,
            "alpha",
        ),
        (
            "alpha NaN",
            "n".into(),
            Some(pb::ExperimentSpec { alpha: Some(f64::NAN), ..base.clone() }),
            Code::InvalidArgument,
            "alpha",
        ),
        (
            "delta 0",
            "n".into(),
            Some(pb::ExperimentSpec { delta: Some(0.0), ..base.clone() }),
            Code::InvalidArgument,
            "delta",
        ),
        (
            "lambda negative",
            "n".into(),
            Some(pb::ExperimentSpec { lambda: Some(-1.0), ..base.clone() }),
            Code::InvalidArgument,
            "lambda",
        ),
        (
            "noise 0",
            "n".into(),
            Some(pb::ExperimentSpec { noise_scale: Some(0.0), ..base.clone() }),
            Code::InvalidArgument,
            "noise_scale",
        ),
        (
            "theta bound",
            "n".into(),
            Some(pb::ExperimentSpec { theta_norm_bound: Some(f64::INFINITY), ..base.clone() }),
            Code::InvalidArgument,
            "theta_norm_bound",
        ),
        (
            "feature bound",
            "n".into(),
            Some(pb::ExperimentSpec { feature_norm_bound: Some(-2.0), ..base.clone() }),
            Code::InvalidArgument,
            "feature_norm_bound",
        ),
        (
            "reward range",
            "n".into(),
            Some(pb::ExperimentSpec { reward_range: Some(pb::RewardRange { min: 1.0, max: 0.0 }), ..base.clone() }),
            Code::InvalidArgument,
            "reward_range",
        ),
        (
            "epsilon",
            "n".into(),
            Some(pb::ExperimentSpec { epsilon: Some(1.5), ..shared_spec(pb::Algorithm::EpsilonGreedy, 3) }),
            Code::InvalidArgument,
            "epsilon",
        ),
        (
            "exploration scale",
            "n".into(),
            Some(pb::ExperimentSpec { exploration_scale: Some(0.5), ..base.clone() }),
            Code::InvalidArgument,
            "exploration_scale",
        ),
        (
            "checkpoint 0",
            "n".into(),
            Some(pb::ExperimentSpec { checkpoint_every: Some(0), ..base.clone() }),
            Code::InvalidArgument,
            "every",
        ),
        (
            "baseline enum",
            "n".into(),
            Some(pb::ExperimentSpec { baseline_reward: 9, ..base.clone() }),
            Code::InvalidArgument,
            "baseline_reward",
        ),
        (
            "timeout enum",
            "n".into(),
            Some(pb::ExperimentSpec { on_timeout: 9, ..base.clone() }),
            Code::InvalidArgument,
            "on_timeout",
        ),
        (
            "feature precision enum",
            "n".into(),
            Some(pb::ExperimentSpec { feature_precision: 9, ..base.clone() }),
            Code::InvalidArgument,
            "spec.feature_precision 9 is not a known value",
        ),
        (
            "default reward missing",
            "n".into(),
            Some(pb::ExperimentSpec {
                on_timeout: pb::OnTimeout::DefaultReward as i32,
                reward_timeout_ms: 10,
                ..base.clone()
            }),
            Code::InvalidArgument,
            "timeout_reward is required",
        ),
        (
            "default reward out of range",
            "n".into(),
            Some(pb::ExperimentSpec {
                on_timeout: pb::OnTimeout::DefaultReward as i32,
                reward_timeout_ms: 10,
                timeout_reward: Some(3.0),
                ..base.clone()
            }),
            Code::InvalidArgument,
            "on_timeout.reward",
        ),
        (
            "default reward without timeout",
            "n".into(),
            Some(pb::ExperimentSpec {
                on_timeout: pb::OnTimeout::DefaultReward as i32,
                timeout_reward: Some(0.0),
                ..base.clone()
            }),
            Code::InvalidArgument,
            "reward_timeout_ms",
        ),
        (
            "timeout reward with drop",
            "n".into(),
            Some(pb::ExperimentSpec { timeout_reward: Some(0.0), ..base.clone() }),
            Code::InvalidArgument,
            "only used with",
        ),
        (
            "huge timeout",
            "n".into(),
            Some(pb::ExperimentSpec { reward_timeout_ms: u64::MAX, ..base.clone() }),
            Code::InvalidArgument,
            "30 days",
        ),
        (
            "arms with linucb",
            "n".into(),
            Some(arms_spec(pb::Algorithm::Linucb, &["a", "b"])),
            Code::InvalidArgument,
            "layout",
        ),
        (
            "ucb1 with features",
            "n".into(),
            Some(shared_spec(pb::Algorithm::Ucb1, 3)),
            Code::InvalidArgument,
            "arms layout",
        ),
        (
            "duplicate arm ids",
            "n".into(),
            Some(arms_spec(pb::Algorithm::Ucb1, &["a", "a"])),
            Code::InvalidArgument,
            "appears twice",
        ),
        (
            "arm ids count",
            "n".into(),
            Some(pb::ExperimentSpec {
                layout: Some(pb::Layout {
                    kind: Some(pb::layout::Kind::Arms(pb::ArmsLayout { actions: 3, action_ids: vec!["a".into()] })),
                }),
                ..arms_spec(pb::Algorithm::Ucb1, &[])
            }),
            Code::InvalidArgument,
            "1 action_ids given for 3 actions",
        ),
    ];
    for (what, id, spec, code, needle) in cases {
        check(what, admin.create_experiment(pb::CreateExperimentRequest { id, spec }).await, code, needle);
    }
    let alpha = |id: &str, alpha: Option<f64>| pb::UpdateRiskBudgetRequest { id: id.into(), alpha };
    check(
        "alpha missing",
        admin.update_risk_budget(alpha("kept", None)).await,
        Code::InvalidArgument,
        "alpha is required",
    );
    check("alpha NaN", admin.update_risk_budget(alpha("kept", Some(f64::NAN))).await, Code::InvalidArgument, "[0, 1)");
    check("alpha 1", admin.update_risk_budget(alpha("kept", Some(1.0))).await, Code::InvalidArgument, "[0, 1)");
    check("alpha negative", admin.update_risk_budget(alpha("kept", Some(-0.1))).await, Code::InvalidArgument, "[0, 1)");
    check(
        "alpha unknown",
        admin.update_risk_budget(alpha("nope", Some(0.1))).await,
        Code::NotFound,
        "unknown experiment",
    );
    check(
        "get unknown",
        admin.get_experiment(pb::GetExperimentRequest { id: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );
    check(
        "get empty",
        admin.get_experiment(pb::GetExperimentRequest { id: String::new() }).await,
        Code::InvalidArgument,
        "empty",
    );
    check(
        "pause unknown",
        admin.pause_experiment(pb::PauseExperimentRequest { id: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );
    check(
        "resume unknown",
        admin.resume_experiment(pb::ResumeExperimentRequest { id: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );
    check(
        "delete unknown",
        admin.delete_experiment(pb::DeleteExperimentRequest { id: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );
    check("report unknown", admin.get_report(pb::GetReportRequest { id: "nope".into() }).await, Code::NotFound, "nope");
    assert_eq!(everything(&server).await, before, "a rejected admin request changed something");

    // The experiment limit.
    create(&mut admin, "second", base.clone()).await;
    create(&mut admin, "third", base.clone()).await;
    check(
        "too many experiments",
        admin.create_experiment(pb::CreateExperimentRequest { id: "fourth".into(), spec: Some(base) }).await,
        Code::ResourceExhausted,
        "limit",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pending_decisions_are_refused_until_rewards_arrive() {
    let limits = Limits { max_pending: 3, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], limits).await;
    let mut admin = server.admin().await;
    let mut d = server.decisions().await;
    create(&mut admin, "e", shared_spec(pb::Algorithm::Linucb, 1)).await;
    let request = per_action("e", vec![0.5, 0.2], 2, 0);
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(d.decide(request.clone()).await.unwrap().into_inner().event_id);
    }
    check("pending limit", d.decide(request.clone()).await, Code::ResourceExhausted, "waiting for a reward");
    d.reward(reward("e", &events[0], 0.5)).await.unwrap();
    d.decide(request).await.unwrap();
}
