//! The classic check of an off-policy estimator on real data (Saito et al. 2021): estimate the
//! click rate of ZOZOTOWN's Bernoulli Thompson sampling policy from the impressions a uniform-random policy
//! logged on the same campaign, and compare with the click rate Thompson sampling obtained on-policy.
//!
//! The target's action distribution is obp's `BernoulliTS(is_zozotown_prior=True, campaign="all")
//! .compute_batch_action_dist(n_sim)`: draw one Beta(alpha_a, beta_a) sample per item from the production
//! prior, rank the items by it, and let the top `len_list` fill positions 0..len_list; the frequency with
//! which item a lands at position k over the simulations is `pi_e(a | k)`, the same for every impression
//! (the production policy ignored the user). Pure: the shell reads the CSV logs and the prior.

use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::bootstrap::EstimatorInterval;
use super::{
    BootstrapInterval, CellRewardModel, Estimator, LoggedBandit, LoggedRound, OpeError, bootstrap_interval,
    bootstrap_mean_interval, check_range,
};

/// One impression of an Open Bandit Dataset log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObdImpression {
    /// The item shown (`item_id`, 0..80 for campaign "all").
    pub item: usize,
    /// The slot it was shown in, 0-based (the dataset's `position` minus 1).
    pub position: usize,
    /// 1.0 if the user clicked, else 0.0 (`click`).
    pub click: f64,
    /// The logging policy's probability of showing this item in this slot (`propensity_score`).
    pub propensity: f64,
}

/// The Beta(alpha_a, beta_a) parameters of every item: the production Bernoulli-TS policy's posterior
/// (obp's `prior_bts.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BetaPrior {
    alpha: Vec<f64>,
    beta: Vec<f64>,
}

impl BetaPrior {
    /// Checks that both vectors have one positive, finite entry per item.
    pub fn new(alpha: Vec<f64>, beta: Vec<f64>) -> Result<BetaPrior, OpeError> {
        if alpha.is_empty() {
            return Err(OpeError::ZeroDimension { what: "prior items" });
        }
        if alpha.len() != beta.len() {
            return Err(OpeError::LengthMismatch { what: "prior beta", expected: alpha.len(), got: beta.len() });
        }
        for (name, values) in [("prior alpha", &alpha), ("prior beta", &beta)] {
            if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(OpeError::InvalidSetting { name, reason: format!("must be positive and finite, got {v}") });
            }
        }
        Ok(BetaPrior { alpha, beta })
    }

    /// Number of items.
    pub fn num_items(&self) -> usize {
        self.alpha.len()
    }

    /// The prior mean click rate of each item, alpha / (alpha + beta).
    pub fn means(&self) -> Vec<f64> {
        self.alpha.iter().zip(&self.beta).map(|(a, b)| a / (a + b)).collect()
    }
}

/// Bernoulli Thompson sampling's ranking distribution by Monte Carlo (obp's
/// `BernoulliTS.compute_batch_action_dist`): over `samples` simulations, draw one Beta sample per item, rank
/// the items by it in decreasing order and count which item lands at each of the first `len_list`
/// positions. Returns the K x `len_list` frequencies, action-major (entry `a * len_list + k`); each position's
/// column sums to 1. Ties between samples (probability zero) go to the higher item index, as a stable
/// `argsort()[::-1]` would order them.
pub fn bernoulli_ts_action_dist<R: Rng + ?Sized>(
    prior: &BetaPrior,
    len_list: usize,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<f64>, OpeError> {
    let k = prior.num_items();
    if len_list == 0 || len_list > k {
        return Err(OpeError::InvalidSetting {
            name: "len_list",
            reason: format!("must be between 1 and the number of items ({k}), got {len_list}"),
        });
    }
    if samples == 0 {
        return Err(OpeError::InvalidSetting { name: "samples", reason: "must be at least 1, got 0".into() });
    }
    let betas: Vec<Beta<f64>> = prior
        .alpha
        .iter()
        .zip(&prior.beta)
        .map(|(&a, &b)| Beta::new(a, b).expect("BetaPrior holds positive, finite parameters"))
        .collect();
    let mut counts = vec![0u64; k * len_list];
    // The current top `len_list` (value, item), best first.
    let mut top: Vec<(f64, usize)> = Vec::with_capacity(len_list + 1);
    for _ in 0..samples {
        top.clear();
        for (item, beta) in betas.iter().enumerate() {
            let value = beta.sample(rng);
            if top.len() == len_list && value < top[len_list - 1].0 {
                continue;
            }
            // Later items win ties: insert before the first entry that is not greater.
            let at = top.iter().position(|&(v, _)| v <= value).unwrap_or(top.len());
            top.insert(at, (value, item));
            top.truncate(len_list);
        }
        for (position, &(_, item)) in top.iter().enumerate() {
            counts[item * len_list + position] += 1;
        }
    }
    Ok(counts.into_iter().map(|c| c as f64 / samples as f64).collect())
}

/// Settings of [`evaluate_bts_on_obd`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObdSettings {
    /// Monte-Carlo rankings for the target's action distribution (obp's `n_sim`, default 100,000).
    pub samples: usize,
    /// Bootstrap resamples per interval.
    pub resamples: usize,
    /// Significance level of the intervals.
    pub alpha: f64,
    /// Seed: the bootstrap draws from `Xoshiro256PlusPlus::seed_from_u64(seed)`, the Monte Carlo from the
    /// same generator advanced by `jump()` (2^128 draws), so the two streams never overlap.
    pub seed: u64,
    /// Pseudo-impressions per (item, position) cell of the reward model (see [`CellRewardModel`]).
    pub smoothing: f64,
    /// Cross-fitting folds of the reward model (1 = fitted and used on the whole log).
    pub folds: usize,
    /// Switch-DR's weight threshold.
    pub tau: f64,
}

