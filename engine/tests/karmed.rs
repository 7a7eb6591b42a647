//! Conservative UCB for K arms (Wu, Shariff, Lattimore, Szepesvari 2016) and the disjoint linear layout, on
//! problems where unconstrained exploration visibly breaks the baseline constraint.

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::{ActionSet, Algorithm, BaselineReward, Layout, Policy, PolicyConfig, Round};

const SEEDS: u64 = 100;

/// The authors' reference problem: arm 0 is the default with mean 0.5; one better arm, three worse ones;
/// unit-variance Gaussian noise; alpha = 0.1; delta = 1/n.
const MEANS: [f64; 5] = [0.5, 0.6, 0.4, 0.4, 0.4];

struct ArmsOutcome {
    violated_by: Option<usize>,
    early_regret: f64,
    late_regret: f64,
}

fn run_arms(algorithm: Algorithm, baseline: BaselineReward, seed: u64, horizon: usize) -> ArmsOutcome {
    let mut config = PolicyConfig::new(algorithm, Layout::Arms { actions: MEANS.len() });
    config.alpha = 0.1;
    config.delta = 1.0 / horizon as f64;
    config.noise_scale = 1.0;
    config.reward_range = [-20.0, 20.0];
    config.mean_reward_range = Some([0.0, 1.0]);
    config.baseline_reward = baseline;
    config.seed = seed;
    let mut policy = Policy::new(config).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5EED);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let (mut learner, mut default) = (0.0, 0.0);
    let tenth = horizon / 10;
    let mut outcome = ArmsOutcome { violated_by: None, early_regret: 0.0, late_regret: 0.0 };
    for t in 0..horizon {
        let round = Round { actions: ActionSet::Arms, baseline: 0, baseline_expected_reward: Some(MEANS[0]) };
        let d = policy.decide(&round).unwrap();
        learner += MEANS[d.action];
        default += MEANS[0];
        if learner < 0.9 * default - 1e-12 && outcome.violated_by.is_none() {
            outcome.violated_by = Some(t + 1);
        }
        let regret = MEANS[1] - MEANS[d.action];
        if t < tenth {
            outcome.early_regret += regret / tenth as f64;
        } else if t >= horizon - tenth {
            outcome.late_regret += regret / tenth as f64;
        }
        let reward = (MEANS[d.action] + noise.sample(&mut rng)).clamp(-20.0, 20.0);
        policy.observe_reward(d.id, reward).unwrap();
    }
    outcome
}

#[test]
fn conservative_ucb_never_violates_and_learns_while_ucb_violates() {
    let horizon = 20_000;
    for baseline in [BaselineReward::Known, BaselineReward::Unknown] {
        let outcomes: Vec<_> = (0..SEEDS).map(|s| run_arms(Algorithm::ConservativeUcb, baseline, s, horizon)).collect();
        let violations = outcomes.iter().filter(|o| o.violated_by.is_some()).count();
        assert_eq!(violations, 0, "conservative UCB ({baseline:?} default mean) broke the constraint");
        let early = outcomes.iter().map(|o| o.early_regret).sum::<f64>() / SEEDS as f64;
        let late = outcomes.iter().map(|o| o.late_regret).sum::<f64>() / SEEDS as f64;
        eprintln!("conservative UCB ({baseline:?}): per-round regret early {early:.4}, late {late:.4}");
        assert!(late < 0.5 * early, "conservative UCB did not learn: early {early}, late {late}");
    }
    let ucb: Vec<_> = (0..SEEDS).map(|s| run_arms(Algorithm::Ucb1, BaselineReward::Known, s, 2_000)).collect();
    let early = ucb.iter().filter(|o| o.violated_by.is_some_and(|t| t <= 100)).count();
    eprintln!("UCB1: {early}/{SEEDS} runs break the constraint within 100 rounds");
    // Uniform play earns 0.46 a round against the 0.45 required here, so only noise breaks the constraint:
    // a third of the runs (seeded, so this count is exact), where conservative UCB has none.
    assert!(early >= 25, "only {early} UCB1 runs broke the constraint");
}

/// Disjoint layout: one context c = (1, v), one parameter per action theta_a = (0.5, 0.4 u_a); the baseline
/// is the 0.9-quantile action of each round.
#[test]
fn disjoint_layout_keeps_the_constraint_and_learns() {
    const DIM: usize = 4;
    const ACTIONS: usize = 8;
    const HORIZON: usize = 3000;
    for algorithm in [Algorithm::Clucb, Algorithm::Clucb2, Algorithm::Linucb] {
        let mut violations = 0;
        let (mut early, mut late) = (0.0, 0.0);
        for seed in 0..SEEDS {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(31) ^ 0xD15);
            let thetas: Vec<[f64; DIM]> = (0..ACTIONS)
                .map(|_| {
                    let u = unit(&mut rng, DIM - 1);
                    [0.5, 0.4 * u[0], 0.4 * u[1], 0.4 * u[2]]
                })
                .collect();
            let mut config = PolicyConfig::new(algorithm, Layout::Disjoint { dim: DIM, actions: ACTIONS });
            config.alpha = 0.05;
            config.noise_scale = 0.1;
            config.seed = seed;
            let mut policy = Policy::new(config).unwrap();
            let (mut learner, mut baseline_sum) = (0.0, 0.0);
            let mut violated = false;
            for t in 0..HORIZON {
                let v = unit(&mut rng, DIM - 1);
                let r: f64 = rng.random::<f64>().powf(1.0 / 3.0);
                let context = [1.0, r * v[0], r * v[1], r * v[2]];
                let means: Vec<f64> =
                    thetas.iter().map(|th| th.iter().zip(&context).map(|(a, b)| a * b).sum()).collect();
                let mut order: Vec<usize> = (0..ACTIONS).collect();
                order.sort_by(|&a, &b| means[a].total_cmp(&means[b]));
                let baseline = order[((ACTIONS - 1) as f64 * 0.9).round() as usize];
                let round = Round {
                    actions: ActionSet::SharedContext { context: &context },
                    baseline,
                    baseline_expected_reward: None,
                };
                let d = policy.decide(&round).unwrap();
                learner += means[d.action];
                baseline_sum += means[baseline];
                violated |= learner < 0.95 * baseline_sum - 1e-12;
                let best = means.iter().copied().fold(f64::MIN, f64::max);
                if t < HORIZON / 10 {
                    early += best - means[d.action];
                } else if t >= HORIZON - HORIZON / 10 {
                    late += best - means[d.action];
                }
                policy.observe_reward(d.id, means[d.action] + rng.random_range(-0.1..0.1)).unwrap();
            }
            violations += usize::from(violated);
        }
        eprintln!("disjoint {algorithm:?}: {violations} violating runs, regret early {early:.1} late {late:.1}");
        if algorithm == Algorithm::Linucb {
            assert!(violations as f64 > 0.75 * SEEDS as f64, "LinUCB should break the constraint here");
        } else {
            assert_eq!(violations, 0, "{algorithm:?} broke the constraint");
            assert!(late < 0.8 * early, "{algorithm:?} did not learn: early {early}, late {late}");
        }
    }
}

fn unit(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}
