//! A Decide retried with the same client event id returns the first answer and decides nothing new; a
//! reward is applied once.

use safebet_proto as pb;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_decide_returns_the_first_answer() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut d = server.decisions().await;
    create(&mut admin, "e", shared_spec(pb::Algorithm::Lints, 2)).await;
    create(&mut admin, "f", shared_spec(pb::Algorithm::Lints, 2)).await;

    let mut request = per_action("e", vec![0.3, 0.1, 0.2, 0.5, 0.9, 0.1], 3, 0);
    request.client_event_id = "order-1".into();
    let first = d.decide(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.event_id, "order-1");
    // Retries, even with different features, replay the first answer.
    let mut changed = request.clone();
    changed.baseline = Some(pb::decide_request::Baseline::BaselineIndex(2));
    assert_eq!(d.decide(request.clone()).await.unwrap().into_inner(), first);
    assert_eq!(d.decide(changed).await.unwrap().into_inner(), first);
    let batch = d
        .decide_batch(pb::DecideBatchRequest { requests: vec![request.clone(), request.clone()] })
        .await
        .unwrap()
        .into_inner();
    for result in batch.results {
        assert_eq!(result.outcome, Some(pb::decide_result::Outcome::Decision(first.clone())));
    }
    assert_eq!(report(&mut admin, "e").await.decisions, 1);

    // The reward is applied once, by client event id.
    d.reward(reward("e", "order-1", 0.6)).await.unwrap();
    let twice = d.reward(reward("e", "order-1", 0.6)).await.unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists, "{twice:?}");
    let after = report(&mut admin, "e").await;
    assert_eq!((after.decisions, after.rewards_received), (1, 1));
    assert!((after.cumulative_reward - 0.6).abs() < 1e-12);
    // A retry after the reward still returns the first answer.
    assert_eq!(d.decide(request.clone()).await.unwrap().into_inner(), first);

    // Client event ids are per experiment.
    let mut elsewhere = request.clone();
    elsewhere.experiment_id = "f".into();
    let other = d.decide(elsewhere).await.unwrap().into_inner();
    assert_eq!(other.event_id, "order-1");
    assert_eq!(report(&mut admin, "f").await.decisions, 1);
    assert_eq!(report(&mut admin, "e").await.decisions, 1);

    // A new id decides anew.
    request.client_event_id = "order-2".into();
    let second = d.decide(request).await.unwrap().into_inner();
    assert_eq!(second.event_id, "order-2");
    assert_eq!(second.sequence, first.sequence + 2);
    server.stop().await.unwrap();
}
