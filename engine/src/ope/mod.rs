//! Off-policy evaluation: the value a target policy would have had, estimated from decisions another policy
//! logged (ALGORITHMS.md Section 10).
//!
//! The estimators follow the definitions of obp, the Open Bandit Pipeline (Saito, Aihara, Matsutani, Narita,
//! "Open Bandit Dataset and Pipeline", NeurIPS 2021 Datasets and Benchmarks; `obp.ope.estimators`, v0.5.7)
//! term for term, so that on the same inputs the numbers agree with obp's to rounding:
//!
//! - the input has obp's shape: per round the reward `r_i`, the logged action `a_i`, its position `k_i`, the
//!   logging propensity `p_i = pi_b(a_i | x_i)`, the target's action distribution `pi_e(a | x_i, k)` for every
//!   action and position (obp's `action_dist`, n x K x positions) and optionally a reward model's predictions
//!   `q_hat(x_i, a, k)` of the same shape (obp's `estimated_rewards_by_reg_model`);
//! - the importance weight is `w_i = pi_e(a_i | x_i, k_i) / p_i`, taken at the logged position;
//! - each estimator is the mean of round-wise values (obp's `_estimate_round_rewards`), and its bootstrap
//!   interval resamples those round-wise values (obp's `estimate_confidence_interval_by_bootstrap`).
//!
//! Where this differs from obp, on purpose: inputs obp accepts and this rejects with a typed [`OpeError`]
//! (a propensity above 1, a negative or above-1 target probability, an empty log, SNIPS with all weights
//! zero, where obp returns NaN); obp's optional weight clipping `lambda_` of IPS and DR is left out (its
//! default, no clipping, is what is implemented); sums run left to right where numpy sums pairwise, a
//! difference of order 1e-16 relative; and the bootstrap draws from Xoshiro256++, not numpy's Mersenne
//! Twister, so intervals agree with obp's only up to bootstrap noise (see [`bootstrap_interval`]).
//!
//! [`LoggedBandit`] is the validated input (checked once, so an estimator never meets a NaN or a zero
//! propensity), [`Estimator`] the estimators, [`bootstrap_interval`] the seeded confidence interval. The
//! sub-modules apply them: [`ObdEvaluation`] evaluates Bernoulli Thompson sampling on the Open Bandit
//! Dataset's uniform-random log, [`evaluate_decision_log`] evaluates the baseline and the uniform policy on
//! the service's own decision log. Everything here is pure: the shells read the files.

mod bootstrap;
mod decision_log;
mod estimators;
mod obd;
mod reward_model;

pub use bootstrap::{
    BootstrapInterval, EstimatorInterval, bootstrap_interval, bootstrap_interval_with_rng, bootstrap_mean_interval,
};
pub use decision_log::{
    DecisionLogEvaluation, DecisionLogSettings, DecisionTarget, FeatureLayout, LoggedDecision, RewardModelKind,
    TargetEvaluation, decision_log_bandit, evaluate_decision_log,
};
pub use estimators::Estimator;
pub use obd::{
    BetaPrior, ObdEstimate, ObdEvaluation, ObdImpression, ObdSettings, bernoulli_ts_action_dist, evaluate_bts_on_obd,
};
pub use reward_model::CellRewardModel;

