//! The safety layer: a budget ledger and a selection rule wrapped around any base learner.
//!
//! The constraint (Kazerouni et al. 2017, eq. 3) is sum_{i<=t} mu_i(a_i) >= (1 - alpha) sum_{i<=t} mu_i(b_i).
//! Split the past rounds into S (the learner's action was played) and S^c (the baseline was played). With
//! z = sum_S x_{a_i}, w = sum_{S^c} x_{b_i} and y = sum_S x_{b_i}, playing a non-baseline action a at round t
//! keeps the constraint iff
//!
//! - known baseline rewards: <theta*, z + x_a> + sum_{S^c} mu(b_i) >= (1 - alpha) sum_{i<=t} mu(b_i);
//! - unknown baseline rewards [derived, ALGORITHMS.md Section 5]:
//!   <theta*, z + x_a + alpha w - (1 - alpha)(y + x_b)> >= 0.
//!
//! The ledger plays a only if the model's lower confidence bound of the left side clears the right side.
//! The same vectors in arm coordinates give conservative UCB (Wu et al. 2016); in per-action blocks, the
//! disjoint layout. A new base learner becomes conservative by giving a confidence model, nothing more.

use serde::{Deserialize, Serialize};

use crate::model::{Model, RoundValues};
use crate::{ActionSet, BaselineReward, Constraint};

/// History vector z: features of the learner's plays.
pub(crate) const LEARNER_PLAYS: usize = 0;
/// History vector w: baseline features of rounds where the baseline was played.
pub(crate) const BASELINE_PLAYS: usize = 1;
/// History vector y: baseline features of rounds where the learner played instead.
pub(crate) const BASELINE_FOREGONE: usize = 2;

/// How the safety layer picks when the base learner's proposal fails the budget check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SafetyRule {
    /// Play the baseline (CLUCB, Kazerouni et al. 2017; conservative UCB, Wu et al. 2016).
    BaselineOnFailure,
    /// Play the best-ranked action that passes, the baseline included (CLUCB2, Garcelon et al. 2020).
    BestPassing,
}

/// The outcome of a budget check, reported with every conservative decision so it can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetCheck {
    /// Lower confidence bound of everything on the constraint's left side that is learned (plus the known
    /// baseline rewards already banked and any checkpoint slack).
    pub lower_bound: f64,
    /// What that lower bound must reach: (1 - alpha) times the known baseline total, or 0 when baseline
    /// rewards are unknown (they are then inside `lower_bound`).
    pub required: f64,
    /// `lower_bound - required`; the action may be played iff it is >= 0.
    pub margin: f64,
}

/// Running sums of the conservative constraint that do not live in the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BudgetLedger {
    pub(crate) rule: SafetyRule,
    constraint: Constraint,
    alpha: f64,
    baseline: BaselineReward,
    /// A lower bound (>= 0) on the baseline's expected reward: each future baseline round adds at least
    /// alpha * floor to the margin, which is what lets checkpoint constraints bank slack.
    baseline_floor: f64,
    rounds: u64,
    /// Known baselines: sum over all past rounds of mu_i(b_i).
    baseline_total: f64,
    /// Known baselines: sum over S^c of mu_i(b_i).
    baseline_banked: f64,
}

impl BudgetLedger {
    pub(crate) fn new(
        rule: SafetyRule,
        constraint: Constraint,
        alpha: f64,
        baseline: BaselineReward,
        baseline_floor: f64,
    ) -> Self {
        BudgetLedger {
            rule,
            constraint,
            alpha,
            baseline,
            baseline_floor,
            rounds: 0,
            baseline_total: 0.0,
            baseline_banked: 0.0,
        }
    }

    pub(crate) fn set_alpha(&mut self, alpha: f64) {
        self.alpha = alpha;
    }

    /// The baseline's cumulative expected reward over every round so far: the callers' own values when
    /// baseline rewards are known, the model's estimate <theta_hat, w + y> when they are not.
    pub(crate) fn baseline_estimate(&self, model: &Model) -> f64 {
        match self.baseline {
            BaselineReward::Known => self.baseline_total,
            BaselineReward::Unknown => model.estimate_history(&[BASELINE_PLAYS, BASELINE_FOREGONE]),
        }
    }

