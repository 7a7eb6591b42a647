//! The drift guard over gRPC: when the world changes under a learner, the experiment falls back to the
//! baseline on its own, the report shows the alarm, the alarm survives a restart, and an operator's
//! ResumeExperiment clears it.

use safebet_proto as pb;
use safebet_service::Limits;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_world_raises_the_alarm_falls_back_and_resume_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    let mut spec = shared_spec(pb::Algorithm::Clucb2, 4);
    spec.alpha = Some(0.2);
    spec.drift_guard = Some(pb::DriftGuard { threshold: Some(20.0), ..Default::default() });
    let created = create(&mut admin, "drifting", spec).await;
    let guard = created.spec.unwrap().drift_guard.expect("the guard is part of the spec");
    assert_eq!((guard.allowance, guard.warmup, guard.cap), (Some(1.0), Some(50), Some(16.0)), "defaults filled in");

    let mut problem = LinearProblem::new(4, 5, 3);
    let play = async |d: &mut pb::decision_service_client::DecisionServiceClient<_>,
                      problem: &mut LinearProblem,
                      changed: bool| {
        let features = problem.round();
        let answer = d.decide(per_action("drifting", features.clone(), 5, 0)).await.unwrap().into_inner();
        let mut value = problem.reward(&features, answer.action_index as usize);
        if changed {
            // The world turned: what paid now costs, and the other way round.
            value = 1.0 - value;
        }
        d.reward(reward("drifting", &answer.event_id, value)).await.unwrap();
        answer
    };
    for _ in 0..400 {
        play(&mut d, &mut problem, false).await;
    }
    let quiet = report(&mut admin, "drifting").await;
    assert_eq!(quiet.drift_alarm, None, "no alarm while the model fits (statistic {})", quiet.drift_statistic);

    let mut alarmed_after = None;
    for t in 0..300 {
        play(&mut d, &mut problem, true).await;
        if report(&mut admin, "drifting").await.drift_alarm.is_some() {
            alarmed_after = Some(t + 1);
            break;
        }
    }
    let alarmed_after = alarmed_after.expect("the guard never noticed the change");
    assert!(alarmed_after <= 100, "detection took {alarmed_after} rewards");
    // While alarmed every decision plays the baseline, marked as forced.
    for _ in 0..20 {
        let answer = play(&mut d, &mut problem, true).await;
        assert!(answer.played_baseline && answer.fallback == pb::Fallback::Paused as i32, "{answer:?}");
    }
    let alarm = report(&mut admin, "drifting").await.drift_alarm.unwrap();
    // The automatic fallback is in the audit trail, by the drift guard.
    let trail = admin
        .list_audit_entries(pb::ListAuditEntriesRequest { experiment_id: "drifting".into() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(trail.iter().any(|e| e.actor == "drift-guard" && e.action == "drift_alarm"), "{trail:?}");

    // The alarm is part of the state: a restarted server still holds it.
    server.stop().await.unwrap();
    let server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let (mut admin, mut d) = (server.admin().await, server.decisions().await);
    assert_eq!(report(&mut admin, "drifting").await.drift_alarm, Some(alarm));

    admin.resume_experiment(pb::ResumeExperimentRequest { id: "drifting".into() }).await.unwrap();
    let resumed = report(&mut admin, "drifting").await;
    assert_eq!((resumed.drift_alarm, resumed.drift_statistic), (None, 0.0));
    let answer = play(&mut d, &mut problem, true).await;
    assert_ne!(answer.fallback, pb::Fallback::Paused as i32, "resumed: the learner decides again");
    server.stop().await.unwrap();
}
