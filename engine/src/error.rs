//! One error type for the engine. Every variant carries the values that were wrong, and `kind()` sorts it
//! into the few classes a caller acts on differently, so the service maps errors to statuses in one place.

use crate::DecisionId;

/// What went wrong with a call into the engine. A call that returns an error changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A configuration value is out of its domain (checked once, at construction).
    #[error("invalid configuration: {field} {reason}")]
    InvalidConfig {
        /// The offending field, as named in `PolicyConfig`.
        field: &'static str,
        /// What was expected and what was given.
        reason: String,
    },
    /// A feature, reward or expected reward is NaN or infinite.
    #[error("{what} must be finite, got {value}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A feature vector or context has the wrong length.
    #[error("{what} has the wrong dimension: expected {expected}, got {got}")]
    DimensionMismatch {
        /// Which input.
        what: &'static str,
        /// The policy's dimension.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The round offers no action.
    #[error("the round offers no action")]
    EmptyActionSet,
    /// The round's kind of action set does not match the policy's layout.
    #[error("this policy uses the {expected} layout but the round gives {got}")]
    LayoutMismatch {
        /// The policy's layout.
        expected: &'static str,
        /// What the round gave.
        got: &'static str,
    },
    /// The baseline index does not name an action of the round.
    #[error("baseline action {baseline} is out of range: the round has {num_actions} actions")]
    BaselineOutOfRange {
        /// The index given.
        baseline: usize,
        /// Number of actions in the round.
        num_actions: usize,
    },
    /// Known-baseline policies need the baseline's expected reward every round.
    #[error("this policy declares baseline rewards known: every round must give the baseline's expected reward")]
    MissingBaselineReward,
    /// A value lies outside the range the policy declared for it.
    #[error("{what} {value} is outside the declared range [{min}, {max}]")]
    OutOfRange {
        /// Which input.
        what: &'static str,
        /// The value given.
        value: f64,
        /// Lower end of the declared range.
        min: f64,
        /// Upper end of the declared range.
        max: f64,
    },
    /// No decision with this id was ever made by this policy.
    #[error("unknown decision {0}")]
    UnknownDecision(DecisionId),
    /// An episodic call needs a running episode and there is none.
    #[error("no episode is running: start one first")]
    EpisodeNotStarted,
    /// An episode is already running.
    #[error("episode {0} is still running: end it first")]
    EpisodeInProgress(u64),
    /// Steps of an episode must come in order 0, 1, ..., H - 1.
    #[error("step {got} is out of order: expected step {expected} (horizon {horizon})")]
    StepOutOfOrder {
        /// The step the episode is at.
        expected: usize,
        /// The step given.
        got: usize,
        /// The horizon H.
        horizon: usize,
    },
    /// The action reported is not the one the driving policy chose.
    #[error("action {got} is not the action the driving policy chose ({expected})")]
    ActionMismatch {
        /// The policy's action.
        expected: usize,
        /// The action reported.
        got: usize,
    },
    /// The first state of an episode is not the declared start state.
    #[error("episodes start in state {expected}, got {got}")]
    UnexpectedStartState {
        /// The declared start state.
        expected: usize,
        /// The state given.
        got: usize,
    },
    /// The decision's reward was already applied (or it expired): a reward is never applied twice.
    #[error("decision {0} is already resolved: its reward was applied or it expired")]
    AlreadyResolved(DecisionId),
}

/// The class of an error, for callers that map errors to protocol statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input itself is malformed or out of range.
    InvalidArgument,
    /// The input names something that does not exist.
    NotFound,
    /// The input repeats something already done.
    AlreadyExists,
    /// The input is well formed but does not fit the policy's configuration.
    FailedPrecondition,
}

impl EngineError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::UnknownDecision(_) => ErrorKind::NotFound,
            EngineError::AlreadyResolved(_) => ErrorKind::AlreadyExists,
            EngineError::LayoutMismatch { .. }
            | EngineError::MissingBaselineReward
            // The call does not fit the episode's progress (none running, one already running, a step
            // reported out of order): retrying it as it is cannot succeed, but it is not malformed.
            | EngineError::EpisodeNotStarted
            | EngineError::EpisodeInProgress(_)
            | EngineError::StepOutOfOrder { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Checks that a value is finite, naming it in the error.
pub(crate) fn finite(what: &'static str, value: f64) -> Result<f64, EngineError> {
    if value.is_finite() { Ok(value) } else { Err(EngineError::NonFinite { what, value }) }
}

/// Checks that every value of a slice is finite.
pub(crate) fn all_finite(what: &'static str, values: &[f64]) -> Result<(), EngineError> {
    if crate::linalg::all_finite(values) {
        return Ok(());
    }
    let value = values.iter().copied().find(|v| !v.is_finite()).unwrap_or(f64::NAN);
    Err(EngineError::NonFinite { what, value })
}