/// Why an off-policy evaluation input or setting was rejected. Every variant names the value that was wrong
/// and, for logged data, the round (0-based, in log order) it was found in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpeError {
    /// The log holds no round: every estimator is a mean over rounds.
    #[error("the log holds no round")]
    EmptyLog,
    /// A dimension of the input (actions, positions) is zero.
    #[error("{what} must be at least 1, got 0")]
    ZeroDimension {
        /// Which dimension.
        what: &'static str,
    },
    /// Columns of a column-wise input differ in length.
    #[error("{what} has length {got}, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// The length the other inputs imply.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A round's per-action array (target or reward model) does not have K x positions entries.
    #[error("round {round}: {what} has {got} entries, expected {expected} (actions x positions)")]
    RoundLengthMismatch {
        /// The round.
        round: usize,
        /// Which array.
        what: &'static str,
        /// K x positions.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The logged action is not one of the `num_actions` actions.
    #[error("round {round}: action {action} is out of range: there are {num_actions} actions")]
    ActionOutOfRange {
        /// The round.
        round: usize,
        /// The action given.
        action: usize,
        /// Number of actions.
        num_actions: usize,
    },
    /// A logged decision's baseline is not one of its round's actions.
    #[error("round {round}: baseline {baseline} is out of range: the round has {num_actions} actions")]
    BaselineOutOfRange {
        /// The round.
        round: usize,
        /// The baseline given.
        baseline: usize,
        /// Number of actions of the round.
        num_actions: usize,
    },
    /// The learner target needs the round's features, and the logged decision has none.
    #[error("round {round}: the decision has no features, which the learner target needs")]
    MissingFeatures {
        /// The round.
        round: usize,
    },
    /// The learner snapshot refused the round (e.g. its features have the wrong dimension).
    #[error("round {round}: the learner snapshot cannot act on this round: {reason}")]
    Snapshot {
        /// The round.
        round: usize,
        /// The engine's error.
        reason: String,
    },
    /// A logged decision offers no action.
    #[error("round {round}: the decision offers no action")]
    NoActions {
        /// The round.
        round: usize,
    },
    /// The logged position is not one of the `num_positions` positions.
    #[error("round {round}: position {position} is out of range: there are {num_positions} positions")]
    PositionOutOfRange {
        /// The round.
        round: usize,
        /// The position given (0-based).
        position: usize,
        /// Number of positions.
        num_positions: usize,
    },
    /// A reward, propensity, target probability or reward-model prediction is NaN or infinite.
    #[error("round {round}: {what} must be finite, got {value}")]
    NonFinite {
        /// The round.
        round: usize,
        /// Which input.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A logging propensity is not in (0, 1]: importance weighting divides by it.
    #[error("round {round}: the logging propensity must be in (0, 1], got {value}")]
    PropensityOutOfRange {
        /// The round.
        round: usize,
        /// The value given.
        value: f64,
    },
    /// A target probability is outside [0, 1].
    #[error(
        "round {round}: the target probability of action {action} at position {position} is {value}, not in [0, 1]"
    )]
    TargetProbabilityOutOfRange {
        /// The round.
        round: usize,
        /// The action.
        action: usize,
        /// The position.
        position: usize,
        /// The value given.
        value: f64,
    },
    /// The target's probabilities at one position do not sum to 1 (obp's `np.allclose(sum, 1)` tolerance:
    /// `|sum - 1| <= 1e-8 + 1e-5`).
    #[error("round {round}: the target probabilities at position {position} sum to {sum}, not 1")]
    TargetNotADistribution {
        /// The round.
        round: usize,
        /// The position.
        position: usize,
        /// Their sum.
        sum: f64,
    },
    /// Some rounds carry reward-model predictions and others do not.
    #[error("round {round} {which} reward-model predictions but round 0 {first}")]
    RewardModelInconsistent {
        /// The first round that differs from round 0.
        round: usize,
        /// "has" or "lacks".
        which: &'static str,
        /// What round 0 does.
        first: &'static str,
    },
    /// The direct method and the doubly robust estimators need reward-model predictions.
    #[error("{estimator} needs reward-model predictions q_hat(x, a) and the log carries none")]
    MissingRewardModel {
        /// The estimator's name.
        estimator: &'static str,
    },
    /// Self-normalised IPS divides by the sum of the importance weights, and it is zero: the target never
    /// plays what the logging policy played.
    #[error("the importance weights sum to zero: the target never plays a logged action, so SNIPS is undefined")]
    ZeroTotalWeight,
    /// A setting is out of its domain.
    #[error("invalid setting: {name} {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// What was expected and what was given.
        reason: String,
    },
}

/// obp's tolerance for "sums to 1" (`np.allclose` defaults: `atol + rtol * |1|`).
const SUM_TOLERANCE: f64 = 1e-8 + 1e-5;

/// One logged round, borrowed from the caller: what the logging policy did and saw, and what the target
/// policy would have done.
///
/// `target` and `reward_model` are laid out action-major like obp's `action_dist[i]` (K x positions):
/// entry `a * num_positions + k` is `pi_e(a | x, k)`, respectively `q_hat(x, a, k)`. With a single position
/// that is simply one entry per action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedRound<'a> {
    /// The action the logging policy played, `a_i`.
    pub action: usize,
    /// The position (slot) it was shown in, 0-based; 0 when there is only one.
    pub position: usize,
    /// The reward observed, `r_i`.
    pub reward: f64,
    /// The probability with which the logging policy played `action` at `position`, `pi_b(a_i | x_i)`.
    pub propensity: f64,
    /// The target policy's action distribution `pi_e(. | x_i, .)`, K x positions.
    pub target: &'a [f64],
    /// A reward model's predictions `q_hat(x_i, ., .)`, K x positions, for the direct method and doubly
    /// robust estimators.
    pub reward_model: Option<&'a [f64]>,
}

