//! Off-policy evaluation: the estimators against hand-computed cases (the numbers obp 0.5.7 returns on the same
//! inputs, checked with `obp.ope.estimators` and pinned here to 1e-9), the bootstrap, the Bernoulli-TS
//! Monte Carlo, the reward model, the decision-log evaluation and bad input.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::{
    BetaPrior, CellRewardModel, DecisionLogSettings, DecisionTarget, Estimator, FeatureLayout, LogColumns,
    LoggedBandit, LoggedDecision, LoggedRound, ObdImpression, ObdSettings, OpeError, RewardModelKind,
    bernoulli_ts_action_dist, bootstrap_interval, bootstrap_interval_with_rng, bootstrap_mean_interval,
    evaluate_bts_on_obd, evaluate_decision_log,
};

fn assert_close(got: f64, expected: f64) {
    assert!((got - expected).abs() <= 1e-9, "got {got:.17}, expected {expected:.17}");
}

/// Case A: two actions, one position, three rounds (obp: `action_dist` of shape 3 x 2 x 1).
///
/// | round | action | p(a\|x) | reward | pi_e(.\|x) | q_hat(x, .) |
/// |---|---|---|---|---|---|
/// | 0 | 0 | 0.5 | 1 | [0.8, 0.2] | [0.6, 0.3] |
/// | 1 | 1 | 0.25 | 0 | [0.5, 0.5] | [0.4, 0.2] |
/// | 2 | 1 | 0.4 | 1 | [0.1, 0.9] | [0.5, 0.7] |
fn case_a() -> LoggedBandit {
    LoggedBandit::from_columns(LogColumns {
        num_actions: 2,
        num_positions: 1,
        actions: &[0, 1, 1],
        positions: None,
        rewards: &[1.0, 0.0, 1.0],
        propensities: &[0.5, 0.25, 0.4],
        target: &[0.8, 0.2, 0.5, 0.5, 0.1, 0.9],
        reward_model: Some(&[0.6, 0.3, 0.4, 0.2, 0.5, 0.7]),
    })
    .unwrap()
}

#[test]
fn case_a_matches_hand_computation_and_obp() {
    let log = case_a();
    // w = pi_e(a_i|x_i) / p_i = [0.8 / 0.5, 0.5 / 0.25, 0.9 / 0.4] = [1.6, 2.0, 2.25]
    let w = log.importance_weights();
    assert_close(w[0], 1.6);
    assert_close(w[1], 2.0);
    assert_close(w[2], 2.25);
    // IPS = mean(w r) = (1.6 * 1 + 2.0 * 0 + 2.25 * 1) / 3 = 3.85 / 3
    assert_close(Estimator::Ips.estimate(&log).unwrap(), 3.85 / 3.0); // obp: 1.2833333333333334
    // SNIPS = sum(w r) / sum(w) = 3.85 / (1.6 + 2.0 + 2.25) = 3.85 / 5.85
    assert_close(Estimator::Snips.estimate(&log).unwrap(), 3.85 / 5.85); // obp: 0.6581196581196581
    // DM rows: 0.8 * 0.6 + 0.2 * 0.3 = 0.54; 0.5 * 0.4 + 0.5 * 0.2 = 0.30; 0.1 * 0.5 + 0.9 * 0.7 = 0.68
    // DM = (0.54 + 0.30 + 0.68) / 3 = 1.52 / 3
    assert_close(Estimator::Dm.estimate(&log).unwrap(), 1.52 / 3.0); // obp: 0.5066666666666667
    // DR corrections w (r - q_hat(a_i)): 1.6 * (1 - 0.6) = 0.64; 2.0 * (0 - 0.2) = -0.4; 2.25 * (1 - 0.7) = 0.675
    // DR = (1.52 + 0.64 - 0.4 + 0.675) / 3 = 2.435 / 3
    assert_close(Estimator::Dr.estimate(&log).unwrap(), 2.435 / 3.0); // obp: 0.8116666666666666
    // Switch-DR, tau = 2: w <= 2 on rounds 0 and 1 only, so round 2 keeps its DM term alone:
    // (1.52 + 0.64 - 0.4) / 3 = 1.76 / 3
    assert_close(Estimator::SwitchDr { tau: 2.0 }.estimate(&log).unwrap(), 1.76 / 3.0); // obp: 0.5866666666666668
    // tau = 0 drops every correction (DM); tau = inf keeps them all (DR).
    assert_close(Estimator::SwitchDr { tau: 0.0 }.estimate(&log).unwrap(), 1.52 / 3.0);
    assert_close(Estimator::SwitchDr { tau: f64::INFINITY }.estimate(&log).unwrap(), 2.435 / 3.0);
}

