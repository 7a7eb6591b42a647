//! Policy configuration: what a user writes (in TOML, JSON or code), validated once at construction so that
//! a running policy can never hold an invalid setting.

use serde::{Deserialize, Serialize};

use crate::EngineError;
pub use crate::drift::DriftGuardConfig;
pub use crate::ridge::RadiusForm;

/// Which learner runs, and whether a safety rule guards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// LinUCB / OFUL (Li et al. 2010; Abbasi-Yadkori et al. 2011): optimistic, unconstrained.
    Linucb,
    /// Linear Thompson sampling (Agrawal & Goyal 2013), unconstrained.
    Lints,
    /// Epsilon-greedy on the ridge estimate, unconstrained.
    EpsilonGreedy,
    /// UCB1 for K arms (Auer et al. 2002), unconstrained.
    Ucb1,
    /// Conservative LinUCB (Kazerouni et al. 2017): the optimistic action or the baseline.
    Clucb,
    /// Conservative constrained LinUCB (Garcelon et al. 2020): the most optimistic action that passes the
    /// budget check.
    Clucb2,
    /// Conservative UCB for K arms (Wu et al. 2016).
    ConservativeUcb,
}

impl Algorithm {
    /// Whether the algorithm enforces the baseline constraint.
    pub fn is_conservative(self) -> bool {
        matches!(self, Algorithm::Clucb | Algorithm::Clucb2 | Algorithm::ConservativeUcb)
    }

    /// The identifier used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Linucb => "linucb",
            Algorithm::Lints => "lints",
            Algorithm::EpsilonGreedy => "epsilon_greedy",
            Algorithm::Ucb1 => "ucb1",
            Algorithm::Clucb => "clucb",
            Algorithm::Clucb2 => "clucb2",
            Algorithm::ConservativeUcb => "conservative_ucb",
        }
    }
}

/// How actions are described to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layout {
    /// Per-action features of dimension `dim` and one shared parameter vector (the papers' setting).
    Shared {
        /// Feature dimension d.
        dim: usize,
    },
    /// One context of dimension `dim` shared by `actions` actions, each with its own model (Li et al. 2010).
    Disjoint {
        /// Context dimension d.
        dim: usize,
        /// Number of actions K (fixed).
        actions: usize,
    },
    /// K arms without features.
    Arms {
        /// Number of arms K.
        actions: usize,
    },
}

impl Layout {
    /// The layout's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Shared { .. } => "shared",
            Layout::Disjoint { .. } => "disjoint",
            Layout::Arms { .. } => "arms",
        }
    }
}

/// Whether the caller supplies the baseline's expected reward each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineReward {
    /// The caller gives mu_t(b_t) each round (Kazerouni et al. 2017, Section 4).
    Known,
    /// The baseline's rewards are learned like any other action's (ALGORITHMS.md Section 5).
    #[default]
    Unknown,
}

/// When the baseline constraint must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// At every round (Kazerouni et al. 2017, eq. 3).
    #[default]
    PerStep,
    /// Only at rounds every, 2*every, ... (Garcelon et al. 2020).
    Checkpoint {
        /// Checkpoint interval T0.
        every: u64,
    },
}

/// What happens to a decision whose reward never arrives (ALGORITHMS.md Section 8).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PendingResolution {
    /// Drop it from learning; it stays in the budget ledger.
    #[default]
    Drop,
    /// Record this reward as a real observation (e.g. "no click" = 0).
    DefaultReward {
        /// The reward recorded on timeout.
        reward: f64,
    },
}

