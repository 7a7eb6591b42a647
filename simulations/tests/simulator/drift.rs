//! The drift scenario with and without the drift guard: with it, no false alarm before the change, the
//! change detected, and the constraint kept after it; without it, CLUCB2 with unknown baseline rewards
//! undercuts the baseline once its model goes stale. A stationary copy raises no alarm at all.

use safebet_simulations::{EnvironmentSpec, RunOptions, Scenario, simulate};

use crate::crate_dir;

fn drift_scenario() -> Scenario {
    let mut scenario = Scenario::from_file(&crate_dir().join("scenarios/drift.toml")).unwrap();
    scenario.alphas = vec![0.05];
    scenario
}

#[test]
fn the_guard_detects_the_drift_without_false_alarms_and_keeps_the_constraint() {
    let scenario = drift_scenario();
    let options = RunOptions { runs: Some(20), threads: 2, ..RunOptions::default() };
    let (summary, _) = simulate(&scenario, &options, &|_| {}).unwrap().summary().unwrap();
    let mut guarded = 0;
    for r in &summary.results {
        match r.drift {
            Some(d) => {
                guarded += 1;
                assert_eq!(d.change_at, Some(10_000));
                assert_eq!(d.false_alarm_runs, 0, "{}: alarms before the change", r.label);
                assert!(
                    d.alarm_runs >= 18,
                    "{}: the drift went unnoticed in {} runs",
                    r.label,
                    u64::from(r.runs) - d.alarm_runs
                );
                assert_eq!(d.violations_after_change, 0, "{}: broke the constraint after the change", r.label);
                assert_eq!(r.violation_runs, 0, "{}", r.label);
            }
            None if r.label == "CLUCB2 unknown" => {
                assert!(r.violation_runs > 0, "the unguarded CLUCB2 should undercut the baseline after the drift");
            }
            None => {}
        }
    }
    assert_eq!(guarded, 2);
}

#[test]
fn a_stationary_world_raises_no_alarm() {
    let mut scenario = drift_scenario();
    if let EnvironmentSpec::Linear(spec) = &mut scenario.environment {
        spec.change = None;
        spec.change_at = None;
        spec.drift_rounds = None;
    }
    let options = RunOptions { runs: Some(20), threads: 2, ..RunOptions::default() };
    let (summary, _) = simulate(&scenario, &options, &|_| {}).unwrap().summary().unwrap();
    for r in summary.results.iter().filter(|r| r.drift.is_some()) {
        let d = r.drift.unwrap();
        assert_eq!((d.change_at, d.alarm_runs), (None, 0), "{}: false alarms on a stationary world", r.label);
    }
}