/// Case B: three actions, two positions (obp's `action_dist` n x K x positions); the estimators read the
/// target and the reward model at each round's logged position only. The other position's q_hat is 9.0 to
/// show it is never used.
///
/// round 0: action 2 at position 1, p = 0.2, reward 1, pi_e(.|x, 1) = [0, 0.25, 0.75], q_hat(x, ., 1) = [0.1, 0.2, 0.4]
/// round 1: action 0 at position 0, p = 0.5, reward 0, pi_e(.|x, 0) = [1, 0, 0], q_hat(x, ., 0) = [0.3, 0.9, 0.9]
#[test]
fn case_b_positions_match_hand_computation_and_obp() {
    #[rustfmt::skip]
    let target = [
        // round 0: rows are actions, columns positions 0 and 1
        0.5, 0.0,
        0.5, 0.25,
        0.0, 0.75,
        // round 1
        1.0, 0.0,
        0.0, 1.0,
        0.0, 0.0,
    ];
    #[rustfmt::skip]
    let q_hat = [
        9.0, 0.1,
        9.0, 0.2,
        9.0, 0.4,
        0.3, 9.0,
        0.9, 9.0,
        0.9, 9.0,
    ];
    let log = LoggedBandit::from_columns(LogColumns {
        num_actions: 3,
        num_positions: 2,
        actions: &[2, 0],
        positions: Some(&[1, 0]),
        rewards: &[1.0, 0.0],
        propensities: &[0.2, 0.5],
        target: &target,
        reward_model: Some(&q_hat),
    })
    .unwrap();
    // w = [0.75 / 0.2, 1.0 / 0.5] = [3.75, 2.0]
    // IPS = (3.75 * 1 + 2.0 * 0) / 2 = 1.875
    assert_close(Estimator::Ips.estimate(&log).unwrap(), 1.875);
    // SNIPS = 3.75 / (3.75 + 2.0)
    assert_close(Estimator::Snips.estimate(&log).unwrap(), 3.75 / 5.75); // obp: 0.6521739130434783
    // DM rows: 0 * 0.1 + 0.25 * 0.2 + 0.75 * 0.4 = 0.35; 1 * 0.3 = 0.3; DM = (0.35 + 0.3) / 2 = 0.325
    assert_close(Estimator::Dm.estimate(&log).unwrap(), 0.325);
    // DR rows: 0.35 + 3.75 * (1 - 0.4) = 2.6; 0.3 + 2.0 * (0 - 0.3) = -0.3; DR = 2.3 / 2 = 1.15
    assert_close(Estimator::Dr.estimate(&log).unwrap(), 1.15);
    // Switch-DR, tau = 3: round 0 (w = 3.75 > 3) keeps 0.35 only; (0.35 - 0.3) / 2 = 0.025
    assert_close(Estimator::SwitchDr { tau: 3.0 }.estimate(&log).unwrap(), 0.025); // obp: 0.025000000000000022
}

/// Case C: round 0's target sums to 1.000004, inside obp's `np.allclose` tolerance. obp's DM term is
/// `np.average(q_hat, weights=pi_e)`, which divides by the weights' sum; so does this crate.
///
/// round 0: action 1, p = 0.5, reward 0, pi_e = [0.500004, 0.5], q_hat = [0.2, 0.6]
/// round 1: action 0, p = 0.5, reward 1, pi_e = [0.25, 0.75],    q_hat = [0.1, 0.3]
#[test]
fn case_c_direct_method_is_a_weighted_average_like_numpy() {
    let log = LoggedBandit::from_columns(LogColumns {
        num_actions: 2,
        num_positions: 1,
        actions: &[1, 0],
        positions: None,
        rewards: &[0.0, 1.0],
        propensities: &[0.5, 0.5],
        target: &[0.500004, 0.5, 0.25, 0.75],
        reward_model: Some(&[0.2, 0.6, 0.1, 0.3]),
    })
    .unwrap();
    // DM row 0 = (0.500004 * 0.2 + 0.5 * 0.6) / 1.000004 = 0.4000008 / 1.000004; row 1 = 0.025 + 0.225 = 0.25
    let row0 = 0.4000008 / 1.000004;
    assert_close(Estimator::Dm.estimate(&log).unwrap(), (row0 + 0.25) / 2.0); // obp: 0.32499960000159994
    // Without the division it would be (0.4000008 + 0.25) / 2 = 0.3250004, 8e-7 away: this test tells them apart.
    assert!((Estimator::Dm.estimate(&log).unwrap() - 0.3250004).abs() > 1e-7);
    // DR rows: row0 + (0.5 / 0.5) * (0 - 0.6); 0.25 + (0.25 / 0.5) * (1 - 0.1) = 0.7
    assert_close(Estimator::Dr.estimate(&log).unwrap(), (row0 - 0.6 + 0.7) / 2.0); // obp: 0.24999960000159996
    // IPS = (0 + 0.5 * 1) / 2 = 0.25; SNIPS = 0.5 / (1 + 0.5)
    assert_close(Estimator::Ips.estimate(&log).unwrap(), 0.25);
    assert_close(Estimator::Snips.estimate(&log).unwrap(), 0.5 / 1.5);
}

