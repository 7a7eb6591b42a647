//! The estimators: inverse propensity scoring, its self-normalised form, the direct method, doubly robust and
//! switch doubly robust, each as obp defines it (`obp.ope.estimators`, v0.5.7): the estimate is the mean over
//! rounds of a round-wise value, and the bootstrap resamples those values.

use serde::{Deserialize, Serialize};

use super::{LoggedBandit, OpeError};

/// An off-policy estimator of a target policy's value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    /// Inverse propensity scoring (Horvitz & Thompson 1952; Strehl et al. 2010): `mean_i(w_i r_i)`. Unbiased
    /// when the propensities are right and the target never plays an action the logger could not; its
    /// variance grows with the weights. obp's `InverseProbabilityWeighting` with `lambda_ = inf`.
    Ips,
    /// Self-normalised IPS (Swaminathan & Joachims 2015): `sum_i(w_i r_i) / sum_i(w_i)`. Biased but consistent,
    /// bounded by the reward range, and far steadier than IPS when the weights are large. obp's
    /// `SelfNormalizedInverseProbabilityWeighting`, whose round-wise values are `w_i r_i / mean(w)`.
    Snips,
    /// Direct method (Beygelzimer & Langford 2009; Dudik et al. 2011): `mean_i sum_a pi_e(a|x_i) q_hat(x_i, a)`,
    /// at each round's logged position. Low variance, and as biased as the reward model. obp's `DirectMethod`.
    Dm,
    /// Doubly robust (Dudik, Langford, Li 2011, "Doubly Robust Policy Evaluation and Learning"): the direct
    /// method plus the importance-weighted residual of the logged action,
    /// `mean_i [q_hat(x_i, pi_e) + w_i (r_i - q_hat(x_i, a_i))]`. Consistent if either the propensities or the
    /// reward model are right. obp's `DoublyRobust` with `lambda_ = inf`.
    Dr,
    /// Switch doubly robust (Wang, Agarwal, Dudik 2017, "Optimal and Adaptive Off-policy Evaluation in
    /// Contextual Bandits"): doubly robust on rounds with `w_i <= tau`, the direct method alone on rounds whose
    /// weight exceeds `tau`, trading the variance of large weights for the reward model's bias. `tau = inf`
    /// is DR; `tau = 0` is DM. obp's `SwitchDoublyRobust(lambda_ = tau)`.
    SwitchDr {
        /// The weight threshold, at least 0 (may be infinite).
        tau: f64,
    },
}

impl Estimator {
    /// A short name for reports: "ips", "snips", "dm", "dr", "switch-dr".
    pub fn name(&self) -> &'static str {
        match self {
            Estimator::Ips => "ips",
            Estimator::Snips => "snips",
            Estimator::Dm => "dm",
            Estimator::Dr => "dr",
            Estimator::SwitchDr { .. } => "switch-dr",
        }
    }

    /// Whether the estimator needs reward-model predictions.
    pub fn needs_reward_model(&self) -> bool {
        matches!(self, Estimator::Dm | Estimator::Dr | Estimator::SwitchDr { .. })
    }

    /// Checks the estimator's own setting (Switch-DR's `tau` must be at least 0, as obp requires).
    pub fn validate(&self) -> Result<(), OpeError> {
        match *self {
            Estimator::SwitchDr { tau } if tau.is_nan() || tau < 0.0 => Err(OpeError::InvalidSetting {
                name: "tau",
                reason: format!("must be at least 0 (infinity allowed), got {tau}"),
            }),
            _ => Ok(()),
        }
    }

    /// The round-wise values whose mean is the estimate (obp's `_estimate_round_rewards`), in log order.
    ///
    /// For SNIPS they are `w_i r_i / mean(w)` with the normaliser taken over the whole log, exactly as obp
    /// computes them, so a bootstrap over them keeps the full-log normaliser fixed.
    pub fn round_values(&self, log: &LoggedBandit) -> Result<Vec<f64>, OpeError> {
        self.validate()?;
        let n = log.len();
        let reward_model =
            || log.reward_model.as_deref().ok_or(OpeError::MissingRewardModel { estimator: self.name() });
        Ok(match *self {
            Estimator::Ips => (0..n).map(|i| log.rewards[i] * log.importance_weight(i)).collect(),
            Estimator::Snips => {
                let weights = log.importance_weights();
                let mean_weight = weights.iter().sum::<f64>() / n as f64;
                if mean_weight == 0.0 {
                    return Err(OpeError::ZeroTotalWeight);
                }
                (0..n).map(|i| log.rewards[i] * weights[i] / mean_weight).collect()
            }
            Estimator::Dm => {
                let q = reward_model()?;
                (0..n).map(|i| log.model_value(q, i)).collect()
            }
            Estimator::Dr => {
                let q = reward_model()?;
                (0..n).map(|i| log.model_value(q, i) + log.importance_weight(i) * residual(log, q, i)).collect()
            }
            Estimator::SwitchDr { tau } => {
                let q = reward_model()?;
                (0..n)
                    .map(|i| {
                        let w = log.importance_weight(i);
                        let switch = if w <= tau { 1.0 } else { 0.0 };
                        log.model_value(q, i) + switch * w * residual(log, q, i)
                    })
                    .collect()
            }
        })
    }

    /// The estimate of the target policy's value on the log (obp's `estimate_policy_value`).
    pub fn estimate(&self, log: &LoggedBandit) -> Result<f64, OpeError> {
        let values = self.round_values(log)?;
        Ok(mean(&values))
    }
}

/// `r_i - q_hat(x_i, a_i)` at the logged position.
fn residual(log: &LoggedBandit, q: &[f64], i: usize) -> f64 {
    log.rewards[i] - q[log.at(i, log.actions[i], log.positions[i])]
}

pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
