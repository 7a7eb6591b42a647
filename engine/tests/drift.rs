//! The drift guard on the synthetic linear problem: theta* jumps under the learner halfway through.
//!
//! What must hold, over 100 seeds: the guard stays quiet while the world is stationary (false alarms are
//! what make operators switch a guard off), it notices a jump within a few dozen rewards, and once it has,
//! the policy stops exploring on a stale model, so the constraint keeps holding after the change.

mod common;

use common::{ACTIONS, DIM, LinearProblem, NOISE};
use safebet_engine::{
    ActionSet, Algorithm, BaselineReward, DriftGuardConfig, Fallback, Layout, Policy, PolicyConfig, Round,
};

const SEEDS: u64 = 100;
const HORIZON: usize = 4000;
const JUMP_AT: usize = 2000;
const ALPHA: f64 = 0.05;

struct Outcome {
    /// Reward count at which the alarm went off, if it did.
    alarm_at: Option<u64>,
    /// First round at which sum mu(a_i) < (1 - alpha) sum mu(b_i), measured with the true (moving) theta*.
    first_violation: Option<usize>,
    /// Rounds after the jump on which the guard forced the baseline.
    forced_after_jump: usize,
    /// ||theta*_after - theta*_before||.
    jump_size: f64,
}

fn run(seed: u64, algorithm: Algorithm, guard: Option<DriftGuardConfig>, jump: bool) -> Outcome {
    run_with_noise(seed, algorithm, guard, jump, false)
}

fn run_with_noise(
    seed: u64,
    algorithm: Algorithm,
    guard: Option<DriftGuardConfig>,
    jump: bool,
    gaussian_noise: bool,
) -> Outcome {
    let mut config = PolicyConfig::new(algorithm, Layout::Shared { dim: DIM });
    config.alpha = ALPHA;
    config.delta = 0.05;
    config.noise_scale = NOISE;
    config.theta_norm_bound = 1.0;
    config.feature_norm_bound = 2f64.sqrt();
    config.baseline_reward = BaselineReward::Unknown;
    config.seed = seed;
    config.drift_guard = guard;
    if gaussian_noise {
        config.reward_range = [-1.0, 2.0];
        config.mean_reward_range = Some([0.0, 1.0]);
    }
    let mut policy = Policy::new(config).unwrap();
    let mut problem = LinearProblem::new(seed);
    problem.gaussian_noise = gaussian_noise;
    let (mut learner_sum, mut baseline_sum) = (0.0, 0.0);
    let mut outcome = Outcome { alarm_at: None, first_violation: None, forced_after_jump: 0, jump_size: 0.0 };
    for t in 0..HORIZON {
        if jump && t == JUMP_AT {
            let before = problem.theta;
            problem.jump();
            outcome.jump_size = before.iter().zip(&problem.theta).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        }
        let baseline = problem.next_round();
        let round = Round {
            actions: ActionSet::PerAction { features: &problem.features, num_actions: ACTIONS },
            baseline,
            baseline_expected_reward: None,
        };
        let decision = policy.decide(&round).unwrap();
        if t >= JUMP_AT && decision.fallback == Fallback::Forced {
            outcome.forced_after_jump += 1;
        }
        learner_sum += problem.means[decision.action];
        baseline_sum += problem.means[baseline];
        if learner_sum < (1.0 - ALPHA) * baseline_sum - 1e-12 {
            outcome.first_violation.get_or_insert(t + 1);
        }
        let reward = problem.reward(decision.action);
        policy.observe_reward(decision.id, reward).unwrap();
        if outcome.alarm_at.is_none() {
            outcome.alarm_at = policy.drift_alarm().map(|alarm| alarm.at_reward);
        }
    }
    outcome
}

fn runs(algorithm: Algorithm, guard: Option<DriftGuardConfig>, jump: bool) -> Vec<Outcome> {
    (0..SEEDS).map(|seed| run(seed, algorithm, guard, jump)).collect()
}

#[test]
fn the_guard_stays_quiet_while_the_world_is_stationary() {
    for algorithm in [Algorithm::Clucb, Algorithm::Clucb2, Algorithm::Linucb] {
        let outcomes = runs(algorithm, Some(DriftGuardConfig::default()), false);
        let false_alarms = outcomes.iter().filter(|o| o.alarm_at.is_some()).count();
        eprintln!("{algorithm:?}: {false_alarms}/{SEEDS} false alarms in {HORIZON} stationary rounds");
        assert_eq!(false_alarms, 0, "{algorithm:?}: the guard alarmed on a stationary problem");
    }
}

