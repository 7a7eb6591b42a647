//! Features sent as little-endian bytes (`features_le`, `context_le`) are the same features as packed doubles:
//! two identical experiments, one fed each way, make the same decisions and end in the same state.

use safebet_proto as pb;
use safebet_proto::decide_request::{Actions, Baseline};

use crate::support::*;

fn le(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The fields of an answer that must not depend on how the features travelled.
fn outcome(d: &pb::DecideResponse) -> (u32, u64, i32, bool, u32, u64, u64) {
    (
        d.action_index,
        d.propensity.to_bits(),
        d.fallback,
        d.played_baseline,
        d.proposed_action_index,
        d.model_version,
        d.sequence,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_and_packed_doubles_make_the_same_decisions() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut d = server.decisions().await;
    let (dim, actions) = (5, 4);
    for id in ["shared-packed", "shared-bytes"] {
        create(&mut admin, id, shared_spec(pb::Algorithm::Clucb, dim as u32)).await;
    }
    for id in ["disjoint-packed", "disjoint-bytes"] {
        create(&mut admin, id, disjoint_spec(pb::Algorithm::Clucb2, dim as u32, actions as u32)).await;
    }
    let mut problem = LinearProblem::new(dim, actions, 11);
    let mut fallbacks = 0;
    for round in 0..300 {
        let x = problem.round();
        let baseline = problem.ranked(&x, 1);
        let shared = |id: &str, as_bytes: bool| {
            let mut p = pb::PerActionFeatures { num_actions: actions as u32, ..Default::default() };
            if as_bytes {
                p.features_le = le(&x);
            } else {
                p.features = x.clone();
            }
            pb::DecideRequest {
                experiment_id: id.into(),
                actions: Some(Actions::PerAction(p)),
                baseline: Some(Baseline::BaselineIndex(baseline as u32)),
                ..Default::default()
            }
        };
        let context = &x[..dim];
        let disjoint = |id: &str, as_bytes: bool| pb::DecideRequest {
            experiment_id: id.into(),
            actions: Some(Actions::SharedContext(if as_bytes {
                pb::SharedContext { context_le: le(context), ..Default::default() }
            } else {
                pb::SharedContext { context: context.to_vec(), ..Default::default() }
            })),
            baseline: Some(Baseline::BaselineIndex(0)),
            ..Default::default()
        };
        for (packed, bytes) in [
            (shared("shared-packed", false), shared("shared-bytes", true)),
            (disjoint("disjoint-packed", false), disjoint("disjoint-bytes", true)),
        ] {
            let a = d.decide(packed.clone()).await.unwrap().into_inner();
            let b = d.decide(bytes.clone()).await.unwrap().into_inner();
            assert_eq!(outcome(&a), outcome(&b), "round {round}, {}", packed.experiment_id);
            fallbacks += u32::from(a.fallback == pb::Fallback::Budget as i32);
            let value = problem.reward(&x, a.action_index as usize % actions);
            d.reward(reward(&packed.experiment_id, &a.event_id, value)).await.unwrap();
            d.reward(reward(&bytes.experiment_id, &b.event_id, value)).await.unwrap();
        }
    }
    // The conservative rule was exercised, not just the learner's first choice.
    assert!(fallbacks > 0, "no round fell back to the baseline");
    for (packed, bytes) in [("shared-packed", "shared-bytes"), ("disjoint-packed", "disjoint-bytes")] {
        let mut a = report(&mut admin, packed).await;
        let mut b = report(&mut admin, bytes).await;
        a.experiment_id.clear();
        b.experiment_id.clear();
        assert_eq!(a, b, "{packed} and {bytes} ended apart");
    }
}
