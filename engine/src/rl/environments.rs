//! Reference episodic environments (ALGORITHMS.md Section 9) as exact tabular MDPs, each with a reasonable
//! but suboptimal baseline policy. Pure data: the simulator samples from them, tests solve them exactly.

use super::TabularMdp;
use crate::EngineError;

fn invalid(field: &'static str, reason: String) -> EngineError {
    EngineError::InvalidConfig { field, reason }
}

/// An MDP with the baseline policy a product would run on it (one action per state, stationary).
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// The dynamics and expected rewards.
    pub mdp: TabularMdp,
    /// The state every episode starts in.
    pub start: usize,
    /// The baseline policy, one action per state.
    pub baseline: Vec<usize>,
}

/// RiverSwim (Strehl & Littman 2008): a chain of `states` states. Action 0 (left) always moves left and pays
/// 0.005 at the left bank; action 1 (right) swims against the current: from the left bank it moves right
/// with probability 0.6, in the middle right 0.35 / stay 0.6 / left 0.05, and at the right bank it stays
/// with probability 0.6 and pays 1. Baseline: the myopic policy, always left, which collects the small sure
/// reward at the left bank and never learns the right bank pays 200 times more.
pub fn river_swim(states: usize, horizon: usize) -> Result<Environment, EngineError> {
    if !(3..=10_000).contains(&states) {
        return Err(invalid("states", format!("RiverSwim needs 3..=10000 states, got {states}")));
    }
    check_horizon(horizon)?;
    let (s_count, a_count) = (states, 2);
    let mut transitions = vec![0.0; s_count * a_count * s_count];
    let mut rewards = vec![0.0; s_count * a_count];
    let p =
        |t: &mut Vec<f64>, s: usize, a: usize, next: usize, prob: f64| t[(s * a_count + a) * s_count + next] += prob;
    for s in 0..s_count {
        p(&mut transitions, s, 0, s.saturating_sub(1), 1.0);
        if s == 0 {
            p(&mut transitions, s, 1, 0, 0.4);
            p(&mut transitions, s, 1, 1, 0.6);
        } else if s == s_count - 1 {
            p(&mut transitions, s, 1, s, 0.6);
            p(&mut transitions, s, 1, s - 1, 0.4);
        } else {
            p(&mut transitions, s, 1, s + 1, 0.35);
            p(&mut transitions, s, 1, s, 0.6);
            p(&mut transitions, s, 1, s - 1, 0.05);
        }
    }
    rewards[0] = 0.005;
    // Paid for being on the right bank and holding position there.
    rewards[(s_count - 1) * a_count + 1] = 1.0;
    let baseline = vec![0; s_count];
    Ok(Environment { mdp: TabularMdp { states, actions: a_count, horizon, transitions, rewards }, start: 0, baseline })
}

/// Grid-world with a cliff (after Sutton & Barto's cliff walking), `rows` x `cols`, start at the bottom
/// left, goal at the bottom right, cliff between them along the bottom row. Actions: up, right, down,
/// left; with probability `slip` the move goes in a uniformly random direction instead. Every step in the
/// open pays 0.1; the goal is absorbing and pays 1 a step; falling off the cliff is absorbing and pays
/// nothing for the rest of the episode. The baseline walks the top row: safe, slow. The optimal policy
/// walks closer to the edge, and a careless explorer falls.
pub fn cliff_gridworld(rows: usize, cols: usize, slip: f64, horizon: usize) -> Result<Environment, EngineError> {
    if !(2..=100).contains(&rows) || !(3..=100).contains(&cols) {
        return Err(invalid(
            "rows, cols",
            format!("the cliff world needs 2..=100 rows and 3..=100 columns, got {rows} x {cols}"),
        ));
    }
    if !(0.0..=1.0).contains(&slip) {
        return Err(invalid("slip", format!("must be a probability in [0, 1], got {slip}")));
    }
    check_horizon(horizon)?;
    let cells = rows * cols;
    let (fallen, s_count, a_count) = (cells, cells + 1, 4);
    let cell = |r: usize, c: usize| r * cols + c;
    let (start, goal) = (cell(rows - 1, 0), cell(rows - 1, cols - 1));
    let is_cliff = |s: usize| s / cols == rows - 1 && !s.is_multiple_of(cols) && s % cols != cols - 1;
    let mut transitions = vec![0.0; s_count * a_count * s_count];
    let mut rewards = vec![0.0; s_count * a_count];
    let step = |s: usize, dir: usize| -> usize {
        let (r, c) = (s / cols, s % cols);
        match dir {
            0 if r > 0 => cell(r - 1, c),
            1 if c + 1 < cols => cell(r, c + 1),
            2 if r + 1 < rows => cell(r + 1, c),
            3 if c > 0 => cell(r, c - 1),
            _ => s,
        }
    };
    for s in 0..s_count {
        for a in 0..a_count {
            let row = (s * a_count + a) * s_count;
            if s == fallen || s == goal || (s < cells && is_cliff(s)) {
                // Absorbing: the cliff cells themselves are never occupied (entering one means falling).
                let target = if s == goal { goal } else { fallen };
                transitions[row + target] = 1.0;
                rewards[s * a_count + a] = if s == goal { 1.0 } else { 0.0 };
                continue;
            }
            rewards[s * a_count + a] = 0.1;
            for dir in 0..4 {
                let prob = if dir == a { 1.0 - slip + slip / 4.0 } else { slip / 4.0 };
                let next = step(s, dir);
                let next = if is_cliff(next) { fallen } else { next };
                transitions[row + next] += prob;
            }
        }
    }
    // Baseline: up to the top row, right along it, then down the last column to the goal.
    let baseline = (0..s_count)
        .map(|s| {
            if s >= cells {
                return 0;
            }
            let (r, c) = (s / cols, s % cols);
            if c == cols - 1 {
                2
            } else if r > 0 {
                0
            } else {
                1
            }
        })
        .collect();
    Ok(Environment {
        mdp: TabularMdp { states: s_count, actions: a_count, horizon, transitions, rewards },
        start,
        baseline,
    })
}

