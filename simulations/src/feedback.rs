//! Delayed and lost rewards (ALGORITHMS.md section 8). A reward decided at round t with delay D reaches the
//! policy at the start of round t + 1 + D, before that round's decision; D = 0 is the usual bandit loop.
//! A reward that is lost, or delayed by `timeout` rounds or more, never arrives: with a timeout, the decision
//! is expired at the start of round t + 1 + timeout so the policy applies its `on_timeout` rule.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::RngExt;
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::DecisionId;

use crate::scenario::{DelayKind, FeedbackSpec};

/// What reaches the policy at the start of a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Delivery {
    /// A reward arrives.
    Reward(DecisionId, f64),
    /// A decision times out.
    Expire(DecisionId),
}

/// The rewards in flight in one run.
pub(crate) struct FeedbackQueue {
    spec: FeedbackSpec,
    rng: Xoshiro256PlusPlus,
    /// (arrival round, decision id, reward bits): ordered by arrival, then by decision.
    arrivals: BinaryHeap<Reverse<(u64, DecisionId, u64)>>,
    /// (expiry round, decision id), in round order because the timeout is the same for every decision.
    expiries: VecDeque<(u64, DecisionId)>,
}

impl FeedbackQueue {
    pub(crate) fn new(spec: &FeedbackSpec, rng: Xoshiro256PlusPlus) -> FeedbackQueue {
        FeedbackQueue { spec: spec.clone(), rng, arrivals: BinaryHeap::new(), expiries: VecDeque::new() }
    }

    fn delay(&mut self) -> u64 {
        let mean = self.spec.mean_delay;
        match self.spec.delay {
            DelayKind::Fixed => mean.round() as u64,
            DelayKind::Uniform => self.rng.random_range(0..=(2.0 * mean).round() as u64),
            DelayKind::Geometric => {
                // Failures before the first success with p = 1 / (mean + 1), by inversion: mean (1 - p) / p.
                let u: f64 = self.rng.random();
                if mean == 0.0 {
                    0
                } else {
                    let p = 1.0 / (mean + 1.0);
                    ((1.0 - u).ln() / (1.0 - p).ln()).floor() as u64
                }
            }
        }
    }

    /// Schedules the reward of decision `id` taken at round `t`. Draws the loss coin and the delay every time,
    /// so the feedback stream stays aligned across policies.
    pub(crate) fn schedule(&mut self, t: u64, id: DecisionId, reward: f64) {
        let lost = self.rng.random::<f64>() < self.spec.loss;
        let delay = self.delay();
        let late = self.spec.timeout.is_some_and(|timeout| delay >= timeout);
        if !lost && !late {
            self.arrivals.push(Reverse((t + 1 + delay, id, reward.to_bits())));
        } else if let Some(timeout) = self.spec.timeout {
            self.expiries.push_back((t + 1 + timeout, id));
        }
    }

    /// Everything due at the start of round `t`: arrived rewards first (by arrival, then decision), then
    /// expiries.
    pub(crate) fn due(&mut self, t: u64, out: &mut Vec<Delivery>) {
        out.clear();
        while let Some(&Reverse((arrival, id, bits))) = self.arrivals.peek() {
            if arrival > t {
                break;
            }
            self.arrivals.pop();
            out.push(Delivery::Reward(id, f64::from_bits(bits)));
        }
        while let Some(&(expiry, id)) = self.expiries.front() {
            if expiry > t {
                break;
            }
            self.expiries.pop_front();
            out.push(Delivery::Expire(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn queue(delay: DelayKind, mean: f64, loss: f64, timeout: Option<u64>) -> FeedbackQueue {
        let spec = FeedbackSpec { delay, mean_delay: mean, loss, timeout };
        FeedbackQueue::new(&spec, Xoshiro256PlusPlus::seed_from_u64(3))
    }

    #[test]
    fn zero_delay_arrives_before_the_next_decision() {
        let mut q = queue(DelayKind::Fixed, 0.0, 0.0, None);
        let mut out = Vec::new();
        q.schedule(1, 0, 0.5);
        q.due(1, &mut out);
        assert!(out.is_empty());
        q.due(2, &mut out);
        assert_eq!(out, vec![Delivery::Reward(0, 0.5)]);
    }

    #[test]
    fn lost_rewards_expire_after_the_timeout_and_never_arrive() {
        let mut q = queue(DelayKind::Fixed, 2.0, 1.0, Some(5));
        let mut out = Vec::new();
        q.schedule(1, 0, 1.0);
        for t in 2..7 {
            q.due(t, &mut out);
            assert!(out.is_empty(), "round {t}: {out:?}");
        }
        q.due(7, &mut out);
        assert_eq!(out, vec![Delivery::Expire(0)]);
    }

    #[test]
    fn geometric_delays_have_the_declared_mean() {
        let mut q = queue(DelayKind::Geometric, 20.0, 0.0, None);
        let n = 200_000;
        let mean = (0..n).map(|_| q.delay() as f64).sum::<f64>() / n as f64;
        assert!((mean - 20.0).abs() < 0.3, "mean delay {mean}");
    }

    #[test]
    fn every_reward_is_delivered_exactly_once() {
        let mut q = queue(DelayKind::Uniform, 10.0, 0.1, Some(15));
        let mut seen = vec![0u32; 500];
        let mut out = Vec::new();
        for t in 1..=600u64 {
            q.due(t, &mut out);
            for d in &out {
                let id = match *d {
                    Delivery::Reward(id, _) | Delivery::Expire(id) => id,
                };
                seen[id as usize] += 1;
            }
            if t <= 500 {
                q.schedule(t, t - 1, 1.0);
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }
}