/// A log given column by column, in obp's shapes, for [`LoggedBandit::from_columns`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogColumns<'a> {
    /// Number of actions, K.
    pub num_actions: usize,
    /// Number of positions (obp's `len_list`).
    pub num_positions: usize,
    /// Logged actions, length n (obp's `action`).
    pub actions: &'a [usize],
    /// Logged positions, 0-based, length n (obp's `position`); `None` means a single position, as in obp.
    pub positions: Option<&'a [usize]>,
    /// Rewards, length n (obp's `reward`).
    pub rewards: &'a [f64],
    /// Logging propensities, length n (obp's `pscore`).
    pub propensities: &'a [f64],
    /// The target's action distributions, n x K x positions flattened row-major (obp's `action_dist`).
    pub target: &'a [f64],
    /// Reward-model predictions, n x K x positions flattened row-major (obp's
    /// `estimated_rewards_by_reg_model`).
    pub reward_model: Option<&'a [f64]>,
}

/// A validated log of bandit feedback with the target policy's action distributions: the input of every
/// estimator. Built once by [`LoggedBandit::new`] or [`LoggedBandit::from_columns`], which check every
/// value, so the estimators themselves cannot fail on the data.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedBandit {
    num_actions: usize,
    num_positions: usize,
    actions: Vec<usize>,
    positions: Vec<usize>,
    rewards: Vec<f64>,
    propensities: Vec<f64>,
    /// n x K x positions, row-major (obp's `action_dist`).
    target: Vec<f64>,
    /// n x K x positions, row-major (obp's `estimated_rewards_by_reg_model`).
    reward_model: Option<Vec<f64>>,
}

impl LoggedBandit {
    /// Checks and copies a log given round by round.
    ///
    /// Rejects an empty log, an action or position out of range, a non-finite reward, propensity, target
    /// probability or prediction, a propensity outside (0, 1], a target probability outside [0, 1], a target
    /// whose probabilities at some position do not sum to 1 (obp's tolerance), arrays of the wrong length,
    /// and reward-model predictions given for some rounds only.
    pub fn new<'a>(
        num_actions: usize,
        num_positions: usize,
        rounds: impl IntoIterator<Item = LoggedRound<'a>>,
    ) -> Result<LoggedBandit, OpeError> {
        if num_actions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_actions" });
        }
        if num_positions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_positions" });
        }
        let width = num_actions * num_positions;
        let mut log = LoggedBandit {
            num_actions,
            num_positions,
            actions: Vec::new(),
            positions: Vec::new(),
            rewards: Vec::new(),
            propensities: Vec::new(),
            target: Vec::new(),
            reward_model: None,
        };
        for (i, round) in rounds.into_iter().enumerate() {
            if round.action >= num_actions {
                return Err(OpeError::ActionOutOfRange { round: i, action: round.action, num_actions });
            }
            if round.position >= num_positions {
                return Err(OpeError::PositionOutOfRange { round: i, position: round.position, num_positions });
            }
            finite(i, "reward", round.reward)?;
            finite(i, "propensity", round.propensity)?;
            if !(round.propensity > 0.0 && round.propensity <= 1.0) {
                return Err(OpeError::PropensityOutOfRange { round: i, value: round.propensity });
            }
            check_target(i, round.target, num_actions, num_positions)?;
            match (round.reward_model, &mut log.reward_model) {
                (Some(q), Some(all)) => {
                    check_predictions(i, q, width)?;
                    all.extend_from_slice(q);
                }
                (Some(q), None) if i == 0 => {
                    check_predictions(i, q, width)?;
                    log.reward_model = Some(q.to_vec());
                }
                (Some(_), None) => {
                    return Err(OpeError::RewardModelInconsistent { round: i, which: "has", first: "lacks them" });
                }
                (None, Some(_)) => {
                    return Err(OpeError::RewardModelInconsistent { round: i, which: "lacks", first: "has them" });
                }
                (None, None) => {}
            }
            log.actions.push(round.action);
            log.positions.push(round.position);
            log.rewards.push(round.reward);
            log.propensities.push(round.propensity);
            log.target.extend_from_slice(round.target);
        }
        if log.actions.is_empty() {
            return Err(OpeError::EmptyLog);
        }
        Ok(log)
    }

    /// Checks and copies a log given column by column, in obp's shapes (see [`LogColumns`]).
    pub fn from_columns(columns: LogColumns<'_>) -> Result<LoggedBandit, OpeError> {
        let LogColumns { num_actions, num_positions, actions, positions, rewards, propensities, target, reward_model } =
            columns;
        if num_actions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_actions" });
        }
        if num_positions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_positions" });
        }
        let n = actions.len();
        let width = num_actions * num_positions;
        same_length("rewards", n, rewards.len())?;
        same_length("propensities", n, propensities.len())?;
        if let Some(positions) = positions {
            same_length("positions", n, positions.len())?;
        } else if num_positions > 1 {
            return Err(OpeError::LengthMismatch { what: "positions", expected: n, got: 0 });
        }
        same_length("target (n x actions x positions)", n * width, target.len())?;
        if let Some(q) = reward_model {
            same_length("reward_model (n x actions x positions)", n * width, q.len())?;
        }
        let rounds = (0..n).map(|i| LoggedRound {
            action: actions[i],
            position: positions.map_or(0, |p| p[i]),
            reward: rewards[i],
            propensity: propensities[i],
            target: &target[i * width..(i + 1) * width],
            reward_model: reward_model.map(|q| &q[i * width..(i + 1) * width]),
        });
        LoggedBandit::new(num_actions, num_positions, rounds)
    }

    /// Number of rounds, n.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Always false: a log holds at least one round.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Number of actions, K.
    pub fn num_actions(&self) -> usize {
        self.num_actions
    }

    /// Number of positions.
    pub fn num_positions(&self) -> usize {
        self.num_positions
    }

    /// Whether the log carries reward-model predictions.
    pub fn has_reward_model(&self) -> bool {
        self.reward_model.is_some()
    }

    /// The observed rewards, in log order.
    pub fn rewards(&self) -> &[f64] {
        &self.rewards
    }

    /// The importance weights `w_i = pi_e(a_i | x_i, k_i) / p_i`, in log order.
    pub fn importance_weights(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.importance_weight(i)).collect()
    }

    /// Offset of round i's (action, position) entry in the n x K x positions arrays.
    fn at(&self, i: usize, action: usize, position: usize) -> usize {
        (i * self.num_actions + action) * self.num_positions + position
    }

    fn importance_weight(&self, i: usize) -> f64 {
        self.target[self.at(i, self.actions[i], self.positions[i])] / self.propensities[i]
    }

    /// `q_hat(x_i, pi_e)` at the logged position as obp computes it, `np.average(q_hat, weights=pi_e)`:
    /// `sum_a pi_e(a) q_hat(a) / sum_a pi_e(a)`. The division matters only when the target sums to 1 within
    /// obp's tolerance rather than exactly, and keeps the match with obp exact there too.
    fn model_value(&self, q: &[f64], i: usize) -> f64 {
        let k = self.positions[i];
        let (mut weighted, mut total) = (0.0, 0.0);
        for a in 0..self.num_actions {
            let j = self.at(i, a, k);
            weighted += self.target[j] * q[j];
            total += self.target[j];
        }
        weighted / total
    }
}

