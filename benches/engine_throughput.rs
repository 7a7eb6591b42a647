//! decide + observe_reward throughput of the engine's policies, one thread (issue 2's speed target:
//! >= 400k/s for LinUCB and CLUCB at d = 32, K = 16, shared layout).
//!
//! Each benchmark first warms the policy up on 2,000 rounds so that it measures the steady state, then times
//! one decide followed by the reward of that decision, cycling through a pool of pre-drawn rounds.
//!
//! `cargo bench --bench engine_throughput` runs the whole grid; pass a filter such as `shared/32/16` to run
//! part of it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::{ActionSet, Algorithm, Layout, Policy, PolicyConfig, Round};

const POOL: usize = 256;

struct Workload {
    layout: Layout,
    features: Vec<Vec<f64>>,
    num_actions: usize,
    rewards: Vec<f64>,
}

impl Workload {
    fn new(layout: Layout, dim: usize, num_actions: usize) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let width = match layout {
            Layout::Shared { .. } => dim * num_actions,
            _ => dim,
        };
        let scale = 1.0 / (dim as f64).sqrt();
        let features = (0..POOL).map(|_| (0..width).map(|_| rng.random_range(-scale..scale)).collect()).collect();
        let rewards = (0..POOL).map(|_| rng.random::<f64>()).collect();
        Workload { layout, features, num_actions, rewards }
    }

    fn round(&self, i: usize) -> Round<'_> {
        let actions = match self.layout {
            Layout::Shared { .. } => {
                ActionSet::PerAction { features: &self.features[i % POOL], num_actions: self.num_actions }
            }
            _ => ActionSet::SharedContext { context: &self.features[i % POOL] },
        };
        Round { actions, baseline: 0, baseline_expected_reward: None }
    }
}

fn step(policy: &mut Policy, workload: &Workload, i: usize) {
    let decision = policy.decide(&workload.round(i)).expect("valid round");
    policy.observe_reward(decision.id, workload.rewards[i % POOL]).expect("valid reward");
    black_box(decision);
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_update");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(1200));
    group.sample_size(20);
    for (layout_name, disjoint) in [("shared", false), ("disjoint", true)] {
        for dim in [8usize, 32, 128] {
            for num_actions in [2usize, 16, 100] {
                let layout =
                    if disjoint { Layout::Disjoint { dim, actions: num_actions } } else { Layout::Shared { dim } };
                let workload = Workload::new(layout, dim, num_actions);
                for algorithm in [Algorithm::Linucb, Algorithm::Clucb, Algorithm::Clucb2, Algorithm::Lints] {
                    let mut config = PolicyConfig::new(algorithm, layout);
                    config.alpha = 0.05;
                    config.propensity_samples = 16;
                    let id = BenchmarkId::new(algorithm.name(), format!("{layout_name}/{dim}/{num_actions}"));
                    // Built on first use, so a filtered run only pays for the benchmarks it selects.
                    let mut warmed: Option<Policy> = None;
                    let mut i = 0;
                    group.bench_function(id, |b| {
                        let policy = warmed.get_or_insert_with(|| {
                            let mut policy = Policy::new(config.clone()).expect("valid config");
                            for i in 0..2_000 {
                                step(&mut policy, &workload, i);
                            }
                            policy
                        });
                        b.iter(|| {
                            step(policy, &workload, i);
                            i += 1;
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
