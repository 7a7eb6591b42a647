//! The drift scenario with and without the drift guard, at every alpha it ships with: with the guard, no
//! false alarm before the change, the change detected, and the constraint kept after it; without it, CLUCB2
//! with unknown baseline rewards undercuts the baseline once its model goes stale (8 of 40 seeds at alpha 0.05
//! in the full scenario). A stationary copy raises no alarm at all.

use safebet_simulations::{EnvironmentSpec, RunOptions, Scenario, Summary, simulate};

use crate::crate_dir;

const CHANGE_AT: u64 = 10_000;

fn drift_scenario() -> Scenario {
    let scenario = Scenario::from_file(&crate_dir().join("scenarios/drift.toml")).unwrap();
    assert_eq!(scenario.alphas, [0.01, 0.05, 0.1]);
    scenario
}

/// 20 seeds instead of 40: about 1.5 s in release on 2 threads.
fn summary(scenario: &Scenario) -> Summary {
    let options = RunOptions { runs: Some(20), threads: 2, ..RunOptions::default() };
    simulate(scenario, &options, &|_| {}).unwrap().summary().unwrap().0
}

#[test]
fn the_guard_detects_the_drift_without_false_alarms_and_keeps_the_constraint() {
    let summary = summary(&drift_scenario());
    let (mut guarded, mut unguarded_clucb2_after) = (0, 0);
    for r in &summary.results {
        let d = r.drift.unwrap_or_else(|| panic!("{}: every policy reports the change", r.label));
        assert_eq!(d.change_at, Some(CHANGE_AT));
        let at = format!("{} at alpha {}", r.label, r.alpha);
        match d.guard {
            Some(g) => {
                guarded += 1;
                assert_eq!(g.false_alarm_runs, 0, "{at}: alarms before the change");
                assert!(g.detected_runs >= 18, "{at}: the drift went unnoticed in {} runs", 20 - g.detected_runs);
                // The turn takes 2,000 rounds; the guard notices it about halfway (median 955 on 40 seeds).
                let median = g.detection_delay_median.unwrap();
                assert!((200.0..2_000.0).contains(&median), "{at}: detection delay {median}");
                assert_eq!(d.violations_after_change, 0, "{at}: broke the constraint after the change");
                assert_eq!(r.violation_runs, 0, "{at}");
            }
            None if r.label == "CLUCB2 unknown" => {
                assert_eq!(d.violations_before_change, 0, "{at}: the guarantee holds while theta* is fixed");
                unguarded_clucb2_after += d.violations_after_change;
            }
            None => {}
        }
    }
    assert_eq!(guarded, 2 * 3);
    // 13, 8 and 2 of 40 seeds at alpha 0.01, 0.05 and 0.1 in the full scenario.
    assert!(unguarded_clucb2_after > 0, "the unguarded CLUCB2 should undercut the baseline after the drift");
}

#[test]
fn a_stationary_world_raises_no_alarm() {
    let mut scenario = drift_scenario();
    if let EnvironmentSpec::Linear(spec) = &mut scenario.environment {
        spec.change = None;
        spec.change_at = None;
        spec.drift_rounds = None;
    }
    let summary = summary(&scenario);
    for r in &summary.results {
        match r.drift {
            Some(d) => {
                let g = d.guard.expect("only guarded policies report on a stationary world");
                assert_eq!(d.change_at, None);
                assert_eq!((g.alarm_runs, g.false_alarm_runs), (0, 0), "{}: false alarms", r.label);
                assert_eq!(d.violations_after_change, 0);
                assert_eq!(d.violations_before_change, r.violation_runs);
            }
            None => assert!(!r.label.contains("guard"), "{}", r.label),
        }
    }
}