fn finite(round: usize, what: &'static str, value: f64) -> Result<(), OpeError> {
    if value.is_finite() { Ok(()) } else { Err(OpeError::NonFinite { round, what, value }) }
}

fn same_length(what: &'static str, expected: usize, got: usize) -> Result<(), OpeError> {
    if expected == got { Ok(()) } else { Err(OpeError::LengthMismatch { what, expected, got }) }
}

fn round_length(round: usize, what: &'static str, expected: usize, got: usize) -> Result<(), OpeError> {
    if expected == got { Ok(()) } else { Err(OpeError::RoundLengthMismatch { round, what, expected, got }) }
}

fn check_target(round: usize, target: &[f64], num_actions: usize, num_positions: usize) -> Result<(), OpeError> {
    round_length(round, "the target", num_actions * num_positions, target.len())?;
    for (j, &p) in target.iter().enumerate() {
        finite(round, "target probability", p)?;
        if !(0.0..=1.0).contains(&p) {
            let (action, position) = (j / num_positions, j % num_positions);
            return Err(OpeError::TargetProbabilityOutOfRange { round, action, position, value: p });
        }
    }
    for position in 0..num_positions {
        let sum: f64 = (0..num_actions).map(|a| target[a * num_positions + position]).sum();
        if (sum - 1.0).abs() > SUM_TOLERANCE {
            return Err(OpeError::TargetNotADistribution { round, position, sum });
        }
    }
    Ok(())
}

fn check_predictions(round: usize, q: &[f64], width: usize) -> Result<(), OpeError> {
    round_length(round, "the reward model", width, q.len())?;
    q.iter().try_for_each(|&v| finite(round, "reward-model prediction", v))
}

/// Checks a bootstrap / estimator setting that must be a finite number in a closed range.
fn check_range(name: &'static str, value: f64, min: f64, max: f64) -> Result<(), OpeError> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(OpeError::InvalidSetting { name, reason: format!("must be in [{min}, {max}], got {value}") })
    }
}
