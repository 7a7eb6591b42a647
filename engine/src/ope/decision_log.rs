//! Off-policy evaluation on the service's own decision log: what the baseline (the product's current
//! behaviour) and the uniform-random policy would have earned on the rounds the experiment's policy played,
//! and the logged policy's own reward minus the baseline's, each with a bootstrap interval.
//!
//! The log's policy is the experiment's learner under its safety layer, so "logged minus baseline" is the
//! learner-versus-baseline comparison of the admin report. It is only as good as the overlap: IPS and the
//! doubly robust correction see the baseline's reward only on rounds where the logged policy played the
//! baseline with positive propensity; where it never did, the direct method's reward model carries the
//! estimate. Deterministic learners (propensity 1 on the played action) give weight 1 on rounds where they
//! played the baseline and 0 elsewhere, which is unbiased only if those rounds are typical.

use serde::{Deserialize, Serialize};

use crate::{ActionSet, Layout, Policy};

use super::bootstrap::EstimatorInterval;
use super::{
    BootstrapInterval, CellRewardModel, Estimator, LoggedBandit, LoggedRound, OpeError, bootstrap_interval,
    bootstrap_mean_interval, check_range,
};

/// One decision of the service's decision log, as exported for `safebet ope log` (one JSON object per line,
/// or one CSV row without `features`). Unknown fields are ignored, so the export can grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedDecision {
    /// The engine's decision id (informational).
    #[serde(default)]
    pub decision_id: Option<u64>,
    /// Number of actions offered in the round.
    pub num_actions: usize,
    /// The action played (index into the round's actions).
    pub action: usize,
    /// The round's baseline action.
    pub baseline: usize,
    /// The probability with which the policy played `action` (the decision's propensity).
    pub propensity: f64,
    /// The reward, or absent/null when none arrived (pending or expired): such decisions are skipped.
    #[serde(default)]
    pub reward: Option<f64>,
    /// The round's features as the engine's `ActionSet` takes them (shared layout: `num_actions` rows of
    /// `dim`, row-major; disjoint layout: the context). Used by the learner target, and, with `layout`, by
    /// a linear reward model for DM and DR.
    #[serde(default)]
    pub features: Option<Vec<f64>>,
    /// How `features` describe the actions.
    #[serde(default)]
    pub layout: Option<FeatureLayout>,
}

/// How a logged decision's features describe its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLayout {
    /// One row of features per action, one parameter vector.
    Shared,
    /// One context for all actions, one parameter vector per action.
    Disjoint,
    /// No features: K arms.
    Arms,
}

/// A target policy to evaluate on the log.
#[derive(Debug, Clone, Copy)]
pub enum DecisionTarget<'a> {
    /// Always the round's baseline action: the product as it was before the experiment.
    Baseline,
    /// Each of the round's actions with probability 1 / num_actions.
    Uniform,
    /// A learner snapshot played greedily ([`Policy::greedy_action`]): what the experiment's model would do
    /// now if it stopped exploring. Needs each decision's `features`.
    Learner(&'a Policy),
}

impl DecisionTarget<'_> {
    /// "baseline", "uniform" or "learner".
    pub fn name(self) -> &'static str {
        match self {
            DecisionTarget::Baseline => "baseline",
            DecisionTarget::Uniform => "uniform",
            DecisionTarget::Learner(_) => "learner",
        }
    }

    /// The target's distribution over `width >= decision.num_actions` actions (zero beyond the round's own).
    fn distribution(self, round: usize, decision: &LoggedDecision, width: usize) -> Result<Vec<f64>, OpeError> {
        let mut pi = vec![0.0; width];
        match self {
            DecisionTarget::Baseline => pi[decision.baseline] = 1.0,
            DecisionTarget::Uniform => pi[..decision.num_actions].fill(1.0 / decision.num_actions as f64),
            DecisionTarget::Learner(policy) => {
                let features = decision.features.as_deref().ok_or(OpeError::MissingFeatures { round })?;
                let actions = match policy.config().layout {
                    Layout::Shared { .. } => ActionSet::PerAction { features, num_actions: decision.num_actions },
                    Layout::Disjoint { .. } => ActionSet::SharedContext { context: features },
                    Layout::Arms { .. } => ActionSet::Arms,
                };
                let action = policy
                    .greedy_action(&actions)
                    .map_err(|error| OpeError::Snapshot { round, reason: error.to_string() })?;
                if action >= decision.num_actions {
                    return Err(OpeError::ActionOutOfRange { round, action, num_actions: decision.num_actions });
                }
                pi[action] = 1.0;
            }
        }
        Ok(pi)
    }
}

