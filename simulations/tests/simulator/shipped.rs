//! Every scenario in simulations/scenarios/ parses, and runs end to end at a small scale.

use safebet_engine::Constraint;
use safebet_simulations::{EnvironmentSpec, LearnerConfig, RunOptions, Scenario, simulate};

use crate::crate_dir;

fn shipped() -> Vec<Scenario> {
    let dir = crate_dir().join("scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Scenario::from_file(p).unwrap_or_else(|e| panic!("{e}"))).collect()
}

#[test]
fn every_shipped_scenario_parses_and_documents_itself() {
    let scenarios = shipped();
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    for expected in
        ["kazerouni2017", "garcelon2020", "wu2016", "digits", "delayed", "drift", "riverswim", "cliff", "inventory"]
    {
        assert!(names.contains(&expected), "no {expected} scenario in {names:?}");
    }
    for s in &scenarios {
        assert!(s.source.starts_with('#'), "{} must open with a comment saying what it shows", s.origin);
        assert!(s.source.contains("What our run shows"), "{} lacks its results", s.origin);
    }
}

#[test]
fn every_shipped_scenario_runs_at_a_small_scale() {
    for mut scenario in shipped() {
        scenario.horizon = 300;
        scenario.curve_points = 8;
        for policy in &mut scenario.policies {
            if let LearnerConfig::Bandit(config) = &mut policy.config
                && let Constraint::Checkpoint { every } = &mut config.constraint
            {
                *every = (*every).min(100);
            }
        }
        let options = RunOptions { runs: Some(2), threads: 2, ..RunOptions::default() };
        let set = simulate(&scenario, &options, &|_| {}).unwrap_or_else(|e| panic!("{}: {e}", scenario.origin));
        let (summary, curves) = set.summary().unwrap();
        assert_eq!(summary.results.len(), scenario.policies.len() * scenario.alphas.len() * scenario.deltas.len());
        assert!(!curves.is_empty());
        for r in &summary.results {
            assert!(r.final_regret.mean.is_finite() && r.min_margin.min.is_finite(), "{}: {r:?}", scenario.name);
            assert!((0.0..=1.0).contains(&r.baseline_fraction));
        }
        if let EnvironmentSpec::Supervised(_) = scenario.environment {
            // The nearest-centroid baseline is weak but far better than guessing among 10 classes.
            let accuracy = summary.results[0].baseline_reward / scenario.horizon as f64;
            assert!((0.5..0.95).contains(&accuracy), "baseline accuracy {accuracy}");
        }
    }
}
