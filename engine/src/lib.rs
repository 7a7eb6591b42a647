//! # safebet-engine
//!
//! Conservative bandit learners as a pure library: no IO, no clocks, no threads, no global state. A
//! [`Policy`] is a base learner (LinUCB/OFUL, LinTS, epsilon-greedy, UCB1) over a confidence model (shared
//! linear, disjoint linear, or K arms), optionally wrapped in one safety layer that plays a non-baseline action
//! only while, with probability at least 1 - delta, the cumulative expected reward stays at or above
//! (1 - alpha) times the baseline's (Kazerouni et al. 2017; Wu et al. 2016; Garcelon et al. 2020).
//!
//! Principal types: [`PolicyConfig`] (validated once), [`Policy`] (`decide`, `observe_reward`, `expire`),
//! [`Round`] and [`ActionSet`] (the borrowed per-round input), [`Decision`] (the action and why), and
//! [`EngineError`]. Each policy owns its seeded random stream and serialises with serde, so a snapshot plus a
//! replay of the same inputs reproduces its state bit for bit.
//!
//! ```
//! use safebet_engine::{ActionSet, Algorithm, Layout, Policy, PolicyConfig, Round};
//!
//! let mut config = PolicyConfig::new(Algorithm::Clucb, Layout::Shared { dim: 2 });
//! config.alpha = 0.1;
//! let mut policy = Policy::new(config)?;
//! // Two actions with two features each; action 0 is what the product does today.
//! let features = [0.5, 0.1, 0.2, 0.9];
//! let round = Round {
//!     actions: ActionSet::PerAction { features: &features, num_actions: 2 },
//!     baseline: 0,
//!     baseline_expected_reward: None,
//! };
//! let decision = policy.decide(&round)?;
//! // Nothing is known yet, so the safety layer keeps the baseline.
//! assert!(decision.played_baseline());
//! policy.observe_reward(decision.id, 0.4)?;
//! # Ok::<(), safebet_engine::EngineError>(())
//! ```
#![deny(missing_docs)]

mod actions;
mod book;
mod config;
mod drift;
mod error;
mod linalg;
mod model;
mod ope;
mod policy;
mod ridge;
pub mod rl;
mod safety;

pub use actions::{ActionSet, Round};
pub use config::{
    Algorithm, BaselineReward, Constraint, Layout, MAX_ACTIONS, MAX_DIM, PendingResolution, PolicyConfig, RadiusForm,
};
pub use drift::{DriftAlarm, DriftGuardConfig};
pub use error::{EngineError, ErrorKind};
pub use model::anytime_width;
pub use ope::{
    BetaPrior, BootstrapInterval, CellRewardModel, DecisionLogEvaluation, DecisionLogSettings, DecisionTarget,
    Estimator, EstimatorInterval, FeatureLayout, LogColumns, LoggedBandit, LoggedDecision, LoggedRound, ObdEstimate,
    ObdEvaluation, ObdImpression, ObdSettings, OpeError, RewardModelKind, TargetEvaluation, bernoulli_ts_action_dist,
    bootstrap_interval, bootstrap_interval_with_rng, bootstrap_mean_interval, decision_log_bandit, evaluate_bts_on_obd,
    evaluate_decision_log,
};
pub use policy::{Decision, DecisionId, Fallback, Policy, PolicyStats, Propensity, PropensityKind};
pub use rl::{
    Driver, EpisodePlan, EpisodeSummary, EpisodicConfig, EpisodicLearner, EpisodicStats, RlAlgorithm, StartState,
    TabularMdp, evaluate_policy, optimal_policy,
};
pub use safety::BudgetCheck;
