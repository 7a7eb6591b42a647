//! Synthetic linear environment (the setting of Kazerouni et al. 2017 and Garcelon et al. 2020).
//!
//! Construction, chosen so that the engine's default bounds hold exactly (||x|| <= L = 1, ||theta*|| <= S = 1)
//! and every expected reward lies in [0, 1]: with u and phi uniform on the unit sphere of R^(d-1),
//! x = (1, u) / sqrt(2) and theta* = (1, phi) / sqrt(2), so mu = <x, theta*> = (1 + <u, phi>) / 2.
//! For d = 4, <u, phi> is uniform on [-1, 1] (Archimedes), so expected rewards are uniform on [0, 1].

use rand::RngExt;
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Actions, RoundView, clamp_norm, quantile_action};
use crate::scenario::{ChangeKind, LinearSpec};

/// Expected rewards, baseline and best action of every action set for one fixed theta*.
struct PhaseTable {
    mu: Vec<f64>,
    baseline: Vec<usize>,
    best: Vec<f64>,
}

/// One run of a linear environment.
pub(crate) struct LinearRun {
    dim: usize,
    actions: usize,
    pool: Vec<f64>,
    quantile: f64,
    before: PhaseTable,
    /// theta* after a change, and the change's window [start, end): a jump has end == start.
    after: Option<(PhaseTable, u64, u64)>,
    phi_before: Vec<f64>,
    phi_after: Vec<f64>,
    context_rng: Xoshiro256PlusPlus,
    scratch_theta: Vec<f64>,
    scratch_mu: Vec<f64>,
    order: Vec<usize>,
}

fn unit_vector(rng: &mut Xoshiro256PlusPlus, len: usize) -> Vec<f64> {
    loop {
        let v: Vec<f64> = (0..len).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-9 {
            return v.into_iter().map(|x| x / norm).collect();
        }
    }
}

