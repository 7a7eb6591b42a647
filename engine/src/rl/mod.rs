//! Conservative exploration in finite-horizon tabular MDPs (Garcelon, Ghavamzadeh, Lazaric, Pirotta 2020,
//! AISTATS; ALGORITHMS.md Section 9).
//!
//! The base learner is UCBVI (Azar, Osband, Munos 2017) with a Chernoff-Hoeffding bonus: at the start of
//! each episode it plans an optimistic policy on the empirical model. The safety rule is the bandits' one,
//! one level up: the optimistic policy drives the episode only if a lower confidence bound of the
//! cumulative value, with it, stays at or above (1 - alpha) times the baseline policy's cumulative value;
//! otherwise the baseline policy drives the whole episode.
//!
//! [derived] The lower bound of a policy's value is a pessimistic evaluation on the empirical model: rewards
//! lowered by a Hoeffding bonus, and the next-state value lowered by ||P_hat - P||_1 * range / 2 with the L1
//! deviation bound of Weissman et al. (2003), which holds for every value function at once and so for any
//! policy, not only the optimal one. Both bounds hold for all (s, a) and all counts with probability
//! 1 - delta by a union bound (delta / (4 S A n (n + 1)) for count n). Values are clipped to [0, H - h].

pub mod environments;
mod learner;
mod mdp;

pub use learner::{
    Driver, EpisodePlan, EpisodeSummary, EpisodicConfig, EpisodicLearner, EpisodicStats, RlAlgorithm, StartState,
};
pub use mdp::{TabularMdp, evaluate_policy, optimal_policy};