#[test]
fn round_values_are_obps_round_rewards() {
    let log = case_a();
    // SNIPS's round-wise values use the whole log's mean weight, 5.85 / 3 = 1.95: w_i r_i / 1.95.
    let snips = Estimator::Snips.round_values(&log).unwrap();
    assert_close(snips[0], 1.6 / 1.95);
    assert_close(snips[1], 0.0);
    assert_close(snips[2], 2.25 / 1.95);
    let dr = Estimator::Dr.round_values(&log).unwrap();
    assert_close(dr[0], 0.54 + 0.64);
    assert_close(dr[1], 0.30 - 0.4);
    assert_close(dr[2], 0.68 + 0.675);
}

#[test]
fn rounds_given_one_by_one_equal_columns() {
    let target = [[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]];
    let q_hat = [[0.6, 0.3], [0.4, 0.2], [0.5, 0.7]];
    let (actions, rewards, propensities) = ([0, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.25, 0.4]);
    let rounds = (0..3).map(|i| LoggedRound {
        action: actions[i],
        position: 0,
        reward: rewards[i],
        propensity: propensities[i],
        target: &target[i],
        reward_model: Some(&q_hat[i]),
    });
    assert_eq!(LoggedBandit::new(2, 1, rounds).unwrap(), case_a());
}

// ---------------------------------------------------------------------------------------------------------
// Bootstrap

#[test]
fn bootstrap_is_deterministic_under_a_seed() {
    let log = case_a();
    for estimator in [Estimator::Ips, Estimator::Snips, Estimator::Dm, Estimator::Dr, Estimator::SwitchDr { tau: 2.0 }]
    {
        let first = bootstrap_interval(estimator, &log, 500, 0.05, 7).unwrap();
        let again = bootstrap_interval(estimator, &log, 500, 0.05, 7).unwrap();
        assert_eq!(first, again, "{estimator:?}");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        assert_eq!(bootstrap_interval_with_rng(estimator, &log, 500, 0.05, &mut rng).unwrap(), first);
        assert_close(first.estimate, estimator.estimate(&log).unwrap());
        assert!(first.lower <= first.mean && first.mean <= first.upper, "{first:?}");
    }
    let a = bootstrap_interval(Estimator::Ips, &log, 500, 0.05, 7).unwrap();
    let b = bootstrap_interval(Estimator::Ips, &log, 500, 0.05, 8).unwrap();
    assert_ne!((a.mean, a.lower, a.upper), (b.mean, b.lower, b.upper), "another seed, other resamples");
}

#[test]
fn bootstrap_of_a_constant_is_that_constant() {
    let interval = bootstrap_mean_interval(&[0.25; 40], 200, 0.1, 3).unwrap();
    assert_eq!((interval.estimate, interval.mean, interval.lower, interval.upper), (0.25, 0.25, 0.25, 0.25));
    assert_eq!((interval.alpha, interval.resamples), (0.1, 200));
}

/// The percentile interval of a mean of n i.i.d. values is close to the normal one, mean +- 1.96 sd / sqrt(n),
/// when n is large: a bootstrap that resampled wrongly (without replacement, or a fixed subset) would be far
/// narrower or shifted.
#[test]
fn bootstrap_interval_width_matches_the_normal_approximation() {
    let n = 4_000;
    // Deterministic, spread values: 0, 1, 2, ..., 9 repeated; mean 4.5, population sd sqrt(8.25).
    let samples: Vec<f64> = (0..n).map(|i| (i % 10) as f64).collect();
    let interval = bootstrap_mean_interval(&samples, 4_000, 0.05, 11).unwrap();
    let half_width = 1.959_964 * 8.25f64.sqrt() / (n as f64).sqrt();
    assert_close(interval.estimate, 4.5);
    assert!((interval.mean - 4.5).abs() < 0.01, "{interval:?}");
    assert!((interval.lower - (4.5 - half_width)).abs() < 0.1 * half_width, "{interval:?}, half width {half_width}");
    assert!((interval.upper - (4.5 + half_width)).abs() < 0.1 * half_width, "{interval:?}, half width {half_width}");
}

