//! A reward model for the direct method and doubly robust estimators that needs no features: the mean reward
//! of each (action, position) cell, shrunk toward its position's mean reward, optionally cross-fitted.
//!
//! obp fits `q_hat` with a scikit-learn regressor on the contexts (`obp.ope.RegressionModel`); this crate has
//! no such learner and the estimators only need the predictions, so any model can be plugged in through
//! [`LoggedRound::reward_model`](super::LoggedRound). This one is the simplest that is not useless on click
//! logs, where most cells see a few hundred impressions and a handful of clicks: with `m` pseudo-observations
//! at the position's rate, `q_hat(a, k) = (sum of rewards in (a, k) + m * mean_k) / (count(a, k) + m)`, the
//! posterior mean under a conjugate prior worth `m` observations centred on the position's rate (empirical
//! Bayes shrinkage). It ignores the context, so on logs where the reward depends on
//! the context the direct method is biased and doubly robust leans on its importance-weighted correction.

use serde::{Deserialize, Serialize};

use super::OpeError;

/// Per-(action, position) mean rewards shrunk toward each position's mean reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRewardModel {
    num_actions: usize,
    num_positions: usize,
    /// K x positions, action-major like obp's `estimated_rewards_by_reg_model[i]`.
    predictions: Vec<f64>,
}

impl CellRewardModel {
    /// Fits the model on `(action, position, reward)` observations with `smoothing` pseudo-observations per
    /// cell (`smoothing = 0` gives the raw cell means, and the position mean for a cell never observed; a
    /// position never observed falls back to the overall mean, and a model fitted on nothing predicts 0).
    pub fn fit(
        num_actions: usize,
        num_positions: usize,
        observations: impl IntoIterator<Item = (usize, usize, f64)>,
        smoothing: f64,
    ) -> Result<CellRewardModel, OpeError> {
        if num_actions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_actions" });
        }
        if num_positions == 0 {
            return Err(OpeError::ZeroDimension { what: "num_positions" });
        }
        if !(smoothing.is_finite() && smoothing >= 0.0) {
            return Err(OpeError::InvalidSetting {
                name: "smoothing",
                reason: format!("must be a finite number at least 0, got {smoothing}"),
            });
        }
        let width = num_actions * num_positions;
        let (mut sums, mut counts) = (vec![0.0; width], vec![0.0; width]);
        for (round, (action, position, reward)) in observations.into_iter().enumerate() {
            if action >= num_actions {
                return Err(OpeError::ActionOutOfRange { round, action, num_actions });
            }
            if position >= num_positions {
                return Err(OpeError::PositionOutOfRange { round, position, num_positions });
            }
            if !reward.is_finite() {
                return Err(OpeError::NonFinite { round, what: "reward", value: reward });
            }
            sums[action * num_positions + position] += reward;
            counts[action * num_positions + position] += 1.0;
        }
        let total_count: f64 = counts.iter().sum();
        let overall = if total_count > 0.0 { sums.iter().sum::<f64>() / total_count } else { 0.0 };
        let position_means: Vec<f64> = (0..num_positions)
            .map(|k| {
                let (s, c) = (0..num_actions)
                    .fold((0.0, 0.0), |(s, c), a| (s + sums[a * num_positions + k], c + counts[a * num_positions + k]));
                if c > 0.0 { s / c } else { overall }
            })
            .collect();
        let predictions = (0..width)
            .map(|j| {
                let prior = position_means[j % num_positions];
                let weight = counts[j] + smoothing;
                if weight > 0.0 { (sums[j] + smoothing * prior) / weight } else { prior }
            })
            .collect();
        Ok(CellRewardModel { num_actions, num_positions, predictions })
    }

    /// Cross-fitting (Chernozhukov et al. 2018; obp's `RegressionModel.fit_predict(n_folds)`): with `folds`
    /// at least 2, round i belongs to fold `i % folds` and is predicted by the model fitted on the other
    /// folds, so no round's prediction has seen its own reward and the doubly robust correction is not
    /// shrunk toward zero by overfitting. Folds are interleaved by round index (obp shuffles with
    /// scikit-learn's `KFold`), which keeps them deterministic and spreads a time-ordered log. Returns one
    /// model per fold; with `folds = 1`, the one model fitted on every round (in-sample). Needs at least
    /// `folds` observations.
    pub fn cross_fit(
        num_actions: usize,
        num_positions: usize,
        observations: &[(usize, usize, f64)],
        smoothing: f64,
        folds: usize,
    ) -> Result<Vec<CellRewardModel>, OpeError> {
        if folds == 0 || folds > observations.len().max(1) {
            return Err(OpeError::InvalidSetting {
                name: "folds",
                reason: format!("must be between 1 and the number of rounds ({}), got {folds}", observations.len()),
            });
        }
        if folds == 1 {
            return Ok(vec![CellRewardModel::fit(
                num_actions,
                num_positions,
                observations.iter().copied(),
                smoothing,
            )?]);
        }
        (0..folds)
            .map(|fold| {
                let training = observations.iter().enumerate().filter(|(i, _)| i % folds != fold).map(|(_, &o)| o);
                CellRewardModel::fit(num_actions, num_positions, training, smoothing)
            })
            .collect()
    }

    /// The predictions `q_hat(a, k)`, K x positions, action-major: ready to pass as a round's reward model.
    pub fn predictions(&self) -> &[f64] {
        &self.predictions
    }

    /// The prediction for one action at one position.
    pub fn predict(&self, action: usize, position: usize) -> f64 {
        self.predictions[action * self.num_positions + position]
    }

    /// Number of actions the model covers.
    pub fn num_actions(&self) -> usize {
        self.num_actions
    }
}
