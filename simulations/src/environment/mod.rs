//! Environments: the truth a policy is measured against. Each knows every action's expected reward mu, so
//! regret and the safety margin are computed exactly, not estimated from noisy rewards.
//!
//! [`Environment`] is the prepared, immutable problem (data loaded, shared by all threads); `instance` makes
//! the per-run state from the run's random streams.

mod episodic;
mod k_armed;
mod linear;
mod supervised;

use std::sync::Arc;

use rand::RngExt;
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::ActionSet;

use crate::SimError;
use crate::scenario::{EnvironmentSpec, NoiseKind, Scenario};
use crate::seeds::{Stream, stream_rng};

pub(crate) use episodic::EpisodicTruth;
pub(crate) use k_armed::KArmedRun;
pub(crate) use linear::LinearRun;
pub(crate) use supervised::{Dataset, SupervisedRun};

/// How the round's actions are described to the policy (mirrors the engine's `ActionSet`).
#[derive(Debug, Clone, Copy)]
pub enum Actions<'a> {
    /// Shared layout: `num_actions` feature vectors, row-major.
    PerAction {
        /// `num_actions * dim` features.
        features: &'a [f64],
        /// Number of actions.
        num_actions: usize,
    },
    /// Disjoint layout: one context.
    Context(&'a [f64]),
    /// K arms without features.
    Arms,
}

/// One round as the environment sees it: what the policy is shown, and the truth it is measured against.
#[derive(Debug, Clone, Copy)]
pub struct RoundView<'a> {
    /// What the policy is shown.
    pub actions: Actions<'a>,
    /// Expected reward of every action this round.
    pub mu: &'a [f64],
    /// The baseline's action.
    pub baseline: usize,
    /// The best expected reward this round.
    pub best: f64,
}

impl<'a> RoundView<'a> {
    /// The actions as the engine takes them.
    pub fn action_set(&self) -> ActionSet<'a> {
        match self.actions {
            Actions::PerAction { features, num_actions } => ActionSet::PerAction { features, num_actions },
            Actions::Context(context) => ActionSet::SharedContext { context },
            Actions::Arms => ActionSet::Arms,
        }
    }
}

/// A prepared environment, shared read-only by all runs.
#[derive(Debug, Clone)]
pub struct Environment {
    spec: EnvironmentSpec,
    dataset: Option<Arc<Dataset>>,
    episodic: Option<Arc<EpisodicTruth>>,
}

impl Environment {
    /// Prepares a scenario's environment, loading its data files.
    pub fn load(scenario: &Scenario) -> Result<Environment, SimError> {
        let dataset = match &scenario.environment {
            EnvironmentSpec::Supervised(spec) => Some(Arc::new(Dataset::load(spec, &scenario.base_dir)?)),
            _ => None,
        };
        let episodic = EpisodicTruth::from_spec(&scenario.environment).map(Arc::new);
        Ok(Environment { spec: scenario.environment.clone(), dataset, episodic })
    }

    /// The MDP and its exact values, for an episodic environment.
    pub(crate) fn episodic(&self) -> Option<&EpisodicTruth> {
        self.episodic.as_deref()
    }

    /// The state of run `run` of a bandit environment: its theta*, action sets and random streams, as the
    /// simulator uses them. Public so that benchmarks and load tests can generate the same traffic. `None` for
    /// episodic environments, which the simulator runs episode by episode.
    pub fn instance(&self, scenario_seed: u64, run: u32) -> Option<EnvRun> {
        let noise = Noise::new(&self.spec, stream_rng(scenario_seed, run, Stream::Noise));
        let context_rng = stream_rng(scenario_seed, run, Stream::Context);
        let world = match &self.spec {
            EnvironmentSpec::Linear(spec) => World::Linear(Box::new(LinearRun::new(
                spec,
                stream_rng(scenario_seed, run, Stream::Structure),
                context_rng,
            ))),
            EnvironmentSpec::KArmed(spec) => World::KArmed(KArmedRun::new(spec)),
            EnvironmentSpec::Supervised(_) => {
                let data = self.dataset.clone().expect("a supervised environment is loaded with its dataset");
                World::Supervised(SupervisedRun::new(data, context_rng))
            }
            EnvironmentSpec::RiverSwim(_) | EnvironmentSpec::CliffGridworld(_) | EnvironmentSpec::Inventory(_) => {
                return None;
            }
        };
        Some(EnvRun { world, noise })
    }
}