    /// Weights of (z, w, y) in the history vector whose lower bound is taken.
    pub(crate) fn history_weights(&self) -> [f64; 3] {
        match self.baseline {
            BaselineReward::Known => [1.0, 0.0, 0.0],
            BaselineReward::Unknown => [1.0, self.alpha, -(1.0 - self.alpha)],
        }
    }

    /// Weight c of the current baseline's features in the candidate vector x_a - c x_b.
    pub(crate) fn baseline_weight(&self) -> f64 {
        match self.baseline {
            BaselineReward::Known => 0.0,
            BaselineReward::Unknown => 1.0 - self.alpha,
        }
    }

    /// Checkpoint constraints (Garcelon et al. 2020) need the constraint only at rounds T0, 2 T0, ...: a
    /// round may spend whatever the baseline rounds up to the next checkpoint are sure to earn back. Never
    /// negative: with no slack the check is the per-step one, which keeps the constraint at every round and
    /// so at every checkpoint.
    fn checkpoint_slack(&self) -> f64 {
        match self.constraint {
            Constraint::PerStep => 0.0,
            Constraint::Checkpoint { every } => {
                let t = self.rounds + 1;
                let next = t.div_ceil(every) * every;
                self.alpha * self.baseline_floor.max(0.0) * (next - t) as f64
            }
        }
    }

    /// The budget check for playing `action` as a learner play this round. `values` must have been
    /// prepared with `history_weights`.
    pub(crate) fn check(
        &self,
        model: &Model,
        values: &RoundValues,
        action: usize,
        baseline: usize,
        baseline_mean: Option<f64>,
    ) -> BudgetCheck {
        let learned = model.history_lower_bound(values, action, baseline, self.baseline_weight());
        let (lower_bound, required) = match baseline_mean {
            Some(mu_b) if self.baseline == BaselineReward::Known => (
                learned + self.baseline_banked + self.checkpoint_slack(),
                (1.0 - self.alpha) * (self.baseline_total + mu_b),
            ),
            _ => (learned + self.checkpoint_slack(), 0.0),
        };
        BudgetCheck { lower_bound, required, margin: lower_bound - required }
    }

    /// Books this round: a learner play of `action`, or a baseline play.
    pub(crate) fn record(
        &mut self,
        model: &mut Model,
        actions: &ActionSet<'_>,
        action: usize,
        baseline: usize,
        baseline_mean: Option<f64>,
    ) {
        let learner_play = action != baseline;
        self.rounds += 1;
        match self.baseline {
            BaselineReward::Known => {
                let mu_b = baseline_mean.unwrap_or(0.0);
                self.baseline_total += mu_b;
                if learner_play {
                    model.record_history(actions, LEARNER_PLAYS, action, 1.0);
                } else {
                    self.baseline_banked += mu_b;
                }
            }
            BaselineReward::Unknown => {
                if learner_play {
                    model.record_history(actions, LEARNER_PLAYS, action, 1.0);
                    model.record_history(actions, BASELINE_FOREGONE, baseline, 1.0);
                } else {
                    model.record_history(actions, BASELINE_PLAYS, baseline, 1.0);
                }
            }
        }
    }
}

/// The safety rule's choice given the proposal, the learner's ranking scores and which actions pass.
pub(crate) fn select(rule: SafetyRule, proposal: usize, baseline: usize, scores: &[f64], passes: &[bool]) -> usize {
    if proposal == baseline || passes[proposal] {
        return proposal;
    }
    match rule {
        SafetyRule::BaselineOnFailure => baseline,
        SafetyRule::BestPassing => {
            let mut best = baseline;
            for (a, &score) in scores.iter().enumerate() {
                if (a == baseline || passes[a]) && (score > scores[best] || (score == scores[best] && a < best)) {
                    best = a;
                }
            }
            best
        }
    }
}