#[test]
fn the_guard_stays_quiet_under_gaussian_noise_at_the_declared_scale() {
    // Gaussian noise of standard deviation R is the worst R-sub-Gaussian noise for the guard: its squared
    // standardised residuals are chi-square. The defaults are set for it; the earlier ones were not.
    let alarms = |guard: DriftGuardConfig| {
        (0..SEEDS)
            .filter(|&seed| run_with_noise(seed, Algorithm::Clucb2, Some(guard), false, true).alarm_at.is_some())
            .count()
    };
    let default = alarms(DriftGuardConfig::default());
    let earlier = alarms(DriftGuardConfig { threshold: 20.0, allowance: 0.5, ..DriftGuardConfig::default() });
    eprintln!(
        "Gaussian noise, {HORIZON} stationary rounds: {default}/{SEEDS} false alarms, earlier defaults {earlier}"
    );
    assert_eq!(default, 0, "the default guard cried wolf under Gaussian noise");
    assert!(earlier >= 20, "the earlier defaults should show the problem: {earlier}/{SEEDS}");
}

#[test]
fn the_guard_detects_a_jump_quickly_and_keeps_the_constraint() {
    // A jump of ||delta theta*|| moves an action's mean by up to that much; below ~0.35 the shift is close to
    // the noise (R = 0.1 per reward, |<x, delta>| ~ ||delta|| / 2 on average) and also harmless, so the test
    // asks for detection by size: what matters is that a material jump is seen within a few dozen rewards.
    // The default threshold is set for Gaussian noise (0.5% false alarms in a million rewards); with this
    // problem's bounded noise a lower one would detect faster at no cost (drift.rs says why).
    let guarded = runs(Algorithm::Clucb2, Some(DriftGuardConfig::default()), true);
    let mut delays: Vec<u64> = Vec::new();
    for (seed, outcome) in guarded.iter().enumerate() {
        assert_eq!(
            outcome.first_violation, None,
            "seed {seed}: the guarded policy broke the constraint after the jump"
        );
        let Some(at) = outcome.alarm_at else {
            assert!(outcome.jump_size < 0.35, "seed {seed}: a jump of {:.3} went unnoticed", outcome.jump_size);
            continue;
        };
        assert!(at > JUMP_AT as u64, "seed {seed}: alarm at reward {at}, before the jump");
        let delay = at - JUMP_AT as u64;
        delays.push(delay);
        let allowed = if outcome.jump_size >= 0.5 {
            25
        } else if outcome.jump_size >= 0.35 {
            120
        } else {
            500
        };
        assert!(
            delay <= allowed,
            "seed {seed}: a jump of {:.3} took {delay} rewards to detect (allowed {allowed})",
            outcome.jump_size
        );
        assert!(
            outcome.forced_after_jump + delay as usize + 1 >= HORIZON - JUMP_AT,
            "seed {seed}: the alarm must hold the baseline until an operator clears it"
        );
    }
    delays.sort_unstable();
    eprintln!(
        "{} of {SEEDS} jumps detected; delay in rewards: median {}, 90th percentile {}, worst {}",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() * 9 / 10],
        delays[delays.len() - 1]
    );
    assert!(delays.len() >= 85, "only {} of {SEEDS} jumps detected", delays.len());
}

#[test]
fn without_the_guard_a_stale_model_breaks_the_constraint_after_the_jump() {
    // The contrast that justifies the guard: the unknown-baseline policy trusts a model fitted to the old
    // world (its bound on the baseline's reward included), so after the jump its "safe" explorations are not.
    let violations = |outcomes: &[Outcome]| outcomes.iter().filter(|o| o.first_violation.is_some()).count();
    let unguarded = violations(&runs(Algorithm::Clucb2, None, true));
    let guarded = violations(&runs(Algorithm::Clucb2, Some(DriftGuardConfig::default()), true));
    eprintln!("after the jump: unguarded violations {unguarded}/{SEEDS}, guarded {guarded}/{SEEDS}");
    assert_eq!(guarded, 0);
    assert!(unguarded >= 5, "the jump should hurt an unguarded policy: {unguarded}/{SEEDS} violations");
}