#[test]
fn bootstrap_rejects_bad_settings() {
    let log = case_a();
    assert!(matches!(
        bootstrap_interval(Estimator::Ips, &log, 0, 0.05, 0),
        Err(OpeError::InvalidSetting { name: "resamples", .. })
    ));
    for alpha in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            bootstrap_interval(Estimator::Ips, &log, 10, alpha, 0),
            Err(OpeError::InvalidSetting { name: "alpha", .. })
        ));
    }
    assert_eq!(bootstrap_mean_interval(&[], 10, 0.05, 0), Err(OpeError::EmptyLog));
    assert!(matches!(
        bootstrap_mean_interval(&[1.0, f64::NAN], 10, 0.05, 0),
        Err(OpeError::NonFinite { round: 1, .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Bad input

fn columns<'a>(actions: &'a [usize], rewards: &'a [f64], propensities: &'a [f64], target: &'a [f64]) -> LogColumns<'a> {
    LogColumns {
        num_actions: 2,
        num_positions: 1,
        actions,
        positions: None,
        rewards,
        propensities,
        target,
        reward_model: None,
    }
}

#[test]
fn mismatched_lengths_are_rejected() {
    let t = [0.5, 0.5, 0.5, 0.5];
    assert_eq!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0], &[0.5, 0.5], &t)),
        Err(OpeError::LengthMismatch { what: "rewards", expected: 2, got: 1 })
    );
    assert_eq!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5], &t)),
        Err(OpeError::LengthMismatch { what: "propensities", expected: 2, got: 1 })
    );
    assert!(matches!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &t[..3])),
        Err(OpeError::LengthMismatch { expected: 4, got: 3, .. })
    ));
    let mut c = columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &t);
    c.reward_model = Some(&[0.1; 3]);
    assert!(matches!(LoggedBandit::from_columns(c), Err(OpeError::LengthMismatch { expected: 4, got: 3, .. })));
    // Two positions need the position column.
    let mut c = columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &[0.5; 8]);
    c.num_positions = 2;
    assert!(matches!(LoggedBandit::from_columns(c), Err(OpeError::LengthMismatch { what: "positions", .. })));
    // A round's own target of the wrong length.
    let round =
        LoggedRound { action: 0, position: 0, reward: 1.0, propensity: 0.5, target: &[1.0], reward_model: None };
    assert_eq!(
        LoggedBandit::new(2, 1, [round]),
        Err(OpeError::RoundLengthMismatch { round: 0, what: "the target", expected: 2, got: 1 })
    );
}

#[test]
fn propensities_outside_zero_one_are_rejected() {
    let t = [0.5, 0.5, 0.5, 0.5];
    for bad in [0.0, -0.2, 1.5] {
        assert_eq!(
            LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5, bad], &t)),
            Err(OpeError::PropensityOutOfRange { round: 1, value: bad })
        );
    }
    // Exactly 1 (a deterministic logger) is allowed.
    assert!(LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[1.0, 1.0], &t)).is_ok());
}

#[test]
fn non_finite_values_are_rejected() {
    let t = [0.5, 0.5, 0.5, 0.5];
    assert!(matches!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, f64::NAN], &[0.5, 0.5], &t)),
        Err(OpeError::NonFinite { round: 1, what: "reward", .. })
    ));
    assert!(matches!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[f64::NAN, 0.5], &t)),
        Err(OpeError::NonFinite { round: 0, what: "propensity", .. })
    ));
    assert!(matches!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &[0.5, 0.5, f64::NAN, 0.5])),
        Err(OpeError::NonFinite { round: 1, what: "target probability", .. })
    ));
    let mut c = columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &t);
    c.reward_model = Some(&[0.1, 0.2, f64::INFINITY, 0.0]);
    assert!(matches!(
        LoggedBandit::from_columns(c),
        Err(OpeError::NonFinite { round: 1, what: "reward-model prediction", .. })
    ));
}

#[test]
fn malformed_targets_and_actions_are_rejected() {
    assert_eq!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &[0.5, 0.5, 0.5, 0.4])),
        Err(OpeError::TargetNotADistribution { round: 1, position: 0, sum: 0.9 })
    );
    assert_eq!(
        LoggedBandit::from_columns(columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &[-0.5, 1.5, 0.5, 0.5])),
        Err(OpeError::TargetProbabilityOutOfRange { round: 0, action: 0, position: 0, value: -0.5 })
    );
    assert_eq!(
        LoggedBandit::from_columns(columns(&[0, 2], &[1.0, 0.0], &[0.5, 0.5], &[0.5; 4])),
        Err(OpeError::ActionOutOfRange { round: 1, action: 2, num_actions: 2 })
    );
    let mut c = columns(&[0, 1], &[1.0, 0.0], &[0.5, 0.5], &[0.5; 4]);
    c.positions = Some(&[0, 1]);
    assert_eq!(
        LoggedBandit::from_columns(c),
        Err(OpeError::PositionOutOfRange { round: 1, position: 1, num_positions: 1 })
    );
    assert_eq!(LoggedBandit::from_columns(columns(&[], &[], &[], &[])), Err(OpeError::EmptyLog));
    let mut c = columns(&[], &[], &[], &[]);
    c.num_actions = 0;
    assert_eq!(LoggedBandit::from_columns(c), Err(OpeError::ZeroDimension { what: "num_actions" }));
}

