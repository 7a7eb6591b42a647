//! The per-round input: the actions on offer, borrowed from the caller so that deciding copies nothing.

/// The actions offered in one round.
#[derive(Debug, Clone, Copy)]
pub enum ActionSet<'a> {
    /// Shared layout: `num_actions` actions with `dim` features each, row-major: action a is
    /// `features[a*dim .. (a+1)*dim]`.
    PerAction {
        /// The features, action after action.
        features: &'a [f64],
        /// Number of actions K.
        num_actions: usize,
    },
    /// Disjoint layout: one context shared by the model's fixed actions.
    SharedContext {
        /// The context, of the model's dimension.
        context: &'a [f64],
    },
    /// K-armed layout: the model's fixed arms, no features.
    Arms,
}

impl ActionSet<'_> {
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            ActionSet::PerAction { .. } => "per-action features (shared layout)",
            ActionSet::SharedContext { .. } => "a shared context (disjoint layout)",
            ActionSet::Arms => "arms without features",
        }
    }
}

/// One round of a decision problem.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// The actions on offer.
    pub actions: ActionSet<'a>,
    /// Index of the baseline action: what the product would play today.
    pub baseline: usize,
    /// The baseline's expected reward mu_t(b_t); required when baseline rewards are declared known, and
    /// ignored otherwise.
    pub baseline_expected_reward: Option<f64>,
}