/// Everything that defines a policy. Every field but `algorithm` and `layout` has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The learner.
    pub algorithm: Algorithm,
    /// How actions are described.
    pub layout: Layout,
    /// Risk budget: the share of the baseline's cumulative reward the learner may give up, in [0, 1).
    #[serde(default = "defaults::alpha")]
    pub alpha: f64,
    /// The constraint and the confidence sets hold with probability at least 1 - delta; in (0, 1).
    #[serde(default = "defaults::delta")]
    pub delta: f64,
    /// Ridge regulariser lambda > 0.
    #[serde(default = "defaults::one")]
    pub lambda: f64,
    /// R: the reward noise is R-sub-Gaussian.
    #[serde(default = "defaults::noise_scale")]
    pub noise_scale: f64,
    /// S: an upper bound on the norm of the true parameter.
    #[serde(default = "defaults::one")]
    pub theta_norm_bound: f64,
    /// L: an upper bound on feature norms, used by the worst-case radius.
    #[serde(default = "defaults::one")]
    pub feature_norm_bound: f64,
    /// Which form of the confidence radius beta_t(delta) to use.
    #[serde(default)]
    pub radius_form: RadiusForm,
    /// A fixed exploration scale in place of the theoretical radius beta_t. NO safety guarantee holds with
    /// it, so conservative algorithms refuse it.
    #[serde(default)]
    pub exploration_scale: Option<f64>,
    /// Whether the baseline's expected reward is supplied each round.
    #[serde(default)]
    pub baseline_reward: BaselineReward,
    /// When the constraint must hold.
    #[serde(default)]
    pub constraint: Constraint,
    /// Declared range of observed rewards; rewards outside it are rejected.
    #[serde(default = "defaults::unit_range")]
    pub reward_range: [f64; 2],
    /// Declared range of expected rewards, used to clip confidence bounds; defaults to `reward_range`.
    #[serde(default)]
    pub mean_reward_range: Option<[f64; 2]>,
    /// A known lower bound on the baseline's expected reward per round. Checkpoint constraints spend
    /// alpha times it for each round left before the next checkpoint; defaults to the lower end of
    /// `mean_reward_range` (or 0 if that is negative).
    #[serde(default)]
    pub baseline_reward_floor: Option<f64>,
    /// Exploration probability of epsilon-greedy, in [0, 1].
    #[serde(default = "defaults::epsilon")]
    pub epsilon: f64,
    /// LinTS posterior scale v; defaults to `noise_scale`.
    #[serde(default)]
    pub posterior_scale: Option<f64>,
    /// Samples used to estimate LinTS propensities.
    #[serde(default = "defaults::propensity_samples")]
    pub propensity_samples: u32,
    /// What happens to a decision whose reward times out.
    #[serde(default)]
    pub on_timeout: PendingResolution,
    /// Watch the model's residuals for drift and fall back to the baseline on an alarm (off by default).
    #[serde(default)]
    pub drift_guard: Option<DriftGuardConfig>,
    /// Re-factor V by Cholesky after this many rank-one updates, so rounding error cannot accumulate.
    #[serde(default = "defaults::refactor_every")]
    pub refactor_every: u32,
    /// Seed of the policy's random stream.
    #[serde(default)]
    pub seed: u64,
}

mod defaults {
    pub fn alpha() -> f64 {
        0.1
    }
    pub fn delta() -> f64 {
        0.05
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn noise_scale() -> f64 {
        0.1
    }
    pub fn unit_range() -> [f64; 2] {
        [0.0, 1.0]
    }
    pub fn epsilon() -> f64 {
        0.1
    }
    pub fn propensity_samples() -> u32 {
        64
    }
    pub fn refactor_every() -> u32 {
        4096
    }
}

/// Largest dimension and action count a policy accepts: beyond them a single decision costs too much.
pub const MAX_DIM: usize = 4096;
/// See [`MAX_DIM`].
pub const MAX_ACTIONS: usize = 100_000;

impl PolicyConfig {
    /// A configuration with every optional field at its default.
    pub fn new(algorithm: Algorithm, layout: Layout) -> Self {
        PolicyConfig {
            algorithm,
            layout,
            alpha: defaults::alpha(),
            delta: defaults::delta(),
            lambda: defaults::one(),
            noise_scale: defaults::noise_scale(),
            theta_norm_bound: defaults::one(),
            feature_norm_bound: defaults::one(),
            radius_form: RadiusForm::Determinant,
            exploration_scale: None,
            baseline_reward: BaselineReward::Unknown,
            constraint: Constraint::PerStep,
            reward_range: defaults::unit_range(),
            mean_reward_range: None,
            baseline_reward_floor: None,
            epsilon: defaults::epsilon(),
            posterior_scale: None,
            propensity_samples: defaults::propensity_samples(),
            on_timeout: PendingResolution::Drop,
            drift_guard: None,
            refactor_every: defaults::refactor_every(),
            seed: 0,
        }
    }

