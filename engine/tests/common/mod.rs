//! The synthetic linear problem shared by the statistical and drift tests.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

pub const DIM: usize = 6;
pub const ACTIONS: usize = 12;
pub const NOISE: f64 = 0.1;

/// x = (1, v) with v uniform in the unit ball of R^{d-1}; theta* = (0.5, theta') with ||theta'|| = 0.4, so
/// mu = 0.5 + <v, theta'> lies in [0.1, 0.9] and rewards mu + U(-0.1, 0.1) lie in [0, 1].
pub struct LinearProblem {
    pub theta: [f64; DIM],
    rng: Xoshiro256PlusPlus,
    pub features: Vec<f64>,
    pub means: Vec<f64>,
    /// Reward noise N(0, NOISE^2) instead of U(-NOISE, NOISE): the worst NOISE-sub-Gaussian case, rewards
    /// then leave [0, 1] now and then.
    pub gaussian_noise: bool,
}

impl LinearProblem {
    pub fn new(seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FFEE);
        let mut theta = [0.0; DIM];
        theta[0] = 0.5;
        let direction = unit(&mut rng, DIM - 1);
        for i in 1..DIM {
            theta[i] = 0.4 * direction[i - 1];
        }
        LinearProblem {
            theta,
            rng,
            features: vec![0.0; DIM * ACTIONS],
            means: vec![0.0; ACTIONS],
            gaussian_noise: false,
        }
    }

    /// Draws a round; returns the baseline (0.9-quantile action) index.
    pub fn next_round(&mut self) -> usize {
        for a in 0..ACTIONS {
            let v = unit(&mut self.rng, DIM - 1);
            let radius: f64 = self.rng.random::<f64>().powf(1.0 / (DIM - 1) as f64);
            let x = &mut self.features[a * DIM..(a + 1) * DIM];
            x[0] = 1.0;
            for i in 1..DIM {
                x[i] = radius * v[i - 1];
            }
            self.means[a] = x.iter().zip(&self.theta).map(|(x, t)| x * t).sum();
        }
        let mut order: Vec<usize> = (0..ACTIONS).collect();
        order.sort_by(|&a, &b| self.means[a].total_cmp(&self.means[b]));
        order[((ACTIONS - 1) as f64 * 0.9).round() as usize]
    }

    pub fn reward(&mut self, action: usize) -> f64 {
        if self.gaussian_noise {
            let z: f64 = StandardNormal.sample(&mut self.rng);
            return self.means[action] + NOISE * z;
        }
        self.means[action] + self.rng.random_range(-NOISE..NOISE)
    }

    pub fn best(&self) -> f64 {
        self.means.iter().copied().fold(f64::MIN, f64::max)
    }
}

pub fn unit(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

impl LinearProblem {
    /// Replaces theta* by a fresh draw (same bias, new direction): the world changes under the learner.
    pub fn jump(&mut self) {
        let direction = unit(&mut self.rng, DIM - 1);
        for i in 1..DIM {
            self.theta[i] = 0.4 * direction[i - 1];
        }
    }
}