#[test]
fn reward_model_must_cover_every_round_and_is_required_by_dm_and_dr() {
    let with = LoggedRound {
        action: 0,
        position: 0,
        reward: 1.0,
        propensity: 0.5,
        target: &[0.5, 0.5],
        reward_model: Some(&[0.1, 0.2]),
    };
    let without = LoggedRound { reward_model: None, ..with };
    assert!(matches!(
        LoggedBandit::new(2, 1, [with, without]),
        Err(OpeError::RewardModelInconsistent { round: 1, .. })
    ));
    assert!(matches!(
        LoggedBandit::new(2, 1, [without, with]),
        Err(OpeError::RewardModelInconsistent { round: 1, .. })
    ));
    let log = LoggedBandit::new(2, 1, [without, without]).unwrap();
    for estimator in [Estimator::Dm, Estimator::Dr, Estimator::SwitchDr { tau: 1.0 }] {
        assert!(matches!(estimator.estimate(&log), Err(OpeError::MissingRewardModel { .. })), "{estimator:?}");
    }
    assert_close(Estimator::Ips.estimate(&log).unwrap(), 1.0);
}

#[test]
fn snips_without_overlap_and_bad_tau_are_typed_errors() {
    // The target always plays action 1, the log only ever shows action 0: every weight is 0.
    let log = LoggedBandit::from_columns(columns(&[0, 0], &[1.0, 0.0], &[0.5, 0.5], &[0.0, 1.0, 0.0, 1.0])).unwrap();
    assert_eq!(Estimator::Snips.estimate(&log), Err(OpeError::ZeroTotalWeight));
    assert_eq!(Estimator::Ips.estimate(&log), Ok(0.0));
    for tau in [-1.0, f64::NAN] {
        assert!(matches!(
            Estimator::SwitchDr { tau }.estimate(&case_a()),
            Err(OpeError::InvalidSetting { name: "tau", .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reward model

#[test]
fn cell_reward_model_shrinks_toward_the_position_mean() {
    // Action 0 sees rewards 1, 0, 1; action 1 sees 0. Position mean 2 / 4 = 0.5. With m = 2:
    // q_hat(0) = (2 + 2 * 0.5) / (3 + 2) = 0.6; q_hat(1) = (0 + 2 * 0.5) / (1 + 2) = 1 / 3.
    let obs = [(0, 0, 1.0), (1, 0, 0.0), (0, 0, 1.0), (0, 0, 0.0)];
    let model = CellRewardModel::fit(2, 1, obs, 2.0).unwrap();
    assert_close(model.predict(0, 0), 0.6);
    assert_close(model.predict(1, 0), 1.0 / 3.0);
    // Cross-fitting with 2 folds: fold 0 (rounds 0, 2) is predicted by a model of rounds 1 and 3, whose
    // rewards are all 0; fold 1 (rounds 1, 3) by a model of rounds 0 and 2 (two rewards of 1 on action 0):
    // q_hat(0) = (2 + 2 * 1) / (2 + 2) = 1 and q_hat(1) = (0 + 2 * 1) / (0 + 2) = 1.
    let folds = CellRewardModel::cross_fit(2, 1, &obs, 2.0, 2).unwrap();
    assert_eq!(folds[0].predictions(), &[0.0, 0.0]);
    assert_eq!(folds[1].predictions(), &[1.0, 1.0]);
    assert!(matches!(
        CellRewardModel::cross_fit(2, 1, &obs, 2.0, 5),
        Err(OpeError::InvalidSetting { name: "folds", .. })
    ));
    assert!(matches!(CellRewardModel::fit(2, 1, obs, -1.0), Err(OpeError::InvalidSetting { name: "smoothing", .. })));
    assert!(matches!(CellRewardModel::fit(2, 1, [(2, 0, 1.0)], 1.0), Err(OpeError::ActionOutOfRange { .. })));
}

// ---------------------------------------------------------------------------------------------------------
// Bernoulli Thompson sampling on the Open Bandit Dataset

#[test]
fn bernoulli_ts_ranking_frequencies_match_exact_probabilities() {
    // Items: Beta(2, 1) (density 2x) and Beta(1, 1) (uniform). P(item 0 ranks first) = P(X > Y)
    // = integral of 2x * x over [0, 1] = 2/3. A third item Beta(1, 1000) is almost surely last.
    let prior = BetaPrior::new(vec![2.0, 1.0, 1.0], vec![1.0, 1.0, 1000.0]).unwrap();
    let samples = 200_000;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let dist = bernoulli_ts_action_dist(&prior, 2, samples, &mut rng).unwrap();
    // Layout: item-major, 2 positions per item. 4 standard errors of a frequency near 2/3: 4 * sqrt(2/9 / n).
    let tolerance = 4.0 * (2.0 / 9.0 / samples as f64).sqrt();
    assert!((dist[0] - 2.0 / 3.0).abs() < tolerance, "{dist:?}");
    assert!((dist[2] - 1.0 / 3.0).abs() < tolerance, "{dist:?}");
    assert!((dist[1] - 1.0 / 3.0).abs() < tolerance, "{dist:?}");
    assert!(dist[4] < 1e-4, "{dist:?}");
    assert!((dist[5] - 1.0 / 1001.0).abs() < 4.0 * (1e-3 / samples as f64).sqrt(), "{dist:?}");
    for position in 0..2 {
        let column: f64 = (0..3).map(|item| dist[item * 2 + position]).sum();
        assert_close(column, 1.0);
    }
    let mut again = Xoshiro256PlusPlus::seed_from_u64(5);
    assert_eq!(bernoulli_ts_action_dist(&prior, 2, samples, &mut again).unwrap(), dist);
    assert!(matches!(bernoulli_ts_action_dist(&prior, 4, 10, &mut rng), Err(OpeError::InvalidSetting { .. })));
    assert!(matches!(BetaPrior::new(vec![1.0, 0.0], vec![1.0, 1.0]), Err(OpeError::InvalidSetting { .. })));
    assert!(matches!(BetaPrior::new(vec![1.0], vec![1.0, 1.0]), Err(OpeError::LengthMismatch { .. })));
}

/// A synthetic Open-Bandit-like problem with a known answer: 4 items, 2 slots, click rates ctr(item, slot);
/// the log is uniform-random (propensity 1/4) over items with a uniform slot. The target (a prior that puts
/// item 3 first and item 2 second almost surely) has value (ctr(3, 0) + ctr(2, 1)) / 2 per impression, since
/// each slot is half of the impressions. The importance-weighted estimators' 99% intervals must cover it, and
/// so must the on-policy log's. The direct method's interval only reflects how its predictions vary across
/// rounds, not the reward model's own error (obp's neither), so DM is held to the model's accuracy instead:
/// each cell mean rests on ~7,500 impressions, a standard error of at most sqrt(0.1 * 0.9 / 7500) = 0.0035.
#[test]
fn synthetic_obd_estimates_cover_the_true_value() {
    use rand::RngExt;
    let ctr = [[0.02, 0.01], [0.04, 0.02], [0.06, 0.03], [0.10, 0.05]];
    let truth = (ctr[3][0] + ctr[2][1]) / 2.0;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2024);
    let n = 60_000;
    let random_log: Vec<ObdImpression> = (0..n)
        .map(|_| {
            let (item, position) = (rng.random_range(0..4), rng.random_range(0..2));
            let click = if rng.random::<f64>() < ctr[item][position] { 1.0 } else { 0.0 };
            ObdImpression { item, position, click, propensity: 0.25 }
        })
        .collect();
    let bts_clicks: Vec<f64> = (0..n)
        .map(|i| {
            let rate = if i % 2 == 0 { ctr[3][0] } else { ctr[2][1] };
            if rng.random::<f64>() < rate { 1.0 } else { 0.0 }
        })
        .collect();
    let prior = BetaPrior::new(vec![1.0, 1.0, 5_000.0, 9_000.0], vec![5_000.0, 5_000.0, 5_000.0, 1.0]).unwrap();
    let settings =
        ObdSettings { samples: 2_000, resamples: 400, alpha: 0.01, seed: 3, tau: 3.0, ..ObdSettings::default() };
    let evaluation = evaluate_bts_on_obd(&random_log, &bts_clicks, &prior, 2, &settings).unwrap();
    assert_eq!((evaluation.rounds, evaluation.items, evaluation.positions), (n, 4, 2));
    let names: Vec<&str> = evaluation.estimates.iter().map(|e| e.result.estimator.name()).collect();
    assert_eq!(names, ["ips", "snips", "dm", "dr", "switch-dr"]);
    // The target is deterministic: weight 4 where the log shows its item in its slot, else 0.
    assert_close(evaluation.max_weight, 4.0);
    for estimate in &evaluation.estimates {
        let interval = estimate.result.interval;
        if estimate.result.estimator == Estimator::Dm {
            assert!((interval.estimate - truth).abs() < 0.007, "{estimate:?} is too far from {truth}");
        } else if let Estimator::SwitchDr { .. } = estimate.result.estimator {
            // tau = 3 is below every positive weight (4), so Switch-DR is the direct method on every round.
            assert_eq!(interval, evaluation.estimates[2].result.interval);
        } else {
            assert!(interval.lower <= truth && truth <= interval.upper, "{estimate:?} misses {truth}");
        }
        assert_close(
            estimate.relative_error,
            (interval.estimate - evaluation.on_policy.estimate).abs() / evaluation.on_policy.estimate,
        );
    }
    let on_policy = evaluation.on_policy;
    assert!(on_policy.lower <= truth && truth <= on_policy.upper, "{on_policy:?} misses {truth}");
    // Same settings, same numbers.
    assert_eq!(evaluate_bts_on_obd(&random_log, &bts_clicks, &prior, 2, &settings).unwrap(), evaluation);
    assert_eq!(evaluate_bts_on_obd(&[], &bts_clicks, &prior, 2, &settings), Err(OpeError::EmptyLog));
    let bad_tau = ObdSettings { tau: -1.0, ..settings };
    assert!(matches!(
        evaluate_bts_on_obd(&random_log, &bts_clicks, &prior, 2, &bad_tau),
        Err(OpeError::InvalidSetting { name: "tau", .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------
// The service's decision log

fn decision(action: usize, baseline: usize, propensity: f64, reward: Option<f64>) -> LoggedDecision {
    LoggedDecision {
        decision_id: None,
        num_actions: 2,
        action,
        baseline,
        propensity,
        reward,
        features: None,
        layout: None,
    }
}

#[test]
fn decision_log_matches_hand_computation() {
    let decisions = [
        decision(0, 0, 0.5, Some(1.0)),
        decision(1, 0, 0.5, Some(0.0)),
        decision(1, 0, 0.8, Some(1.0)),
        decision(0, 0, 0.2, Some(0.0)),
        decision(1, 0, 0.5, None), // no reward yet: skipped
    ];
    // No smoothing, one fold: the reward model is the per-action mean, 0.5 for both actions.
    let settings = DecisionLogSettings { resamples: 200, smoothing: 0.0, folds: 1, ..DecisionLogSettings::default() };
    let report =
        evaluate_decision_log(&decisions, &[DecisionTarget::Baseline, DecisionTarget::Uniform], &settings).unwrap();
    assert_eq!((report.decisions, report.rewarded, report.num_actions), (5, 4, 2));
    // The logged policy's mean reward: (1 + 0 + 1 + 0) / 4.
    assert_close(report.logged.estimate, 0.5);
    let estimate = |t: usize, name: &str| {
        report.targets[t].estimates.iter().find(|e| e.estimator.name() == name).unwrap().interval.estimate
    };
    // Baseline (action 0): w = [1 / 0.5, 0, 0, 1 / 0.2] = [2, 0, 0, 5].
    // IPS = (2 * 1 + 5 * 0) / 4 = 0.5; SNIPS = 2 / 7.
    assert_close(estimate(0, "ips"), 0.5);
    assert_close(estimate(0, "snips"), 2.0 / 7.0);
    // DM = 0.5; DR rows 0.5 + w (r - 0.5): 1.5, 0.5, 0.5, 0.5 + 5 * (-0.5) = -2.0; DR = 0.5 / 4 = 0.125.
    assert_close(estimate(0, "dm"), 0.5);
    assert_close(estimate(0, "dr"), 0.125);
    // Logged minus baseline (DR): 0.5 - 0.125.
    assert_close(report.targets[0].logged_minus_target.estimate, 0.375);
    assert_eq!(report.targets[0].overlap, 2);
    assert_close(report.targets[0].max_weight, 5.0);
    // Uniform: w = [0.5 / 0.5, 0.5 / 0.5, 0.5 / 0.8, 0.5 / 0.2] = [1, 1, 0.625, 2.5];
    // IPS = (1 * 1 + 0.625 * 1) / 4 = 0.40625.
    assert_eq!(report.targets[1].target, "uniform");
    assert_close(estimate(1, "ips"), 0.40625);
    assert_close(estimate(1, "snips"), 1.625 / 5.125);
}

#[test]
fn decision_log_rejects_malformed_decisions() {
    let settings = DecisionLogSettings::default();
    let targets = [DecisionTarget::Baseline];
    let bad_baseline = [decision(0, 0, 0.5, Some(1.0)), decision(0, 2, 0.5, Some(1.0))];
    assert_eq!(
        evaluate_decision_log(&bad_baseline, &targets, &settings),
        Err(OpeError::BaselineOutOfRange { round: 1, baseline: 2, num_actions: 2 })
    );
    let zero_propensity = [decision(0, 0, 0.0, Some(1.0))];
    assert_eq!(
        evaluate_decision_log(&zero_propensity, &targets, &settings),
        Err(OpeError::PropensityOutOfRange { round: 0, value: 0.0 })
    );
    let nan_reward = [decision(0, 0, 0.5, Some(f64::NAN))];
    assert!(matches!(
        evaluate_decision_log(&nan_reward, &targets, &settings),
        Err(OpeError::NonFinite { round: 0, what: "reward", .. })
    ));
    let unrewarded = [decision(0, 0, 0.5, None)];
    assert_eq!(evaluate_decision_log(&unrewarded, &targets, &settings), Err(OpeError::EmptyLog));
}

/// A shared-layout round for the learner-target test: 3 actions of dimension 2, features in [0, 1]^2.
fn learner_round(rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    use rand::RngExt;
    (0..6).map(|_| rng.random::<f64>()).collect()
}

#[test]
fn a_learner_snapshot_is_evaluated_greedily_and_matches_its_true_value() {
    use rand::RngExt;
    use safebet_engine::{ActionSet, Algorithm, Layout, Policy, PolicyConfig, Round};
    const THETA: [f64; 2] = [0.7, 0.2];
    let mean = |x: &[f64]| x[0] * THETA[0] + x[1] * THETA[1];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    // Train a learner on the true model.
    let mut policy = Policy::new(PolicyConfig::new(Algorithm::Linucb, Layout::Shared { dim: 2 })).unwrap();
    for _ in 0..500 {
        let features = learner_round(&mut rng);
        let round = Round {
            actions: ActionSet::PerAction { features: &features, num_actions: 3 },
            baseline: 0,
            baseline_expected_reward: None,
        };
        let decision = policy.decide(&round).unwrap();
        let x = &features[decision.action * 2..decision.action * 2 + 2];
        let reward = (mean(x) + rng.random_range(-0.05..0.05)).clamp(0.0, 1.0);
        policy.observe_reward(decision.id, reward).unwrap();
    }
    // A uniform-random log of fresh rounds, with features; the truth is the greedy snapshot's mean reward.
    let (mut log, mut truth) = (Vec::new(), 0.0);
    for _ in 0..3000 {
        let features = learner_round(&mut rng);
        let action = rng.random_range(0..3usize);
        let x = &features[action * 2..action * 2 + 2];
        let reward = (mean(x) + rng.random_range(-0.05..0.05)).clamp(0.0, 1.0);
        let greedy = policy.greedy_action(&ActionSet::PerAction { features: &features, num_actions: 3 }).unwrap();
        truth += mean(&features[greedy * 2..greedy * 2 + 2]) / 3000.0;
        log.push(LoggedDecision {
            decision_id: None,
            num_actions: 3,
            action,
            baseline: 0,
            propensity: 1.0 / 3.0,
            reward: Some(reward),
            features: Some(features),
            layout: Some(FeatureLayout::Shared),
        });
    }
    let settings = DecisionLogSettings { resamples: 500, ..DecisionLogSettings::default() };
    let report =
        evaluate_decision_log(&log, &[DecisionTarget::Baseline, DecisionTarget::Learner(&policy)], &settings).unwrap();
    let learner = &report.targets[1];
    assert_eq!(learner.target, "learner");
    // The log carries features of the shared layout: DM and DR use a ridge model of them, whose direct
    // estimate of the learner's value is close (the problem is linear).
    assert_eq!(report.reward_model, RewardModelKind::Linear);
    let dm = learner.estimates.iter().find(|e| e.estimator == Estimator::Dm).unwrap().interval.estimate;
    assert!((dm - truth).abs() < 0.01, "DM with the linear model: {dm} vs {truth}");
    for e in &learner.estimates {
        if matches!(e.estimator, Estimator::Ips | Estimator::Snips | Estimator::Dr) {
            let interval = &e.interval;
            assert!(
                interval.lower <= truth && truth <= interval.upper,
                "{}: [{}, {}] misses the snapshot's true value {truth}",
                e.estimator.name(),
                interval.lower,
                interval.upper
            );
        }
    }
    // The learner beats the (arbitrary) baseline action 0, and the paired interval says so.
    assert!(report.targets[0].estimates[0].interval.estimate < learner.estimates[0].interval.estimate);
    // The learner target needs features of the right dimension; anything else is a typed error.
    let mut no_features = log[..3].to_vec();
    no_features[1].features = None;
    assert_eq!(
        evaluate_decision_log(&no_features, &[DecisionTarget::Learner(&policy)], &settings),
        Err(OpeError::MissingFeatures { round: 1 })
    );
    let mut wrong_dim = log[..3].to_vec();
    wrong_dim[2].features = Some(vec![0.5; 5]);
    assert!(matches!(
        evaluate_decision_log(&wrong_dim, &[DecisionTarget::Learner(&policy)], &settings),
        Err(OpeError::Snapshot { round: 2, .. })
    ));
}
