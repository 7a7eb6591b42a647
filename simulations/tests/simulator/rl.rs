//! Conservative exploration in episodic RL (Garcelon et al. 2020; ALGORITHMS.md section 9) through the
//! simulator, measured exactly from the true MDP: on the cliff the conservative learner keeps the constraint
//! while UCBVI breaks it, and on RiverSwim the conservative learner's regret per episode falls.

use safebet_simulations::{RunOptions, Scenario, simulate};

use crate::crate_dir;

fn shipped(name: &str) -> Scenario {
    Scenario::from_file(&crate_dir().join(format!("scenarios/{name}.toml"))).unwrap()
}

#[test]
fn on_the_cliff_the_conservative_learner_keeps_the_constraint_and_ucbvi_breaks_it() {
    // 10 seeds x 1,000 episodes of the shipped scenario, every alpha (0.05, 0.2, 0.5): about 1 s on 2 threads.
    let mut scenario = shipped("cliff");
    scenario.horizon = 1_000;
    let options = RunOptions { runs: Some(10), threads: 2, ..RunOptions::default() };
    let (summary, _) = simulate(&scenario, &options, &|_| {}).unwrap().summary().unwrap();
    assert_eq!(summary.results.len(), 3 * 3);
    for r in &summary.results {
        let at = format!("{} at alpha {}", r.label, r.alpha);
        if r.algorithm == "ucbvi" {
            // Optimistic about the unexplored cliff, UCBVI's first policies are worth far less than the
            // baseline's safe walk.
            assert_eq!(r.violation_runs, 10, "{at}");
            assert!(r.min_margin.mean < -1.0, "{at}: {:?}", r.min_margin);
        } else {
            assert_eq!(r.violation_runs, 0, "{at}");
            assert!(r.min_margin.min >= 0.0, "{at}: {:?}", r.min_margin);
        }
    }
}

#[test]
fn on_riverswim_the_conservative_learners_regret_per_episode_falls() {
    // Known V^b, alpha 0.1: the budget (0.01 per episode) pays for the learner's first episodes slowly, so it
    // takes about 12,000 episodes to leave the baseline for good. On 10 seeds x 20,000 episodes (0.5 s)
    // the regret per episode goes from 3.3 in the first tenth (V* - V^b: the baseline drives almost every
    // episode) to under 0.1 in the last.
    let mut scenario = shipped("riverswim");
    scenario.alphas = vec![0.1];
    scenario.policies.retain(|p| p.label == "Conservative UCBVI known");
    scenario.curve_points = 11;
    scenario.curve_spacing = safebet_simulations::CurveSpacing::Linear;
    let options = RunOptions { runs: Some(10), threads: 2, ..RunOptions::default() };
    let set = simulate(&scenario, &options, &|_| {}).unwrap();
    let grid = scenario.curve_rounds();
    assert_eq!(grid, [1, 2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 14_000, 16_000, 18_000, 20_000]);
    let tenth = 2_000.0;
    let (mut early_mean, mut late_mean) = (0.0, 0.0);
    for r in &set.records {
        assert_eq!(r.first_violation, None, "run {}", r.run);
        let early = r.regret[1] / tenth;
        let late = (r.regret[10] - r.regret[9]) / tenth;
        assert!(late < 0.25 * early, "run {}: regret per episode {early:.3} early, {late:.3} late", r.run);
        early_mean += early / set.records.len() as f64;
        late_mean += late / set.records.len() as f64;
    }
    eprintln!(
        "conservative UCBVI (known V^b, alpha 0.1) on RiverSwim: regret per episode {early_mean:.3} in the first tenth, {late_mean:.3} in the last"
    );
    assert!(late_mean < 0.1 * early_mean, "{early_mean} early, {late_mean} late");
}
