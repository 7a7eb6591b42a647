//! An experiment's whole life over the API, and the safety layer's behaviour as a caller sees it.

use std::time::Duration;

use safebet_proto as pb;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_of_an_experiment() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut decisions = server.decisions().await;

    let mut spec = shared_spec(pb::Algorithm::Clucb, 4);
    spec.alpha = Some(0.1);
    let created = create(&mut admin, "checkout", spec.clone()).await;
    assert_eq!(created.id, "checkout");
    assert_eq!(created.state, pb::ExperimentState::Active as i32);
    let effective = created.spec.unwrap();
    assert_eq!(effective.alpha, Some(0.1));
    assert_eq!(effective.delta, Some(0.05), "defaults are filled in");
    assert!(created.created_unix_ms > 0);

    let again = admin
        .create_experiment(pb::CreateExperimentRequest { id: "checkout".into(), spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    create(&mut admin, "another", arms_spec(pb::Algorithm::ConservativeUcb, &["red", "green", "blue"])).await;
    let listed = admin.list_experiments(pb::ListExperimentsRequest {}).await.unwrap().into_inner();
    let ids: Vec<_> = listed.experiments.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["another", "checkout"]);

    // Decide and reward a few rounds.
    let mut problem = LinearProblem::new(4, 5, 1);
    let mut reward_sum = 0.0;
    for t in 0..50u64 {
        let x = problem.round();
        let baseline = problem.ranked(&x, 2) as u32;
        let answer = decisions.decide(per_action("checkout", x.clone(), 5, baseline)).await.unwrap().into_inner();
        assert_eq!(answer.event_id, format!("#{t}"));
        assert_eq!(answer.sequence, 2 * t + 1);
        assert_eq!(answer.model_version, t);
        assert!(answer.action_index < 5);
        assert!(answer.propensity > 0.0 && answer.propensity <= 1.0);
        assert_eq!(answer.played_baseline, answer.action_index == baseline);
        let r = problem.reward(&x, answer.action_index as usize);
        reward_sum += r;
        let applied = decisions.reward(reward("checkout", &answer.event_id, r)).await.unwrap().into_inner();
        assert_eq!(applied.model_version, t + 1);
    }
    let report = report(&mut admin, "checkout").await;
    assert_eq!((report.decisions, report.rewards_received, report.rewards_pending), (50, 50, 0));
    assert!((report.cumulative_reward - reward_sum).abs() < 1e-9);
    assert_eq!(report.model_version, 50);
    assert_eq!(report.sequence, 100);
    assert_eq!(report.learner_plays + report.baseline_plays, 50);
    assert!((report.baseline_play_share - report.baseline_plays as f64 / 50.0).abs() < 1e-12);
    assert!(report.budget_margin.is_some(), "CLUCB reports its budget margin");
    // Baseline rewards are unknown here: the report carries the learner's estimate of their sum, a plausible
    // share of the 50 rounds' rewards in [0, 1].
    let estimate = report.baseline_estimate.expect("CLUCB estimates the baseline's cumulative reward");
    assert!((0.0..=50.0).contains(&estimate), "baseline estimate {estimate}");

    // Steer the risk budget.
    let updated = admin
        .update_risk_budget(pb::UpdateRiskBudgetRequest { id: "checkout".into(), alpha: Some(0.3) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().alpha, Some(0.3));
    assert_eq!(crate::support::report(&mut admin, "checkout").await.alpha, 0.3);

    // Kill switch: every decision plays the baseline and is still counted.
    let paused = admin.pause_experiment(pb::PauseExperimentRequest { id: "checkout".into() }).await.unwrap();
    assert_eq!(paused.into_inner().state, pb::ExperimentState::Paused as i32);
    for _ in 0..5 {
        let x = problem.round();
        let answer = decisions.decide(per_action("checkout", x, 5, 3)).await.unwrap().into_inner();
        assert_eq!(answer.action_index, 3);
        assert_eq!(answer.fallback, pb::Fallback::Paused as i32);
        assert!(answer.played_baseline);
        decisions.reward(reward("checkout", &answer.event_id, 0.5)).await.unwrap();
    }
    let during = crate::support::report(&mut admin, "checkout").await;
    assert_eq!(during.state, pb::ExperimentState::Paused as i32);
    assert_eq!(during.forced_baseline_plays, 5);
    assert_eq!(during.decisions, 55);
    let resumed = admin.resume_experiment(pb::ResumeExperimentRequest { id: "checkout".into() }).await.unwrap();
    assert_eq!(resumed.into_inner().state, pb::ExperimentState::Active as i32);
    let answer = decisions.decide(per_action("checkout", problem.round(), 5, 3)).await.unwrap().into_inner();
    assert_ne!(answer.fallback, pb::Fallback::Paused as i32);

    // Delete: the experiment and its events are gone.
    admin.delete_experiment(pb::DeleteExperimentRequest { id: "checkout".into() }).await.unwrap();
    let gone = admin.get_experiment(pb::GetExperimentRequest { id: "checkout".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = decisions.decide(per_action("checkout", problem.round(), 5, 0)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = decisions.reward(reward("checkout", &answer.event_id, 0.5)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let listed = admin.list_experiments(pb::ListExperimentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.experiments.len(), 1);
    server.stop().await.unwrap();
}

/// Kazerouni et al. (2017): with nothing learned the budget cannot cover exploring, so the first decisions
/// play the baseline; as the confidence set shrinks and reward is banked, the learner takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_decisions_fall_back_to_the_baseline_and_later_ones_learn() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut decisions = server.decisions().await;
    let mut spec = shared_spec(pb::Algorithm::Clucb, 4);
    spec.alpha = Some(0.05);
    create(&mut admin, "safe", spec).await;

    let mut problem = LinearProblem::new(4, 5, 7);
    let rounds = 3000;
    let mut plays = Vec::with_capacity(rounds);
    let (mut learned_reward, mut baseline_reward) = (0.0, 0.0);
    for _ in 0..rounds {
        let x = problem.round();
        let baseline = problem.ranked(&x, 2);
        let answer = decisions.decide(per_action("safe", x.clone(), 5, baseline as u32)).await.unwrap().into_inner();
        plays.push(answer.clone());
        learned_reward += problem.mean(&x, answer.action_index as usize);
        baseline_reward += problem.mean(&x, baseline);
        // The constraint itself, on expected rewards, at every round.
        assert!(learned_reward >= 0.95 * baseline_reward - 1e-9, "the safety constraint broke");
        let r = problem.reward(&x, answer.action_index as usize);
        decisions.reward(reward("safe", &answer.event_id, r)).await.unwrap();
    }
    // With alpha = 0.05 on this problem the learner first deviates after about 17 rounds.
    let early = &plays[..10];
    assert!(early.iter().all(|a| a.played_baseline), "early decisions must play the baseline");
    assert!(
        early.iter().any(|a| a.fallback == pb::Fallback::Budget as i32),
        "the safety rule, not chance, kept the baseline"
    );
    let late = &plays[rounds - 1000..];
    let late_learner = late.iter().filter(|a| !a.played_baseline).count();
    assert!(late_learner > 500, "the learner should take over later: {late_learner} of 1000 late rounds");
    let report = report(&mut admin, "safe").await;
    assert!(report.budget_fallbacks > 0);
    assert!(report.baseline_play_share < 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_layouts_and_reward_timeouts() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut decisions = server.decisions().await;

    // Arms with names: the baseline by name, the answer names its arm.
    create(&mut admin, "colours", arms_spec(pb::Algorithm::Ucb1, &["red", "green", "blue"])).await;
    let answer = decisions
        .decide(pb::DecideRequest {
            experiment_id: "colours".into(),
            baseline: Some(pb::decide_request::Baseline::BaselineActionId("green".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.action_id, ["red", "green", "blue"][answer.action_index as usize]);

    // Disjoint layout with a shared context.
    create(&mut admin, "disjoint", disjoint_spec(pb::Algorithm::Clucb2, 3, 4)).await;
    let answer = decisions
        .decide(pb::DecideRequest {
            experiment_id: "disjoint".into(),
            actions: Some(pb::decide_request::Actions::SharedContext(pb::SharedContext {
                context: vec![0.5, 0.2, 0.1],
                ..Default::default()
            })),
            baseline: Some(pb::decide_request::Baseline::BaselineIndex(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.action_index, 1, "nothing learned yet: CLUCB2 keeps the baseline");

    // Per-action ids are echoed back.
    create(&mut admin, "named", shared_spec(pb::Algorithm::Linucb, 2)).await;
    let mut request = per_action("named", vec![0.1, 0.2, 0.3, 0.4], 2, 0);
    request.baseline = Some(pb::decide_request::Baseline::BaselineActionId("b".into()));
    if let Some(pb::decide_request::Actions::PerAction(p)) = &mut request.actions {
        p.action_ids = vec!["a".into(), "b".into()];
    }
    let answer = decisions.decide(request).await.unwrap().into_inner();
    assert_eq!(answer.action_id, ["a", "b"][answer.action_index as usize]);

    // Rewards that never come: recorded as 0 after the timeout, and a late reward is refused.
    let mut spec = shared_spec(pb::Algorithm::Clucb, 2);
    spec.reward_timeout_ms = 50;
    spec.on_timeout = pb::OnTimeout::DefaultReward as i32;
    spec.timeout_reward = Some(0.0);
    create(&mut admin, "late", spec).await;
    let first = decisions.decide(per_action("late", vec![0.1, 0.2, 0.3, 0.4], 2, 0)).await.unwrap().into_inner();
    let second = decisions.decide(per_action("late", vec![0.1, 0.2, 0.3, 0.4], 2, 0)).await.unwrap().into_inner();
    decisions.reward(reward("late", &first.event_id, 0.7)).await.unwrap();
    let mut report = crate::support::report(&mut admin, "late").await;
    for _ in 0..100 {
        if report.rewards_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        report = crate::support::report(&mut admin, "late").await;
    }
    assert_eq!((report.rewards_received, report.rewards_defaulted, report.rewards_pending), (1, 1, 0));
    assert!((report.cumulative_reward - 0.7).abs() < 1e-12);
    let late = decisions.reward(reward("late", &second.event_id, 0.9)).await.unwrap_err();
    assert_eq!(late.code(), Code::AlreadyExists, "{late:?}");
    server.stop().await.unwrap();
}