/// Settings of [`evaluate_decision_log`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionLogSettings {
    /// Bootstrap resamples per interval.
    pub resamples: usize,
    /// Significance level of the intervals.
    pub alpha: f64,
    /// Seed of the bootstrap (every interval uses it, so all intervals resample the same rounds).
    pub seed: u64,
    /// Pseudo-observations per action of the reward model (see [`CellRewardModel`]).
    pub smoothing: f64,
    /// Cross-fitting folds of the reward model, at most the number of rewarded decisions (fewer are used
    /// when the log is shorter).
    pub folds: usize,
    /// Switch-DR's weight threshold.
    pub tau: f64,
}

impl Default for DecisionLogSettings {
    /// 10,000 resamples and 95% intervals (obp's `estimate_interval` defaults), seed 0, 10 pseudo-observations,
    /// 3 folds, tau = 10.
    fn default() -> Self {
        DecisionLogSettings { resamples: 10_000, alpha: 0.05, seed: 0, smoothing: 10.0, folds: 3, tau: 10.0 }
    }
}

/// One target's estimates on the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEvaluation {
    /// The target policy's name ("baseline", "uniform", "learner").
    pub target: String,
    /// IPS, SNIPS, DM, DR and Switch-DR with their intervals.
    pub estimates: Vec<EstimatorInterval>,
    /// The logged policy's mean reward minus the target's doubly robust estimate, with a paired bootstrap
    /// interval (both resampled on the same rounds): above zero, the logged policy did better.
    pub logged_minus_target: BootstrapInterval,
    /// Rounds where the target gives the logged action positive probability (the only rounds whose reward
    /// IPS can use).
    pub overlap: usize,
    /// The largest importance weight.
    pub max_weight: f64,
}

/// The decision log's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionLogEvaluation {
    /// Decisions in the log.
    pub decisions: usize,
    /// Decisions with a reward, the ones evaluated.
    pub rewarded: usize,
    /// The largest number of actions of a round.
    pub num_actions: usize,
    /// The logged policy's mean reward (on-policy) with a bootstrap interval.
    pub logged: BootstrapInterval,
    /// One evaluation per requested target.
    pub targets: Vec<TargetEvaluation>,
    /// The reward model behind DM and DR.
    pub reward_model: RewardModelKind,
    /// The settings used.
    pub settings: DecisionLogSettings,
}

/// Which reward model DM and DR used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardModelKind {
    /// Ridge regression on the logged features (every decision carried features of one linear layout).
    Linear,
    /// The mean reward of each action index, shrunk toward the log's mean ([`CellRewardModel`]): meaningful
    /// when an action index names the same action in every round.
    PerAction,
}

/// Checks every decision, naming its position in the log when one is malformed.
fn check_decision(round: usize, d: &LoggedDecision) -> Result<(), OpeError> {
    if d.num_actions == 0 {
        return Err(OpeError::NoActions { round });
    }
    if d.action >= d.num_actions {
        return Err(OpeError::ActionOutOfRange { round, action: d.action, num_actions: d.num_actions });
    }
    if d.baseline >= d.num_actions {
        return Err(OpeError::BaselineOutOfRange { round, baseline: d.baseline, num_actions: d.num_actions });
    }
    if !d.propensity.is_finite() {
        return Err(OpeError::NonFinite { round, what: "propensity", value: d.propensity });
    }
    if !(d.propensity > 0.0 && d.propensity <= 1.0) {
        return Err(OpeError::PropensityOutOfRange { round, value: d.propensity });
    }
    match d.reward {
        Some(r) if !r.is_finite() => Err(OpeError::NonFinite { round, what: "reward", value: r }),
        _ => Ok(()),
    }
}

