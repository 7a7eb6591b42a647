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
//!
//! How often it cries wolf: for R-sub-Gaussian noise, z is 1-sub-Gaussian (up to the estimate's own error,
//! which the standardisation accounts for), so E[exp(theta z^2)] <= (1 - 2 theta)^(-1/2), with equality for
//! Gaussian noise of standard deviation R, the worst case. At the root theta* of
//! (1 - 2 theta)^(-1/2) = exp(theta (1 + k)) every increment has E[exp(theta* increment)] <= 1 (the cap only
//! lowers increments), so each partial sum of increments is an exponential supermartingale; by Ville's
//! inequality one started at any reward passes h with probability at most exp(-theta* h), and the CUSUM
//! alarms within n rewards with probability at most n exp(-theta* h) ([`DriftGuardConfig::false_alarm_bound`]).
//! The defaults (k = 1, h = 48) make that 0.5% over a million rewards. The earlier defaults (k = 0.5, h = 20)
//! promised nothing: under Gaussian noise at R, 115 of 400 runs of 2,000 rewards raised a false alarm.

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
    48.0
}
fn default_allowance() -> f64 {
    1.0
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
    /// An upper bound on the probability that the guard raises an alarm within `rewards` watched rewards
    /// while the model fits, for any R-sub-Gaussian noise (see the module documentation).
    pub fn false_alarm_bound(&self, rewards: u64) -> f64 {
        (rewards as f64 * (-self.exponent() * self.threshold).exp()).min(1.0)
    }

    /// theta* in (0, 1/2): the root of -ln(1 - 2 theta) / 2 = theta (1 + allowance), by bisection (the left
    /// side is convex, equal to the right at 0 with a smaller slope, and goes to infinity at 1/2).
    fn exponent(&self) -> f64 {
        let gap = |theta: f64| -0.5 * (1.0 - 2.0 * theta).ln() - theta * (1.0 + self.allowance);
        let (mut below, mut above) = (0.0, 0.5);
        for _ in 0..60 {
            let mid = 0.5 * (below + above);
            if gap(mid) < 0.0 {
                below = mid;
            } else {
                above = mid;
            }
        }
        below
    }

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
        assert_eq!(detected, Some(7), "an excess of 7 per reward crosses 48 on the seventh");
        guard.clear();
        assert_eq!((guard.alarm(), guard.statistic()), (None, 0.0));
    }

    #[test]
    fn the_false_alarm_bound_matches_its_derivation() {
        let default = DriftGuardConfig::default();
        // theta* for k = 1: -ln(1 - 2 theta) / 2 = 2 theta at theta = 0.3984 (checked by hand).
        assert!((default.exponent() - 0.3984).abs() < 5e-4, "{}", default.exponent());
        let million = default.false_alarm_bound(1_000_000);
        assert!((0.004..0.006).contains(&million), "{million}");
        let old = DriftGuardConfig { threshold: 20.0, allowance: 0.5, ..default };
        assert_eq!(old.false_alarm_bound(10_000), 1.0, "the old defaults promised nothing over 10k rewards");
    }

    /// Runs of `rewards` residuals z ~ N(0, 1) (a fitting model under Gaussian noise at R, the worst case)
    /// that raised an alarm, out of `runs`.
    fn gaussian_alarms(config: DriftGuardConfig, runs: u64, rewards: u64) -> u64 {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        (0..runs)
            .filter(|&seed| {
                let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
                let mut guard = DriftGuard::new(config);
                for i in 0..rewards {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    guard.observe(z, config.warmup + 1 + i);
                }
                guard.alarm().is_some()
            })
            .count() as u64
    }

    #[test]
    fn gaussian_residuals_alarm_no_more_often_than_the_bound_says() {
        let (runs, rewards) = (400, 2_000);
        // A threshold low enough for alarms to happen, so the comparison with the bound means something.
        let low = DriftGuardConfig { threshold: 20.0, ..DriftGuardConfig::default() };
        let alarms = gaussian_alarms(low, runs, rewards);
        let bound = low.false_alarm_bound(rewards);
        eprintln!("k = 1, h = 20: {alarms}/{runs} runs of {rewards} N(0, 1) residuals alarmed; bound {bound:.3}");
        assert!(alarms > 0 && alarms as f64 / runs as f64 <= bound, "{alarms}/{runs} against a bound of {bound}");
        let default = gaussian_alarms(DriftGuardConfig::default(), runs, rewards);
        let old = gaussian_alarms(DriftGuardConfig { threshold: 20.0, allowance: 0.5, ..low }, runs, rewards);
        eprintln!("defaults: {default}/{runs} alarmed; the earlier defaults (k = 0.5, h = 20): {old}/{runs}");
        assert_eq!(default, 0);
        assert!(old > runs / 5, "the earlier defaults cried wolf in {old}/{runs} runs");
    }

    #[test]
    fn a_single_outlier_cannot_raise_the_alarm() {
        let mut guard = DriftGuard::new(DriftGuardConfig::default());
        guard.observe(1e6, 1_000);
        assert_eq!(guard.alarm(), None);
    }
}