impl Default for ObdSettings {
    /// obp's defaults where it has one: 100,000 simulations (`n_sim`), 10,000 resamples
    /// (`estimate_interval`), alpha 0.05, seed 12345 (obp's examples), 3 folds (its OBD example). 50
    /// pseudo-impressions is about one cell's worth of the 10,000-impression sample (80 items x 3 slots, 42
    /// impressions per cell). tau = 10 switches to the direct method where Thompson sampling shows an item at
    /// a slot with probability above 10 / 80 = 0.125 (the largest weight on the sample is about 19.5).
    fn default() -> Self {
        ObdSettings {
            samples: 100_000,
            resamples: 10_000,
            alpha: 0.05,
            seed: 12_345,
            smoothing: 50.0,
            folds: 3,
            tau: 10.0,
        }
    }
}

/// One estimator's result on the Open Bandit Dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObdEstimate {
    /// The estimator and its interval.
    #[serde(flatten)]
    pub result: EstimatorInterval,
    /// `|estimate - on-policy click rate| / on-policy click rate` (obp's relative estimation error).
    pub relative_error: f64,
}

/// Bernoulli TS's click rate estimated off-policy from the uniform-random log, next to its on-policy rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObdEvaluation {
    /// Impressions in the uniform-random log.
    pub rounds: usize,
    /// Items (actions).
    pub items: usize,
    /// Slots (positions).
    pub positions: usize,
    /// The uniform-random policy's own click rate.
    pub logged_click_rate: f64,
    /// Bernoulli TS's on-policy click rate (mean click of its own log) with a bootstrap interval.
    pub on_policy: BootstrapInterval,
    /// The off-policy estimates, in the order IPS, SNIPS, DM, DR, Switch-DR.
    pub estimates: Vec<ObdEstimate>,
    /// The largest importance weight in the log.
    pub max_weight: f64,
    /// Kish's effective sample size of the importance weights, `(sum w)^2 / sum w^2`: how many logged
    /// impressions IPS effectively averages over.
    pub effective_sample_size: f64,
    /// The settings used.
    pub settings: ObdSettings,
}

/// Evaluates Bernoulli Thompson sampling with `prior` off-policy on `random_log` (impressions over
/// `prior.num_items()` items and `len_list` slots) with IPS, SNIPS, DM, DR and Switch-DR, and compares with
/// `bts_clicks`, the clicks of Thompson sampling's own log. DM and the DR variants use a
/// [`CellRewardModel`] cross-fitted on `random_log`.
pub fn evaluate_bts_on_obd(
    random_log: &[ObdImpression],
    bts_clicks: &[f64],
    prior: &BetaPrior,
    len_list: usize,
    settings: &ObdSettings,
) -> Result<ObdEvaluation, OpeError> {
    if random_log.is_empty() {
        return Err(OpeError::EmptyLog);
    }
    check_range("alpha", settings.alpha, 0.0, 1.0)?;
    let switch_dr = Estimator::SwitchDr { tau: settings.tau };
    switch_dr.validate()?;
    let num_items = prior.num_items();
    let on_policy = bootstrap_mean_interval(bts_clicks, settings.resamples, settings.alpha, settings.seed)?;

    let mut monte_carlo = Xoshiro256PlusPlus::seed_from_u64(settings.seed);
    monte_carlo.jump();
    let target = bernoulli_ts_action_dist(prior, len_list, settings.samples, &mut monte_carlo)?;

    let observations: Vec<(usize, usize, f64)> = random_log.iter().map(|r| (r.item, r.position, r.click)).collect();
    let models = CellRewardModel::cross_fit(num_items, len_list, &observations, settings.smoothing, settings.folds)?;
    let rounds = random_log.iter().enumerate().map(|(i, r)| LoggedRound {
        action: r.item,
        position: r.position,
        reward: r.click,
        propensity: r.propensity,
        target: &target,
        reward_model: Some(models[i % models.len()].predictions()),
    });
    let log = LoggedBandit::new(num_items, len_list, rounds)?;

    let truth = on_policy.estimate;
    let estimates = [Estimator::Ips, Estimator::Snips, Estimator::Dm, Estimator::Dr, switch_dr]
        .into_iter()
        .map(|estimator| {
            let interval = bootstrap_interval(estimator, &log, settings.resamples, settings.alpha, settings.seed)?;
            let relative_error = (interval.estimate - truth).abs() / truth;
            Ok(ObdEstimate { result: EstimatorInterval { estimator, interval }, relative_error })
        })
        .collect::<Result<Vec<_>, OpeError>>()?;

    let weights = log.importance_weights();
    let (sum, sum_sq) = weights.iter().fold((0.0, 0.0), |(s, q), w| (s + w, q + w * w));
    Ok(ObdEvaluation {
        rounds: log.len(),
        items: num_items,
        positions: len_list,
        logged_click_rate: log.rewards().iter().sum::<f64>() / log.len() as f64,
        on_policy,
        estimates,
        max_weight: weights.iter().copied().fold(0.0, f64::max),
        effective_sample_size: if sum_sq > 0.0 { sum * sum / sum_sq } else { 0.0 },
        settings: *settings,
    })
}