enum World {
    /// Boxed: it is several times larger than the other variants.
    Linear(Box<LinearRun>),
    KArmed(KArmedRun),
    Supervised(SupervisedRun),
}

/// Reward noise: exactly one draw per round whatever the action, so runs of different policies share it.
struct Noise {
    kind: NoiseKind,
    std: f64,
    deterministic: bool,
    rng: Xoshiro256PlusPlus,
}

impl Noise {
    fn new(spec: &EnvironmentSpec, rng: Xoshiro256PlusPlus) -> Noise {
        let (kind, std, deterministic) = match spec {
            EnvironmentSpec::Linear(s) => (s.noise, s.noise_std.unwrap_or(0.0), false),
            EnvironmentSpec::KArmed(s) => (s.noise, s.noise_std.unwrap_or(0.0), false),
            // A data row's label is its reward: there is no noise to add. (Episodic environments draw their
            // transitions in the episodic run loop and never use this.)
            _ => (NoiseKind::Bernoulli, 0.0, true),
        };
        Noise { kind, std, deterministic, rng }
    }

    fn reward(&mut self, mu: f64) -> f64 {
        if self.deterministic {
            return mu;
        }
        match self.kind {
            NoiseKind::Gaussian => {
                let z: f64 = self.rng.sample(StandardNormal);
                mu + self.std * z
            }
            NoiseKind::Bernoulli => {
                let u: f64 = self.rng.random();
                if u < mu { 1.0 } else { 0.0 }
            }
        }
    }
}

/// One run's environment state.
pub struct EnvRun {
    world: World,
    noise: Noise,
}

impl EnvRun {
    /// Advances to round `t` (1-based) and describes it.
    pub fn round(&mut self, t: u64) -> RoundView<'_> {
        match &mut self.world {
            World::Linear(w) => w.round(t),
            World::KArmed(w) => w.round(),
            World::Supervised(w) => w.round(),
        }
    }

    /// Draws the observed reward of an action whose expected reward is `mu`. Call exactly once per round.
    pub fn reward(&mut self, mu: f64) -> f64 {
        self.noise.reward(mu)
    }
}

/// Scales `v` so that its Euclidean norm is at most `bound` even after rounding, keeping its direction.
pub(crate) fn clamp_norm(v: &mut [f64], bound: f64) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        // Aim a hair below the bound: a norm computed as 1.0000000000000002 must not exceed L = 1.
        let scale = bound * (1.0 - 1e-12) / norm;
        v.iter_mut().for_each(|x| *x *= scale);
    }
}

/// Index of the action at quantile `q` of `mu` (0 = lowest, 1 = highest); ties broken by index.
pub(crate) fn quantile_action(mu: &[f64], q: f64, order: &mut Vec<usize>) -> usize {
    order.clear();
    order.extend(0..mu.len());
    order.sort_by(|&a, &b| mu[a].total_cmp(&mu[b]).then(a.cmp(&b)));
    let rank = (q * (mu.len() - 1) as f64).round() as usize;
    order[rank.min(mu.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_action_picks_by_rank() {
        let mu = [0.3, 0.9, 0.1, 0.5, 0.7];
        let mut order = Vec::new();
        assert_eq!(quantile_action(&mu, 0.0, &mut order), 2);
        assert_eq!(quantile_action(&mu, 1.0, &mut order), 1);
        assert_eq!(quantile_action(&mu, 0.5, &mut order), 3);
        assert_eq!(quantile_action(&mu, 0.75, &mut order), 4);
    }

    #[test]
    fn clamp_norm_stays_within_bound() {
        let mut v = vec![1.0 / 2f64.sqrt(); 2];
        clamp_norm(&mut v, 1.0);
        assert!(v.iter().map(|x| x * x).sum::<f64>().sqrt() <= 1.0);
    }
}