fn theta_from(phi: &[f64], theta: &mut Vec<f64>) {
    theta.clear();
    theta.push(1.0);
    theta.extend_from_slice(phi);
    clamp_norm(theta, 1.0);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Great-circle interpolation between unit vectors (slerp), so a drifting theta* keeps its norm and the
/// expected rewards stay in [0, 1] throughout the drift.
fn slerp(a: &[f64], b: &[f64], s: f64, out: &mut Vec<f64>) {
    let cos = dot(a, b).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = if omega.sin().abs() < 1e-9 {
        (1.0 - s, s)
    } else {
        (((1.0 - s) * omega).sin() / omega.sin(), (s * omega).sin() / omega.sin())
    };
    out.clear();
    out.extend(a.iter().zip(b).map(|(x, y)| wa * x + wb * y));
    let norm = dot(out, out).sqrt();
    out.iter_mut().for_each(|x| *x /= norm);
}

impl LinearRun {
    pub(crate) fn new(spec: &LinearSpec, mut rng: Xoshiro256PlusPlus, context_rng: Xoshiro256PlusPlus) -> LinearRun {
        let (d, k) = (spec.dim, spec.actions);
        let phi_before = unit_vector(&mut rng, d - 1);
        let mut pool = Vec::with_capacity(spec.context_pool * k * d);
        for _ in 0..spec.context_pool * k {
            let start = pool.len();
            pool.push(1.0);
            pool.extend(unit_vector(&mut rng, d - 1));
            clamp_norm(&mut pool[start..], 1.0);
        }
        // Drawn even without a change, so that adding a change does not shift any other draw.
        let phi_after = unit_vector(&mut rng, d - 1);
        let mut run = LinearRun {
            dim: d,
            actions: k,
            pool,
            quantile: spec.baseline_quantile,
            before: PhaseTable { mu: Vec::new(), baseline: Vec::new(), best: Vec::new() },
            after: None,
            phi_before,
            phi_after,
            context_rng,
            scratch_theta: Vec::with_capacity(d),
            scratch_mu: vec![0.0; k],
            order: Vec::with_capacity(k),
        };
        run.before = run.table(&run.phi_before.clone());
        if let (Some(kind), Some(at)) = (spec.change, spec.change_at) {
            let end = match kind {
                ChangeKind::Jump => at,
                ChangeKind::Drift => at + spec.drift_rounds.unwrap_or(0),
            };
            let table = run.table(&run.phi_after.clone());
            run.after = Some((table, at, end));
        }
        run
    }

    fn table(&mut self, phi: &[f64]) -> PhaseTable {
        let mut theta = Vec::with_capacity(self.dim);
        theta_from(phi, &mut theta);
        let sets = self.pool.len() / (self.actions * self.dim);
        let mut table = PhaseTable {
            mu: Vec::with_capacity(sets * self.actions),
            baseline: Vec::with_capacity(sets),
            best: Vec::with_capacity(sets),
        };
        for set in 0..sets {
            let start = table.mu.len();
            for a in 0..self.actions {
                let x = &self.pool[(set * self.actions + a) * self.dim..][..self.dim];
                table.mu.push(dot(x, &theta));
            }
            let mu = &table.mu[start..];
            table.baseline.push(quantile_action(mu, self.quantile, &mut self.order));
            table.best.push(mu.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        }
        table
    }

    pub(crate) fn round(&mut self, t: u64) -> RoundView<'_> {
        let sets = self.before.baseline.len();
        // One draw per round even with a single action set keeps the context stream aligned across runs.
        let draw: u64 = self.context_rng.random();
        let set = if sets == 1 { 0 } else { (draw % sets as u64) as usize };
        let features = &self.pool[set * self.actions * self.dim..][..self.actions * self.dim];
        let actions = Actions::PerAction { features, num_actions: self.actions };
        let table = match &self.after {
            Some((after, _, end)) if t >= *end => after,
            Some((_, start, end)) if t >= *start => {
                // Inside a drift: theta* moves every round, so compute this round's rewards directly.
                let s = (t - start) as f64 / (end - start) as f64;
                let mut phi = Vec::with_capacity(self.dim - 1);
                slerp(&self.phi_before, &self.phi_after, s, &mut phi);
                theta_from(&phi, &mut self.scratch_theta);
                for (a, mu) in self.scratch_mu.iter_mut().enumerate() {
                    *mu = dot(&features[a * self.dim..][..self.dim], &self.scratch_theta);
                }
                let baseline = quantile_action(&self.scratch_mu, self.quantile, &mut self.order);
                let best = self.scratch_mu.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                return RoundView { actions, mu: &self.scratch_mu, baseline, best };
            }
            _ => &self.before,
        };
        RoundView {
            actions,
            mu: &table.mu[set * self.actions..][..self.actions],
            baseline: table.baseline[set],
            best: table.best[set],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::NoiseKind;
    use rand::SeedableRng;

    fn spec(change: Option<ChangeKind>) -> LinearSpec {
        LinearSpec {
            dim: 4,
            actions: 10,
            noise: NoiseKind::Bernoulli,
            noise_std: None,
            baseline_quantile: 0.5,
            context_pool: 3,
            change,
            change_at: change.map(|_| 10),
            drift_rounds: match change {
                Some(ChangeKind::Drift) => Some(10),
                _ => None,
            },
        }
    }

    #[test]
    fn features_and_rewards_respect_the_declared_bounds() {
        let rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut run = LinearRun::new(&spec(Some(ChangeKind::Drift)), rng, Xoshiro256PlusPlus::seed_from_u64(2));
        for t in 1..=40 {
            let view = run.round(t);
            let Actions::PerAction { features, num_actions } = view.actions else { panic!("shared layout") };
            assert_eq!(num_actions, 10);
            for x in features.chunks(4) {
                assert!(dot(x, x).sqrt() <= 1.0);
            }
            assert!(view.mu.iter().all(|m| (-1e-12..=1.0 + 1e-12).contains(m)));
            assert!(view.mu.iter().all(|&m| m <= view.best));
        }
    }

    #[test]
    fn a_jump_changes_the_rewards_at_the_set_round() {
        let make = || {
            LinearRun::new(
                &spec(Some(ChangeKind::Jump)),
                Xoshiro256PlusPlus::seed_from_u64(5),
                Xoshiro256PlusPlus::seed_from_u64(6),
            )
        };
        let (mut a, mut b) = (make(), make());
        let mu_at = |run: &mut LinearRun, t| run.round(t).mu.to_vec();
        assert_eq!(mu_at(&mut a, 9), mu_at(&mut b, 9));
        let (before, after) = (a.before.mu.clone(), a.after.as_ref().unwrap().0.mu.clone());
        assert_ne!(before, after);
        let view_mu = mu_at(&mut a, 10);
        assert!(after.chunks(10).any(|c| c == view_mu.as_slice()));
    }
}