/// Inventory control: stock 0..=`capacity`, order 0..=`capacity` units (orders beyond capacity are
/// clipped), demand uniform on 0..=`max_demand`. Reward per step, scaled into [0, 1]: 2 per unit sold,
/// minus 0.5 per unit ordered, minus 0.1 per unit left in stock. Baseline: order up to 2 units (a
/// cautious order-up-to rule; the optimal level is higher).
pub fn inventory(capacity: usize, max_demand: usize, horizon: usize) -> Result<Environment, EngineError> {
    if !(1..=1000).contains(&capacity) || !(1..=1000).contains(&max_demand) {
        return Err(invalid(
            "capacity, max_demand",
            format!("need 1..=1000 each, got capacity {capacity} and max_demand {max_demand}"),
        ));
    }
    check_horizon(horizon)?;
    let (s_count, a_count) = (capacity + 1, capacity + 1);
    let demand_p = 1.0 / (max_demand + 1) as f64;
    let (lowest, highest) = (-(0.5 * capacity as f64) - 0.1 * capacity as f64, 2.0 * max_demand.min(capacity) as f64);
    let scale = |v: f64| (v - lowest) / (highest - lowest);
    let mut transitions = vec![0.0; s_count * a_count * s_count];
    let mut rewards = vec![0.0; s_count * a_count];
    for s in 0..s_count {
        for a in 0..a_count {
            let stocked = (s + a).min(capacity);
            let ordered = stocked - s;
            for demand in 0..=max_demand {
                let sold = demand.min(stocked);
                let left = stocked - sold;
                transitions[(s * a_count + a) * s_count + left] += demand_p;
                rewards[s * a_count + a] +=
                    demand_p * scale(2.0 * sold as f64 - 0.5 * ordered as f64 - 0.1 * left as f64);
            }
        }
    }
    let baseline = (0..s_count).map(|s| 2usize.saturating_sub(s)).collect();
    Ok(Environment {
        mdp: TabularMdp { states: s_count, actions: a_count, horizon, transitions, rewards },
        start: 0,
        baseline,
    })
}

fn check_horizon(horizon: usize) -> Result<(), EngineError> {
    if (1..=10_000).contains(&horizon) {
        Ok(())
    } else {
        Err(invalid("horizon", format!("must be in 1..=10000, got {horizon}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::{evaluate_policy, optimal_policy};

    fn expand(baseline: &[usize], horizon: usize) -> Vec<usize> {
        baseline.iter().copied().cycle().take(baseline.len() * horizon).collect()
    }

    #[test]
    fn environments_are_proper_mdps_with_suboptimal_baselines() {
        for env in [river_swim(6, 20), cliff_gridworld(4, 6, 0.1, 20), inventory(6, 4, 12)].map(Result::unwrap) {
            let m = &env.mdp;
            for row in m.transitions.chunks(m.states) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            assert!(m.rewards.iter().all(|r| (0.0..=1.0).contains(r)));
            let (_, optimal) = optimal_policy(m);
            let baseline = evaluate_policy(m, &expand(&env.baseline, m.horizon));
            assert!(
                baseline[env.start] < 0.95 * optimal[env.start],
                "baseline too good: {} vs {}",
                baseline[env.start],
                optimal[env.start]
            );
            assert!(baseline[env.start] > 0.0);
        }
    }

    #[test]
    fn bad_parameters_are_errors_not_panics() {
        assert!(river_swim(2, 10).is_err());
        assert!(cliff_gridworld(1, 6, 0.1, 10).is_err());
        assert!(cliff_gridworld(4, 6, 1.5, 10).is_err());
        assert!(inventory(0, 4, 10).is_err());
        assert!(river_swim(6, 0).is_err());
    }
}
