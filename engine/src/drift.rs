//! The drift guard: sequential change detection on a learner's standardised residuals.
//!
//! A linear model that fits predicts each reward up to noise: with z = (r - <x, theta_hat>) /
//! (R sqrt(1 + x^T V^-1 x)) the residual's scale accounts for both the noise (R-sub-Gaussian) and the
//! estimate's own uncertainty, so E[z^2] <= 1 while the model fits. When the world changes under the learner
//! (theta* jumps or drifts) the residuals gain a bias and z^2 grows. A one-sided CUSUM (Page 1954) on
//! min(z^2, cap) - 1 - allowance accumulates that excess and raises an alarm once it passes a threshold; the
//! policy then plays the baseline until an operator clears the alarm.
//!
//! Both values the residual needs are by-products of the ridge update, so the guard costs O(1) per reward.

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Settings of the drift guard.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftGuardConfig {
    /// Alarm when the CUSUM statistic exceeds this (h). Larger: fewer false alarms, slower detection.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Excess of z^2 over 1 tolerated per reward before it accumulates (k).
    #[serde(default = "default_allowance")]
    pub allowance: f64,
    /// Rewards to learn from before the guard watches: a fresh model's residuals say nothing about drift.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// Cap on one residual's z^2, so a single outlier cannot raise the alarm alone.
    #[serde(default = "default_cap")]
    pub cap: f64,
}

fn default_threshold() -> f64 {
    20.0
}
fn default_allowance() -> f64 {
    0.5
}
fn default_warmup() -> u64 {
    50
}
fn default_cap() -> f64 {
    16.0
}

impl Default for DriftGuardConfig {
    fn default() -> Self {
        DriftGuardConfig {
            threshold: default_threshold(),
            allowance: default_allowance(),
            warmup: default_warmup(),
            cap: default_cap(),
        }
    }
}

impl DriftGuardConfig {
    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        for (field, value) in [
            ("drift_guard.threshold", self.threshold),
            ("drift_guard.allowance", self.allowance),
            ("drift_guard.cap", self.cap),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(EngineError::InvalidConfig {
                    field,
                    reason: format!("must be finite and > 0, got {value}"),
                });
            }
        }
        if self.cap <= 1.0 + self.allowance {
            return Err(EngineError::InvalidConfig {
                field: "drift_guard.cap",
                reason: format!(
                    "must exceed 1 + allowance = {}, or no residual could ever count",
                    1.0 + self.allowance
                ),
            });
        }
        Ok(())
    }
}

/// A raised alarm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// How many rewards the policy had learned from when the alarm was raised.
    pub at_reward: u64,
    /// The CUSUM statistic then.
    pub statistic: f64,
}

/// The detector's running state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DriftGuard {
    config: DriftGuardConfig,
    statistic: f64,
    watched: u64,
    alarm: Option<DriftAlarm>,
}

impl DriftGuard {
    pub(crate) fn new(config: DriftGuardConfig) -> Self {
        DriftGuard { config, statistic: 0.0, watched: 0, alarm: None }
    }

    /// Feeds one standardised residual; `rewards` is the number of rewards learned from so far.
    pub(crate) fn observe(&mut self, z: f64, rewards: u64) {
        if rewards <= self.config.warmup || !z.is_finite() {
            return;
        }
        self.watched += 1;
        let excess = (z * z).min(self.config.cap) - 1.0 - self.config.allowance;
        self.statistic = (self.statistic + excess).max(0.0);
        if self.alarm.is_none() && self.statistic > self.config.threshold {
            self.alarm = Some(DriftAlarm { at_reward: rewards, statistic: self.statistic });
        }
    }

    pub(crate) fn alarm(&self) -> Option<DriftAlarm> {
        self.alarm
    }

    pub(crate) fn statistic(&self) -> f64 {
        self.statistic
    }

    /// The operator's "resume": forget the alarm and the evidence behind it.
    pub(crate) fn clear(&mut self) {
        self.alarm = None;
        self.statistic = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_residuals_never_alarm_and_a_shift_alarms_quickly() {
        let mut guard = DriftGuard::new(DriftGuardConfig::default());
        // Residuals of a fitting model: |z| <= 1 always (bounded noise scaled by its bound).
        for i in 0..100_000u64 {
            let z = ((i * 7919) % 2001) as f64 / 1000.0 - 1.0;
            guard.observe(z, i + 1);
        }
        assert_eq!(guard.alarm(), None);
        // The world changes: residuals now carry a bias of 3 noise scales.
        let mut detected = None;
        for i in 0..100u64 {
            guard.observe(3.0, 100_001 + i);
            if guard.alarm().is_some() {
                detected = Some(i + 1);
                break;
            }
        }
        assert_eq!(detected, Some(3), "7.5 per reward crosses 20 on the third");
        guard.clear();
        assert_eq!((guard.alarm(), guard.statistic()), (None, 0.0));
    }

    #[test]
    fn a_single_outlier_cannot_raise_the_alarm() {
        let mut guard = DriftGuard::new(DriftGuardConfig::default());
        guard.observe(1e6, 1_000);
        assert_eq!(guard.alarm(), None);
    }
}