    /// The range expected rewards are declared to lie in.
    pub fn mean_range(&self) -> [f64; 2] {
        self.mean_reward_range.unwrap_or(self.reward_range)
    }

    /// The lower bound on the baseline's expected reward that checkpoint constraints bank on.
    pub fn baseline_floor(&self) -> f64 {
        self.baseline_reward_floor.unwrap_or(self.mean_range()[0]).max(0.0)
    }

    /// Checks every field; `Policy::new` calls it, so a policy never runs with an invalid setting.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, reason: String| Err(EngineError::InvalidConfig { field, reason });
        if !(0.0..1.0).contains(&self.alpha) {
            return bad("alpha", format!("must be in [0, 1), got {}", self.alpha));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", format!("must be in (0, 1), got {}", self.delta));
        }
        for (field, value) in [
            ("lambda", self.lambda),
            ("noise_scale", self.noise_scale),
            ("theta_norm_bound", self.theta_norm_bound),
            ("feature_norm_bound", self.feature_norm_bound),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return bad(field, format!("must be finite and > 0, got {value}"));
            }
        }
        match self.layout {
            Layout::Shared { dim } | Layout::Disjoint { dim, .. } if dim == 0 || dim > MAX_DIM => {
                return bad("layout.dim", format!("must be in 1..={MAX_DIM}, got {dim}"));
            }
            Layout::Disjoint { actions, .. } | Layout::Arms { actions } if actions == 0 || actions > MAX_ACTIONS => {
                return bad("layout.actions", format!("must be in 1..={MAX_ACTIONS}, got {actions}"));
            }
            _ => {}
        }
        match (self.algorithm, self.layout) {
            (Algorithm::Ucb1 | Algorithm::ConservativeUcb, Layout::Shared { .. } | Layout::Disjoint { .. }) => {
                return bad("layout", format!("{} needs the arms layout", self.algorithm.name()));
            }
            (Algorithm::Linucb | Algorithm::Lints | Algorithm::Clucb | Algorithm::Clucb2, Layout::Arms { .. }) => {
                return bad("layout", format!("{} needs the shared or disjoint layout", self.algorithm.name()));
            }
            _ => {}
        }
        if let Some(scale) = self.exploration_scale {
            if !(scale.is_finite() && scale >= 0.0) {
                return bad("exploration_scale", format!("must be finite and >= 0, got {scale}"));
            }
            if self.algorithm.is_conservative() {
                return bad(
                    "exploration_scale",
                    format!(
                        "is not allowed with {}: a fixed exploration scale gives no safety guarantee; \
                         remove it to use the theoretical radius beta_t(delta)",
                        self.algorithm.name()
                    ),
                );
            }
        }
        for (field, [lo, hi]) in [("reward_range", self.reward_range), ("mean_reward_range", self.mean_range())] {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return bad(field, format!("must be finite with min < max, got [{lo}, {hi}]"));
            }
        }
        if let Some(floor) = self.baseline_reward_floor {
            let [lo, hi] = self.mean_range();
            if !(floor.is_finite() && (lo..=hi).contains(&floor)) {
                return bad(
                    "baseline_reward_floor",
                    format!("must lie in the mean reward range [{lo}, {hi}], got {floor}"),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return bad("epsilon", format!("must be in [0, 1], got {}", self.epsilon));
        }
        if let Some(v) = self.posterior_scale
            && !(v.is_finite() && v > 0.0)
        {
            return bad("posterior_scale", format!("must be finite and > 0, got {v}"));
        }
        if self.propensity_samples == 0 {
            return bad("propensity_samples", "must be at least 1".into());
        }
        if let Some(guard) = &self.drift_guard {
            guard.validate()?;
        }
        if self.refactor_every == 0 {
            return bad("refactor_every", "must be at least 1".into());
        }
        if let Constraint::Checkpoint { every: 0 } = self.constraint {
            return bad("constraint.every", "must be at least 1".into());
        }
        if let PendingResolution::DefaultReward { reward } = self.on_timeout {
            let [lo, hi] = self.reward_range;
            if !(reward.is_finite() && (lo..=hi).contains(&reward)) {
                return bad("on_timeout.reward", format!("must lie in reward_range [{lo}, {hi}], got {reward}"));
            }
        }
        Ok(())
    }
}