/// The rewarded decisions as a [`LoggedBandit`] for `target`, with `predictions[i * width..(i + 1) * width]`
/// as round i's reward model (none for IPS and SNIPS only). `width` is the number of actions of the widest
/// round.
pub fn decision_log_bandit(
    rewarded: &[LoggedDecision],
    target: DecisionTarget<'_>,
    width: usize,
    predictions: Option<&[f64]>,
) -> Result<LoggedBandit, OpeError> {
    for (i, d) in rewarded.iter().enumerate() {
        check_decision(i, d)?;
        if d.num_actions > width {
            return Err(OpeError::ActionOutOfRange { round: i, action: d.num_actions - 1, num_actions: width });
        }
    }
    let distributions: Vec<Vec<f64>> =
        rewarded.iter().enumerate().map(|(i, d)| target.distribution(i, d, width)).collect::<Result<_, _>>()?;
    let rounds = rewarded.iter().zip(&distributions).enumerate().map(|(i, (d, pi))| LoggedRound {
        action: d.action,
        position: 0,
        reward: d.reward.unwrap_or(f64::NAN),
        propensity: d.propensity,
        target: pi,
        reward_model: predictions.map(|q| &q[i * width..(i + 1) * width]),
    });
    LoggedBandit::new(width, 1, rounds)
}

