//! Nonparametric bootstrap confidence intervals (Efron & Tibshirani 1993, the percentile interval), as obp's
//! `estimate_confidence_interval_by_bootstrap` computes them.
//!
//! What matches obp exactly: the procedure. The round-wise values of the estimator (obp's
//! `_estimate_round_rewards`) are resampled with replacement, n at a time, `resamples` times; each resample's
//! mean is one bootstrap estimate; the interval is the `alpha/2` and `1 - alpha/2` percentiles of the
//! bootstrap estimates with numpy's default linear interpolation (`np.percentile`, method "linear"); the
//! reported `mean` is the mean of the bootstrap estimates (obp's "mean"). What cannot match: the draws
//! themselves. obp draws with numpy's `RandomState` (Mersenne Twister); this module draws with a seeded
//! `Xoshiro256PlusPlus`, so a given seed reproduces this module's intervals bit for bit but not obp's, whose
//! intervals agree with these only up to bootstrap noise.

use rand::{Rng, RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::estimators::mean;
use super::{Estimator, LoggedBandit, OpeError, check_range};

/// An estimate with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapInterval {
    /// The estimate on the whole log (obp's `estimate_policy_value`).
    pub estimate: f64,
    /// The mean of the bootstrap estimates (what obp's `estimate_interval` reports as "mean").
    pub mean: f64,
    /// The `alpha / 2` percentile of the bootstrap estimates.
    pub lower: f64,
    /// The `1 - alpha / 2` percentile of the bootstrap estimates.
    pub upper: f64,
    /// The significance level: the interval is a `1 - alpha` interval.
    pub alpha: f64,
    /// Number of bootstrap resamples.
    pub resamples: usize,
}

/// An estimator and its estimate with interval, as reports list them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EstimatorInterval {
    /// The estimator.
    pub estimator: Estimator,
    /// Its estimate and bootstrap interval.
    pub interval: BootstrapInterval,
}

/// The estimator's value on the log with a `1 - alpha` bootstrap percentile interval from `resamples`
/// resamples drawn from `Xoshiro256PlusPlus::seed_from_u64(seed)`: the same seed gives the same interval.
/// obp's `estimate_interval(alpha, n_bootstrap_samples, random_state)`, up to the random stream.
pub fn bootstrap_interval(
    estimator: Estimator,
    log: &LoggedBandit,
    resamples: usize,
    alpha: f64,
    seed: u64,
) -> Result<BootstrapInterval, OpeError> {
    bootstrap_interval_with_rng(estimator, log, resamples, alpha, &mut Xoshiro256PlusPlus::seed_from_u64(seed))
}

/// [`bootstrap_interval`] drawing from the caller's random stream.
pub fn bootstrap_interval_with_rng<R: Rng + ?Sized>(
    estimator: Estimator,
    log: &LoggedBandit,
    resamples: usize,
    alpha: f64,
    rng: &mut R,
) -> Result<BootstrapInterval, OpeError> {
    check_settings(resamples, alpha)?;
    let values = estimator.round_values(log)?;
    Ok(interval_of_means(&values, resamples, alpha, rng))
}

/// A `1 - alpha` bootstrap percentile interval for the mean of `samples`: obp's
/// `estimate_confidence_interval_by_bootstrap(samples, alpha, n_bootstrap_samples, random_state)`, up to the
/// random stream. Use it for a mean that is not an [`Estimator`], such as a logged policy's on-policy
/// reward, or the round-wise difference between a logged reward and a target's round-wise value.
pub fn bootstrap_mean_interval(
    samples: &[f64],
    resamples: usize,
    alpha: f64,
    seed: u64,
) -> Result<BootstrapInterval, OpeError> {
    check_settings(resamples, alpha)?;
    if samples.is_empty() {
        return Err(OpeError::EmptyLog);
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(OpeError::NonFinite { round: i, what: "sample", value: samples[i] });
    }
    Ok(interval_of_means(samples, resamples, alpha, &mut Xoshiro256PlusPlus::seed_from_u64(seed)))
}

/// obp's `check_confidence_interval_arguments`: `alpha` in [0, 1], at least one resample.
fn check_settings(resamples: usize, alpha: f64) -> Result<(), OpeError> {
    if resamples == 0 {
        return Err(OpeError::InvalidSetting { name: "resamples", reason: "must be at least 1, got 0".into() });
    }
    check_range("alpha", alpha, 0.0, 1.0)
}

fn interval_of_means<R: Rng + ?Sized>(values: &[f64], resamples: usize, alpha: f64, rng: &mut R) -> BootstrapInterval {
    let n = values.len();
    let mut estimates: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    let bootstrap_mean = mean(&estimates);
    estimates.sort_unstable_by(f64::total_cmp);
    // obp passes 100 * (alpha / 2) to np.percentile, which divides by 100 again; doing the same keeps the
    // interpolation weights bit-identical.
    let lower = percentile(&estimates, 100.0 * (alpha / 2.0) / 100.0);
    let upper = percentile(&estimates, 100.0 * (1.0 - alpha / 2.0) / 100.0);
    BootstrapInterval { estimate: mean(values), mean: bootstrap_mean, lower, upper, alpha, resamples }
}

/// numpy's default percentile (method "linear", Hyndman & Fan 1996 type 7) of sorted values at quantile
/// `q` in [0, 1]: the virtual index `(n - 1) q` interpolated between its neighbours with numpy's `_lerp`,
/// which interpolates from the upper neighbour when the fraction is at least one half.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * q;
    if virtual_index >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    let (a, b) = (sorted[below as usize], sorted[below as usize + 1]);
    let diff = b - a;
    if gamma >= 0.5 { b - diff * (1.0 - gamma) } else { a + diff * gamma }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    /// Values from numpy 2.2: np.percentile([1, 2, 3, 4, 10], [2.5, 97.5, 50, 0, 100, 60]).
    #[test]
    fn percentile_matches_numpy_linear() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        // virtual index 4 * 0.025 = 0.1: 1 + (2 - 1) * 0.1
        assert!((percentile(&sorted, 0.025) - 1.1).abs() < 1e-12);
        // virtual index 4 * 0.975 = 3.9, fraction >= 0.5 so from above: 10 - (10 - 4) * (1 - 0.9)
        assert!((percentile(&sorted, 0.975) - 9.4).abs() < 1e-12);
        assert_eq!(percentile(&sorted, 0.5), 3.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&sorted, 1.0), 10.0);
        // virtual index 4 * 0.6 = 2.4: 3 + (4 - 3) * 0.4
        assert!((percentile(&sorted, 0.6) - 3.4).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 0.3), 7.0);
    }
}
