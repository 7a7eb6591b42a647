//! The simulator's bookkeeping against problems whose answers are known in closed form, with the engine's
//! real policies making the decisions.

use std::path::Path;

use safebet_simulations::{RunOptions, Scenario, simulate};

fn k_armed(means: &str, alphas: &str, policies: &str) -> Scenario {
    let text = format!(
        r#"
name = "accounting"
horizon = 500
seeds = 3
seed = 5
alphas = {alphas}
deltas = [0.05]
curve_points = 10
[environment.k_armed]
means = {means}
noise = "bernoulli"
baseline = 0
{policies}
"#
    );
    Scenario::from_toml_str(&text, "accounting.toml", Path::new(".")).unwrap()
}

const BOTH: &str = r#"
[[policies]]
label = "UCB"
algorithm = "ucb1"
[[policies]]
label = "ConUCB"
algorithm = "conservative_ucb"
baseline_reward = "known"
"#;

#[test]
fn equal_arms_have_zero_regret_and_a_margin_of_alpha_times_the_baseline() {
    let scenario = k_armed("[0.5, 0.5, 0.5]", "[0.0, 0.1]", BOTH);
    let set = simulate(&scenario, &RunOptions::default(), &|_| {}).unwrap();
    for r in &set.records {
        let alpha = scenario.alphas[r.alpha];
        assert_eq!(r.final_regret, 0.0);
        assert_eq!(r.final_reward, 250.0);
        assert_eq!(r.baseline_reward, 250.0);
        // The margin 0.5 * alpha * t is smallest at t = 1.
        assert!((r.min_margin - 0.5 * alpha).abs() < 1e-12, "{r:?}");
        assert_eq!(r.first_violation, None);
        assert!((r.margin.last().unwrap() - 250.0 * alpha).abs() < 1e-9);
    }
    let (summary, _) = set.summary().unwrap();
    assert!(summary.results.iter().all(|r| r.violation_runs == 0 && r.violation_rate == 0.0));
    // 0 violations in 3 runs: the Clopper-Pearson bound is 1 - 0.025^(1/3).
    let bound = 1.0 - 0.025f64.powf(1.0 / 3.0);
    assert!(summary.results.iter().all(|r| (r.violation_rate_upper95 - bound).abs() < 1e-9));
}

#[test]
fn regret_counts_exactly_the_rounds_off_the_best_arm() {
    // The baseline arm 0 is the best: every other play costs 0.3, every baseline play costs nothing.
    let scenario = k_armed("[0.5, 0.2]", "[0.1]", BOTH);
    let set = simulate(&scenario, &RunOptions::default(), &|_| {}).unwrap();
    let grid = scenario.curve_rounds();
    for r in &set.records {
        let off = (scenario.horizon - r.baseline_plays) as f64;
        assert!((r.final_regret - 0.3 * off).abs() < 1e-9, "{r:?}");
        assert_eq!(*r.regret.last().unwrap(), r.final_regret);
        // Window shares add back up to the baseline plays.
        let mut previous = 0;
        let plays: f64 = grid
            .iter()
            .zip(&r.baseline_share)
            .map(|(&t, share)| {
                let window = (t - previous) as f64;
                previous = t;
                share * window
            })
            .sum();
        assert!((plays - r.baseline_plays as f64).abs() < 1e-6, "{plays} vs {}", r.baseline_plays);
    }
}

#[test]
fn a_bad_first_arm_is_a_violation_at_round_one() {
    // Arm 0 (the baseline) is best by far; UCB1 tries every arm once, so some round t <= 2 plays arm 1
    // and sum mu(a) falls below (1 - alpha) sum mu(b) right away. ConUCB with a known baseline never does.
    let scenario = k_armed("[0.9, 0.0]", "[0.1]", BOTH);
    let set = simulate(&scenario, &RunOptions::default(), &|_| {}).unwrap();
    let (summary, _) = set.summary().unwrap();
    let ucb = &summary.results[0];
    assert_eq!((ucb.label.as_str(), ucb.violation_runs), ("UCB", 3));
    assert!(ucb.first_violation_median.unwrap() <= 2.0);
    assert!(ucb.min_margin.min < 0.0);
    let conservative = &summary.results[1];
    assert_eq!((conservative.label.as_str(), conservative.violation_runs), ("ConUCB", 0));
    assert!(conservative.baseline_fraction > 0.5);
}

fn episodic(environment: &str, horizon: u64, policies: &str) -> Scenario {
    let text = format!(
        r#"
name = "episodic"
horizon = {horizon}
seeds = 2
seed = 3
alphas = [0.1]
deltas = [0.05]
curve_points = 10
{environment}
{policies}
"#
    );
    Scenario::from_toml_str(&text, "episodic.toml", Path::new(".")).unwrap()
}

#[test]
fn an_episode_is_measured_by_the_exact_value_of_its_policy() {
    // With unknown baseline value, conservative UCBVI cannot certify anything in its first episodes: the
    // baseline drives them all, so every episode is worth exactly V^b = 20 x 0.005 on RiverSwim.
    let scenario = episodic(
        "[environment.river_swim]\nstates = 6\nepisode_length = 20",
        30,
        "[[policies]]\nlabel = \"c\"\nalgorithm = \"conservative_ucbvi\"",
    );
    let set = simulate(&scenario, &RunOptions::default(), &|_| {}).unwrap();
    for r in &set.records {
        assert_eq!((r.baseline_plays, r.fallback_plays), (30, 30));
        assert!((r.baseline_reward - 30.0 * 0.1).abs() < 1e-9, "{r:?}");
        assert_eq!(r.final_reward, r.baseline_reward);
        // The margin alpha * V^b * k is smallest after the first episode.
        assert!((r.min_margin - 0.1 * 0.1).abs() < 1e-12, "{r:?}");
        assert!(r.final_regret > 0.0);
    }
}

#[test]
fn every_episodic_environment_runs_and_known_baselines_stay_safe() {
    for environment in [
        "[environment.river_swim]\nstates = 5\nepisode_length = 10",
        "[environment.cliff_gridworld]\nrows = 3\ncols = 4\nslip = 0.1\nepisode_length = 12",
        "[environment.inventory]\ncapacity = 4\nmax_demand = 3\nepisode_length = 8",
    ] {
        let policies = "[[policies]]\nlabel = \"UCBVI\"\nalgorithm = \"ucbvi\"\n\
                        [[policies]]\nlabel = \"safe\"\nalgorithm = \"conservative_ucbvi\"\n\
                        baseline_reward = \"known\"";
        let scenario = episodic(environment, 200, policies);
        let set = simulate(&scenario, &RunOptions { threads: 2, ..RunOptions::default() }, &|_| {}).unwrap();
        let (summary, _) = set.summary().unwrap();
        let (ucbvi, safe) = (&summary.results[0], &summary.results[1]);
        assert_eq!((ucbvi.algorithm.as_str(), safe.algorithm.as_str()), ("ucbvi", "conservative_ucbvi"));
        assert!(safe.baseline_reward_known && !ucbvi.baseline_reward_known);
        assert_eq!(safe.violation_runs, 0, "{environment}: {safe:?}");
        assert_eq!(ucbvi.baseline_fraction, 0.0, "UCBVI always drives");
        // Regret is V* - V^pi summed over episodes: never negative.
        assert!(ucbvi.final_regret.p05 >= 0.0 && safe.final_regret.p05 >= 0.0);
    }
}
