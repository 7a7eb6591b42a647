//! Known finite-horizon tabular MDPs and exact dynamic programming on them: what simulations measure the
//! learners against, and what tests check the learners' planning with.

use serde::{Deserialize, Serialize};

/// A finite-horizon MDP with stationary dynamics: `transitions[(s * A + a) * S + s']` = P(s' | s, a) and
/// `rewards[s * A + a]` = the expected reward of a in s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularMdp {
    /// Number of states S.
    pub states: usize,
    /// Number of actions A.
    pub actions: usize,
    /// Episode length H.
    pub horizon: usize,
    /// P(s' | s, a), row-major over (s, a, s').
    pub transitions: Vec<f64>,
    /// Expected rewards, row-major over (s, a).
    pub rewards: Vec<f64>,
}

impl TabularMdp {
    /// P(. | s, a).
    pub fn next_state_distribution(&self, state: usize, action: usize) -> &[f64] {
        let start = (state * self.actions + action) * self.states;
        &self.transitions[start..start + self.states]
    }
}

/// Value of a non-stationary policy (`policy[h * S + s]`) at every step: returns V with `V[h * S + s]`,
/// h = 0..=H (V at H is 0).
pub fn evaluate_policy(mdp: &TabularMdp, policy: &[usize]) -> Vec<f64> {
    let (s_count, h_count) = (mdp.states, mdp.horizon);
    let mut values = vec![0.0; (h_count + 1) * s_count];
    for h in (0..h_count).rev() {
        for s in 0..s_count {
            let a = policy[h * s_count + s];
            let next = &values[(h + 1) * s_count..(h + 2) * s_count];
            let expected: f64 = mdp.next_state_distribution(s, a).iter().zip(next).map(|(p, v)| p * v).sum();
            values[h * s_count + s] = mdp.rewards[s * mdp.actions + a] + expected;
        }
    }
    values
}

/// Optimal policy and values by backward induction (ties: lowest action index).
pub fn optimal_policy(mdp: &TabularMdp) -> (Vec<usize>, Vec<f64>) {
    let (s_count, a_count, h_count) = (mdp.states, mdp.actions, mdp.horizon);
    let mut values = vec![0.0; (h_count + 1) * s_count];
    let mut policy = vec![0; h_count * s_count];
    for h in (0..h_count).rev() {
        for s in 0..s_count {
            let mut best = (f64::NEG_INFINITY, 0);
            for a in 0..a_count {
                let next = &values[(h + 1) * s_count..(h + 2) * s_count];
                let q = mdp.rewards[s * a_count + a]
                    + mdp.next_state_distribution(s, a).iter().zip(next).map(|(p, v)| p * v).sum::<f64>();
                if q > best.0 {
                    best = (q, a);
                }
            }
            values[h * s_count + s] = best.0;
            policy[h * s_count + s] = best.1;
        }
    }
    (policy, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two states, two actions, H = 2. In state 0, action 0 pays 1 and stays; action 1 pays 0 and moves to
    /// state 1, where action 0 pays 3. By hand: V_1(0) = 1, V_1(1) = 3 (stay, pay 3); at h = 0 in state 0,
    /// stay gives 1 + V_1(0) = 2 and move gives 0 + V_1(1) = 3, so V_0(0) = 3 via action 1.
    fn two_state() -> TabularMdp {
        TabularMdp {
            states: 2,
            actions: 2,
            horizon: 2,
            transitions: vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            rewards: vec![1.0, 0.0, 3.0, 0.5],
        }
    }

    #[test]
    fn backward_induction_matches_the_hand_solution() {
        let mdp = two_state();
        let (policy, values) = optimal_policy(&mdp);
        assert_eq!(policy, vec![1, 0, 0, 0]);
        assert_eq!(values, vec![3.0, 6.0, 1.0, 3.0, 0.0, 0.0]);
        let stay = evaluate_policy(&mdp, &[0, 0, 0, 0]);
        assert_eq!(stay[0], 2.0);
    }

    /// A stochastic chain: from state 0, action 0 pays 0.5 and moves to state 1 with probability 0.25; state
    /// 1 is absorbing and pays 1. H = 2: V_1(0) = 0.5, V_1(1) = 1; V_0(0) = 0.5 + 0.75 * 0.5 + 0.25 * 1.
    #[test]
    fn stochastic_evaluation_matches_the_hand_solution() {
        let mdp = TabularMdp {
            states: 2,
            actions: 1,
            horizon: 2,
            transitions: vec![0.75, 0.25, 0.0, 1.0],
            rewards: vec![0.5, 1.0],
        };
        let values = evaluate_policy(&mdp, &[0, 0, 0, 0]);
        assert!((values[0] - (0.5 + 0.375 + 0.25)).abs() < 1e-15);
        assert_eq!(values[1], 2.0);
    }
}
