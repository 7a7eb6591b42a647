//! Episodic tabular environments (ALGORITHMS.md section 9): the engine's reference MDPs (RiverSwim, a cliff
//! grid-world, inventory control), sampled step by step. A "round" of an episodic scenario is an episode, and
//! its expected reward is the exact value V^pi(s_1) of the policy that drove it, computed by dynamic
//! programming on the known MDP, so regret and margins are exact here too.

use rand::RngExt;
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::rl::environments::{self, Environment as Mdp};
use safebet_engine::{evaluate_policy, optimal_policy};

use crate::scenario::EnvironmentSpec;

/// An episodic environment with the values simulations measure against.
#[derive(Debug, Clone)]
pub(crate) struct EpisodicTruth {
    /// The MDP, its start state and the baseline policy (one action per state).
    pub env: Mdp,
    /// V*(s_1): the best expected return of an episode.
    pub optimal_value: f64,
    /// V^b(s_1): the baseline policy's expected return.
    pub baseline_value: f64,
}

impl EpisodicTruth {
    /// Builds the MDP of an episodic spec (`None` for bandit environments). The spec must have been validated
    /// with the same bounds the engine's constructors check.
    pub(crate) fn from_spec(spec: &EnvironmentSpec) -> Option<EpisodicTruth> {
        let env = match spec {
            EnvironmentSpec::RiverSwim(s) => environments::river_swim(s.states, s.episode_length),
            EnvironmentSpec::CliffGridworld(s) => {
                environments::cliff_gridworld(s.rows, s.cols, s.slip, s.episode_length)
            }
            EnvironmentSpec::Inventory(s) => environments::inventory(s.capacity, s.max_demand, s.episode_length),
            EnvironmentSpec::Linear(_) | EnvironmentSpec::KArmed(_) | EnvironmentSpec::Supervised(_) => return None,
        }
        .expect("scenario validation applies the engine's bounds");
        let (_, optimal) = optimal_policy(&env.mdp);
        let baseline = evaluate_policy(&env.mdp, &expand(&env.baseline, env.mdp.horizon));
        Some(EpisodicTruth { optimal_value: optimal[env.start], baseline_value: baseline[env.start], env })
    }

    /// The exact expected return from the start state of a step-major (H x S) policy.
    pub(crate) fn value(&self, policy: &[usize]) -> f64 {
        evaluate_policy(&self.env.mdp, policy)[self.env.start]
    }

    /// Draws the next state after (state, action) with one uniform draw.
    pub(crate) fn next_state(&self, state: usize, action: usize, rng: &mut Xoshiro256PlusPlus) -> usize {
        let u: f64 = rng.random();
        let distribution = self.env.mdp.next_state_distribution(state, action);
        let mut cumulative = 0.0;
        for (next, p) in distribution.iter().enumerate() {
            cumulative += p;
            if u < cumulative {
                return next;
            }
        }
        // Rounding can leave the total a hair below 1: fall back to the last reachable state.
        distribution.iter().rposition(|&p| p > 0.0).unwrap_or(state)
    }

    /// The observed reward of (state, action): the MDP's expected reward (the randomness is in the moves).
    pub(crate) fn reward(&self, state: usize, action: usize) -> f64 {
        self.env.mdp.rewards[state * self.env.mdp.actions + action]
    }
}

/// A stationary policy (one action per state) as the step-major H x S policy the engine evaluates.
pub(crate) fn expand(stationary: &[usize], horizon: usize) -> Vec<usize> {
    stationary.iter().copied().cycle().take(stationary.len() * horizon).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::RiverSwimSpec;
    use rand::SeedableRng;

    #[test]
    fn river_swim_values_and_sampling_follow_the_mdp() {
        let spec = EnvironmentSpec::RiverSwim(RiverSwimSpec { states: 6, episode_length: 20 });
        let truth = EpisodicTruth::from_spec(&spec).unwrap();
        assert!(truth.baseline_value > 0.0 && truth.baseline_value < truth.optimal_value);
        // The baseline (always left) from the left bank earns 0.005 per step.
        assert!((truth.baseline_value - 20.0 * 0.005).abs() < 1e-12);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        // Swimming right from the left bank succeeds with probability 0.6.
        let n = 100_000;
        let right = (0..n).filter(|_| truth.next_state(0, 1, &mut rng) == 1).count();
        assert!((right as f64 / n as f64 - 0.6).abs() < 0.01);
    }
}
