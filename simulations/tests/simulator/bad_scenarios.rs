//! A bad scenario is an error that names the file, the key and what was expected.

use std::path::Path;

use safebet_simulations::{RunOptions, Scenario, simulate};

use crate::SMALL;

/// Replaces `from` (which must occur in the small scenario) by `to` and returns the error message.
fn error_for(from: &str, to: &str) -> String {
    assert!(SMALL.contains(from), "test bug: `{from}` not in the scenario");
    let text = SMALL.replacen(from, to, 1);
    match Scenario::from_toml_str(&text, "scenarios/bad.toml", Path::new(".")) {
        Ok(_) => panic!("`{from}` -> `{to}` was accepted"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(message: &str, key: &str, expected: &str) {
    assert!(message.starts_with("scenarios/bad.toml: "), "no file in: {message}");
    assert!(message.contains(&format!(": {key}: ")), "no key `{key}` in: {message}");
    assert!(message.contains(expected), "no `{expected}` in: {message}");
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let m = error_for("horizon = 400", "horizon = 400\nhorizn = 3");
    assert_names(&m, "horizn", "unknown field `horizn`");
    assert!(m.contains("line 4"), "{m}");
    let m = error_for("context_pool = 16", "context_pool = 16\ncontext_poll = 3");
    assert_names(&m, "environment.linear.context_poll", "unknown field `context_poll`");
    let m = error_for("loss = 0.1", "loss = 0.1\nlost = 0.2");
    assert_names(&m, "feedback.lost", "unknown field `lost`");
}

#[test]
fn unknown_policy_fields_name_the_policy() {
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\nexploration = 2.0");
    assert_names(&m, "policies[1].exploration", "unknown field `exploration`");
    let m = error_for("algorithm = \"lints\"", "algorithm = \"lintz\"");
    assert_names(&m, "policies[1].algorithm", "unknown variant `lintz`");
}

#[test]
fn missing_fields_are_named() {
    let m = error_for("horizon = 400\n", "");
    assert_names(&m, "(top level)", "missing field `horizon`");
    let m = error_for("dim = 4\n", "");
    assert_names(&m, "environment.linear", "missing field `dim`");
    let m = error_for("label = \"LinTS\"\n", "");
    assert_names(&m, "policies[1].label", "missing field `label`");
    let m = error_for("noise = \"bernoulli\"", "noise = \"gaussian\"");
    assert_names(&m, "environment.linear.noise_std", "expected a standard deviation > 0");
}

#[test]
fn invalid_values_say_what_was_expected() {
    let m = error_for("alphas = [0.05, 0.2]", "alphas = [0.05, 1.5]");
    assert_names(&m, "alphas[1]", "expected a value in [0, 1), got 1.5");
    let m = error_for("horizon = 400", "horizon = -1");
    assert_names(&m, "horizon", "expected u64");
    let m = error_for("dim = 4", "dim = \"four\"");
    assert_names(&m, "environment.linear.dim", "expected usize");
    let m = error_for("baseline_quantile = 0.8", "baseline_quantile = 1.8");
    assert_names(&m, "environment.linear.baseline_quantile", "expected a value in [0, 1], got 1.8");
    let m = error_for("every = 100", "every = 5000");
    assert_names(&m, "policies[2].constraint.every", "expected a checkpoint interval <= horizon (400)");
    // Checked by the engine's own validation, reported under the policy's key.
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\nlambda = -1.0");
    assert_names(&m, "policies[1].lambda", "must be finite and > 0, got -1");
    // A conservative policy refuses a fixed exploration scale (it would void the guarantee).
    let m = error_for("label = \"CLUCB known\"", "label = \"CLUCB known\"\nexploration_scale = 0.5");
    assert_names(&m, "policies[3].exploration_scale", "no safety guarantee");
}

#[test]
fn keys_the_simulator_owns_are_refused() {
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\nalpha = 0.3");
    assert_names(&m, "policies[1].alpha", "use the top-level `alphas` grid");
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\nseed = 3");
    assert_names(&m, "policies[1].seed", "derives from the scenario `seed`");
    let m = error_for("label = \"LinTS\"", "label = \"LinUCB\"");
    assert_names(&m, "policies[1].label", "unique label");
}

#[test]
fn gaussian_rewards_must_fit_the_declared_range() {
    let text = SMALL.replacen("noise = \"bernoulli\"", "noise = \"gaussian\"\nnoise_std = 0.1", 1);
    let m = Scenario::from_toml_str(&text, "scenarios/bad.toml", Path::new(".")).unwrap_err().to_string();
    assert_names(&m, "policies[0].reward_range", "expected a range covering [-0.8");
}

#[test]
fn syntax_errors_give_the_line() {
    let m = error_for("seeds = 5", "seeds = = 5");
    assert!(m.starts_with("scenarios/bad.toml: (syntax): "), "{m}");
    assert!(m.contains("line 4"), "{m}");
}

#[test]
fn file_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("typo.toml");
    std::fs::write(&path, SMALL.replacen("seed = 11", "sead = 11", 1)).unwrap();
    let m = Scenario::from_file(&path).unwrap_err().to_string();
    assert!(m.starts_with(&format!("{}: sead: unknown field", path.display())), "{m}");
    let m = Scenario::from_file(&tmp.path().join("absent.toml")).unwrap_err().to_string();
    assert!(m.contains("absent.toml"), "{m}");
}

#[test]
fn a_missing_data_file_is_named_when_the_run_starts() {
    let text = r#"
name = "nodata"
horizon = 10
seeds = 1
seed = 1
alphas = [0.1]
deltas = [0.1]
[environment.supervised]
path = "no/such/file.csv"
features = 4
classes = 2
feature_scale = 1.0
baseline_rows_per_class = 1
[[policies]]
label = "x"
algorithm = "linucb"
"#;
    let scenario = Scenario::from_toml_str(text, "nodata.toml", Path::new("/nonexistent")).unwrap();
    let m = simulate(&scenario, &RunOptions::default(), &|_| {}).unwrap_err().to_string();
    assert!(m.contains("/nonexistent/no/such/file.csv"), "{m}");
}

#[test]
fn episodic_and_bandit_algorithms_need_their_own_environments() {
    let m = error_for("algorithm = \"lints\"", "algorithm = \"ucbvi\"");
    assert_names(&m, "policies[1].algorithm", "need an episodic environment");
    let text = r#"
name = "rl"
horizon = 10
seeds = 1
seed = 1
alphas = [0.1]
deltas = [0.1]
[environment.river_swim]
states = 2
episode_length = 5
[[policies]]
label = "x"
algorithm = "ucbvi"
"#;
    let m = Scenario::from_toml_str(text, "scenarios/bad.toml", Path::new(".")).unwrap_err().to_string();
    assert_names(&m, "environment.river_swim.states", "expected 3..=1000, got 2");
    let fixed = text.replace("states = 2", "states = 4");
    let m = Scenario::from_toml_str(&fixed.replace("\"ucbvi\"", "\"linucb\""), "scenarios/bad.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert_names(&m, "policies[0].algorithm", "expected `ucbvi` or `conservative_ucbvi`");
    let m = Scenario::from_toml_str(
        &fixed.replace("label = \"x\"", "label = \"x\"\nstates = 9"),
        "scenarios/bad.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert_names(&m, "policies[0].states", "is set by the simulator");
    let m = Scenario::from_toml_str(
        &fixed.replace("label = \"x\"", "label = \"x\"\nbonus = 2.0"),
        "scenarios/bad.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert_names(&m, "policies[0].bonus", "unknown field `bonus`");
}

#[test]
fn a_policy_sets_its_drift_guard_and_typos_in_it_are_named() {
    let guarded =
        |guard: &str| SMALL.replacen("label = \"LinTS\"", &format!("label = \"LinTS\"\ndrift_guard = {guard}"), 1);
    let scenario =
        Scenario::from_toml_str(&guarded("{ threshold = 30.0 }"), "scenarios/good.toml", Path::new(".")).unwrap();
    assert!(scenario.policies[1].config.drift_guarded() && !scenario.policies[0].config.drift_guarded());
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\ndrift_guard = { threshold = 30.0, alowance = 1.0 }");
    assert_names(&m, "policies[1].drift_guard.alowance", "unknown field `alowance`");
    let m = error_for("label = \"LinTS\"", "label = \"LinTS\"\ndrift_guard = { threshold = -1.0 }");
    assert_names(&m, "policies[1].drift_guard.threshold", "must be finite and > 0, got -1");
}