/// Evaluates each of `targets` on the rewarded decisions of `decisions` with IPS, SNIPS, DM, DR and
/// Switch-DR, the DM/DR reward model being a [`CellRewardModel`] of the action index cross-fitted on the log
/// (meaningful when an action index names the same action in every round: K-armed and disjoint layouts),
/// and compares each target with the logged policy's own mean reward.
pub fn evaluate_decision_log(
    decisions: &[LoggedDecision],
    targets: &[DecisionTarget<'_>],
    settings: &DecisionLogSettings,
) -> Result<DecisionLogEvaluation, OpeError> {
    check_range("alpha", settings.alpha, 0.0, 1.0)?;
    let switch_dr = Estimator::SwitchDr { tau: settings.tau };
    switch_dr.validate()?;
    for (i, d) in decisions.iter().enumerate() {
        check_decision(i, d)?;
    }
    let rewarded: Vec<LoggedDecision> = decisions.iter().filter(|d| d.reward.is_some()).cloned().collect();
    if rewarded.is_empty() {
        return Err(OpeError::EmptyLog);
    }
    let width = rewarded.iter().map(|d| d.num_actions).max().unwrap_or(1);
    let rewards: Vec<f64> = rewarded.iter().map(|d| d.reward.unwrap_or(f64::NAN)).collect();
    let logged = bootstrap_mean_interval(&rewards, settings.resamples, settings.alpha, settings.seed)?;

    let folds = settings.folds.min(rewarded.len());
    let (predictions, reward_model) = match linear_predictions(&rewarded, &rewards, width, folds) {
        Some(predictions) => (predictions, RewardModelKind::Linear),
        None => {
            let observations: Vec<(usize, usize, f64)> =
                rewarded.iter().zip(&rewards).map(|(d, &r)| (d.action, 0, r)).collect();
            let models = CellRewardModel::cross_fit(width, 1, &observations, settings.smoothing, folds)?;
            let predictions =
                (0..rewarded.len()).flat_map(|i| models[i % models.len()].predictions().to_vec()).collect();
            (predictions, RewardModelKind::PerAction)
        }
    };

    let evaluations = targets
        .iter()
        .map(|&target| {
            let log = decision_log_bandit(&rewarded, target, width, Some(&predictions))?;
            let estimates = [Estimator::Ips, Estimator::Snips, Estimator::Dm, Estimator::Dr, switch_dr]
                .into_iter()
                .map(|estimator| {
                    let interval =
                        bootstrap_interval(estimator, &log, settings.resamples, settings.alpha, settings.seed)?;
                    Ok(EstimatorInterval { estimator, interval })
                })
                .collect::<Result<Vec<_>, OpeError>>()?;
            let dr = Estimator::Dr.round_values(&log)?;
            let differences: Vec<f64> = rewards.iter().zip(&dr).map(|(r, v)| r - v).collect();
            let logged_minus_target =
                bootstrap_mean_interval(&differences, settings.resamples, settings.alpha, settings.seed)?;
            let weights = log.importance_weights();
            Ok(TargetEvaluation {
                target: target.name().to_string(),
                estimates,
                logged_minus_target,
                overlap: weights.iter().filter(|&&w| w > 0.0).count(),
                max_weight: weights.iter().copied().fold(0.0, f64::max),
            })
        })
        .collect::<Result<Vec<_>, OpeError>>()?;

    Ok(DecisionLogEvaluation {
        decisions: decisions.len(),
        rewarded: rewarded.len(),
        num_actions: width,
        logged,
        targets: evaluations,
        reward_model,
        settings: *settings,
    })
}

/// Ridge regularisation of the linear reward model.
const RIDGE_LAMBDA: f64 = 1.0;

/// Cross-fitted ridge predictions of every action's reward in every round (round-major, `width` per round)
/// when every rewarded decision carries features of one linear layout: shared (one theta over per-action
/// rows) or disjoint (one theta per action over the context). `None` otherwise. Round i is predicted by the
/// model fitted on the rounds of the other folds (i % folds), as obp's cross-fitting does.
fn linear_predictions(rewarded: &[LoggedDecision], rewards: &[f64], width: usize, folds: usize) -> Option<Vec<f64>> {
    let layout = rewarded.first()?.layout?;
    let dim = |d: &LoggedDecision| -> Option<usize> {
        let features = d.features.as_ref()?;
        match d.layout? {
            FeatureLayout::Shared if d.layout == Some(layout) && features.len() % d.num_actions == 0 => {
                Some(features.len() / d.num_actions)
            }
            FeatureLayout::Disjoint if d.layout == Some(layout) => Some(features.len()),
            _ => None,
        }
    };
    let d = dim(&rewarded[0])?;
    if d == 0 || rewarded.iter().any(|r| dim(r) != Some(d)) {
        return None;
    }
    // One model for shared, one per action for disjoint.
    let models = if layout == FeatureLayout::Shared { 1 } else { width };
    fn row(decision: &LoggedDecision, layout: FeatureLayout, d: usize, action: usize) -> &[f64] {
        let features = decision.features.as_deref().unwrap_or(&[]);
        match layout {
            FeatureLayout::Shared => &features[action * d..(action + 1) * d],
            _ => features,
        }
    }
    let model_of = |action: usize| if layout == FeatureLayout::Shared { 0 } else { action };
    let (low, high) = rewards.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| (l.min(r), h.max(r)));
    let mut predictions = vec![0.0; rewarded.len() * width];
    for fold in 0..folds.max(1) {
        let mut gram = vec![nalgebra::DMatrix::<f64>::identity(d, d) * RIDGE_LAMBDA; models];
        let mut target = vec![nalgebra::DVector::<f64>::zeros(d); models];
        for (i, (decision, &r)) in rewarded.iter().zip(rewards).enumerate() {
            if folds > 1 && i % folds == fold {
                continue;
            }
            let m = model_of(decision.action);
            let x = nalgebra::DVector::from_column_slice(row(decision, layout, d, decision.action));
            gram[m].ger(1.0, &x, &x, 1.0);
            target[m].axpy(r, &x, 1.0);
        }
        let thetas: Vec<nalgebra::DVector<f64>> = gram
            .into_iter()
            .zip(target)
            .map(|(a, b)| a.cholesky().map_or_else(|| nalgebra::DVector::zeros(d), |c| c.solve(&b)))
            .collect();
        for (i, decision) in rewarded.iter().enumerate() {
            if folds > 1 && i % folds != fold {
                continue;
            }
            for a in 0..decision.num_actions {
                let theta = &thetas[model_of(a)];
                let q: f64 = row(decision, layout, d, a).iter().zip(theta.iter()).map(|(x, t)| x * t).sum();
                predictions[i * width + a] = q.clamp(low, high);
            }
        }
    }
    Some(predictions)
}
