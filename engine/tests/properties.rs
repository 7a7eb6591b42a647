//! Property tests of the policy as a whole: the budget check equals a direct recomputation from scratch,
//! learner plays always pass it, state round-trips exactly, and rejected input changes nothing.

use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use safebet_engine::{
    ActionSet, Algorithm, BaselineReward, EngineError, ErrorKind, Layout, PendingResolution, Policy, PolicyConfig,
    Round,
};

const DIM: usize = 4;

fn config(algorithm: Algorithm, baseline: BaselineReward, alpha: f64, seed: u64) -> PolicyConfig {
    let mut c = PolicyConfig::new(algorithm, Layout::Shared { dim: DIM });
    c.alpha = alpha;
    c.baseline_reward = baseline;
    c.noise_scale = 0.05;
    c.seed = seed;
    c
}

/// A deterministic stream of rounds: (features, baseline, baseline mean, reward seed).
fn rounds(num_actions: usize) -> impl Strategy<Value = Vec<(Vec<f64>, usize, f64, f64)>> {
    prop::collection::vec(
        (prop::collection::vec(-1.0f64..1.0, DIM * num_actions), 0..num_actions, 0.2f64..0.8, 0.0f64..1.0),
        1..120,
    )
}

/// Independent bookkeeping of everything the budget check depends on, in the most direct form.
struct Reference {
    gram: DMatrix<f64>,
    response: DVector<f64>,
    learner: DVector<f64>,
    baseline_played: DVector<f64>,
    baseline_foregone: DVector<f64>,
    baseline_total: f64,
    baseline_banked: f64,
}

impl Reference {
    fn new() -> Self {
        Reference {
            gram: DMatrix::identity(DIM, DIM),
            response: DVector::zeros(DIM),
            learner: DVector::zeros(DIM),
            baseline_played: DVector::zeros(DIM),
            baseline_foregone: DVector::zeros(DIM),
            baseline_total: 0.0,
            baseline_banked: 0.0,
        }
    }

    /// Lower bound of <theta, v> over the Abbasi-Yadkori ellipsoid, computed with a fresh inverse.
    fn lower_bound(&self, v: &DVector<f64>, config: &PolicyConfig) -> f64 {
        let inv = self.gram.clone().try_inverse().unwrap();
        let theta = &inv * &self.response;
        let log_ratio = self.gram.determinant().ln() - DIM as f64 * config.lambda.ln();
        let beta = config.noise_scale * (2.0 * (1.0 / config.delta).ln() + log_ratio).sqrt()
            + config.lambda.sqrt() * config.theta_norm_bound;
        theta.dot(v) - beta * v.dot(&(&inv * v)).sqrt()
    }

    fn margin(&self, config: &PolicyConfig, x_a: &DVector<f64>, x_b: &DVector<f64>, mu_b: f64) -> f64 {
        let alpha = config.alpha;
        match config.baseline_reward {
            BaselineReward::Known => {
                self.lower_bound(&(&self.learner + x_a), config) + self.baseline_banked
                    - (1.0 - alpha) * (self.baseline_total + mu_b)
            }
            BaselineReward::Unknown => {
                let v = &self.learner + x_a + &self.baseline_played * alpha
                    - (&self.baseline_foregone + x_b) * (1.0 - alpha);
                self.lower_bound(&v, config)
            }
        }
    }
}

fn action(features: &[f64], a: usize) -> DVector<f64> {
    DVector::from_column_slice(&features[a * DIM..(a + 1) * DIM])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The conservative rule never plays a non-baseline action unless its own lower bound says the
    /// constraint holds, and that lower bound is exactly the textbook one (no drift from the O(d) updates).
    #[test]
    fn budget_check_matches_a_direct_recomputation(
        data in rounds(3),
        known in any::<bool>(),
        clucb2 in any::<bool>(),
        alpha in 0.0f64..0.5,
        seed in any::<u64>(),
    ) {
        let baseline_reward = if known { BaselineReward::Known } else { BaselineReward::Unknown };
        let algorithm = if clucb2 { Algorithm::Clucb2 } else { Algorithm::Clucb };
        let config = config(algorithm, baseline_reward, alpha, seed);
        let mut policy = Policy::new(config.clone()).unwrap();
        let mut reference = Reference::new();
        for (features, baseline, mu_b, reward) in &data {
            let round = Round {
                actions: ActionSet::PerAction { features, num_actions: 3 },
                baseline: *baseline,
                baseline_expected_reward: Some(*mu_b),
            };
            let decision = policy.decide(&round).unwrap();
            let x_b = action(features, *baseline);
            if let Some(check) = decision.budget {
                let judged = if decision.played_baseline() { decision.proposed_action } else { decision.action };
                let direct = reference.margin(&config, &action(features, judged), &x_b, *mu_b);
                prop_assert!((check.margin - direct).abs() < 1e-7 * (1.0 + direct.abs()),
                    "reported margin {} but direct computation gives {}", check.margin, direct);
            }
            if !decision.played_baseline() {
                let margin = decision.budget.expect("a learner play is always checked").margin;
                prop_assert!(margin >= 0.0, "played action {} with negative margin {}", decision.action, margin);
            }
            // Book the round in the reference.
            reference.baseline_total += mu_b;
            if decision.played_baseline() {
                reference.baseline_banked += mu_b;
                reference.baseline_played += &x_b;
            } else {
                reference.learner += action(features, decision.action);
                reference.baseline_foregone += &x_b;
            }
            let x = action(features, decision.action);
            reference.gram += &x * x.transpose();
            reference.response += &x * *reward;
            policy.observe_reward(decision.id, *reward).unwrap();
        }
    }

    /// A policy serialised mid-run and restored makes the same decisions and reaches the same bytes.
    #[test]
    fn serialisation_round_trips_exactly(
        data in rounds(3),
        algorithm in prop::sample::select(vec![Algorithm::Linucb, Algorithm::Lints, Algorithm::EpsilonGreedy, Algorithm::Clucb, Algorithm::Clucb2]),
        split in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let mut original = Policy::new(config(algorithm, BaselineReward::Unknown, 0.1, seed)).unwrap();
        let cut = (data.len() as f64 * split) as usize;
        let mut restored = None;
        let mut pending = Vec::new();
        for (i, (features, baseline, _, reward)) in data.iter().enumerate() {
            if i == cut {
                let bytes = serde_json::to_string(&original).unwrap();
                let copy: Policy = serde_json::from_str(&bytes).unwrap();
                prop_assert_eq!(serde_json::to_string(&copy).unwrap(), bytes);
                restored = Some(copy);
            }
            let round = Round { actions: ActionSet::PerAction { features, num_actions: 3 }, baseline: *baseline, baseline_expected_reward: None };
            let decision = original.decide(&round).unwrap();
            if let Some(copy) = restored.as_mut() {
                prop_assert_eq!(&copy.decide(&round).unwrap(), &decision);
            }
            // Every other reward is held back, so pending decisions are part of the state that round-trips.
            pending.push((decision.id, *reward));
            if i % 2 == 0 {
                for (id, r) in pending.drain(..) {
                    original.observe_reward(id, r).unwrap();
                    if let Some(copy) = restored.as_mut() {
                        match copy.observe_reward(id, r) {
                            Ok(()) => {}
                            // Decisions made before the cut and resolved before it are not pending in the copy.
                            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::AlreadyExists),
                        }
                    }
                }
            }
        }
        if let Some(copy) = restored {
            prop_assert_eq!(serde_json::to_string(&copy).unwrap(), serde_json::to_string(&original).unwrap());
        }
    }
}

/// Recognises the error a bad round must produce.
type ExpectedError = fn(&EngineError) -> bool;
/// Breaks one field of a configuration.
type ConfigChange = Box<dyn Fn(&mut PolicyConfig)>;

/// Serialised state, to check that a rejected call changed nothing.
fn snapshot(policy: &Policy) -> String {
    serde_json::to_string(policy).unwrap()
}

#[test]
fn rejected_input_changes_nothing() {
    let mut known = config(Algorithm::Clucb, BaselineReward::Known, 0.1, 1);
    known.on_timeout = PendingResolution::DefaultReward { reward: 0.0 };
    let mut policy = Policy::new(known).unwrap();
    let good = [0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4];
    let round = |features: &'static [f64], k, baseline, mu| Round {
        actions: ActionSet::PerAction { features, num_actions: k },
        baseline,
        baseline_expected_reward: mu,
    };
    let ok = policy
        .decide(&Round {
            actions: ActionSet::PerAction { features: &good, num_actions: 2 },
            baseline: 0,
            baseline_expected_reward: Some(0.5),
        })
        .unwrap();
    policy.observe_reward(ok.id, 0.5).unwrap();
    let pending = policy
        .decide(&Round {
            actions: ActionSet::PerAction { features: &good, num_actions: 2 },
            baseline: 1,
            baseline_expected_reward: Some(0.5),
        })
        .unwrap();
    let before = snapshot(&policy);

    static NAN: [f64; 8] = [0.1, f64::NAN, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0];
    static INF: [f64; 8] = [0.1, 0.2, 0.3, 0.4, 0.0, f64::INFINITY, 0.0, 0.0];
    static SHORT: [f64; 7] = [0.0; 7];
    static GOOD: [f64; 8] = [0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4];
    let cases: Vec<(Round<'static>, ExpectedError)> = vec![
        (round(&NAN, 2, 0, Some(0.5)), |e| matches!(e, EngineError::NonFinite { .. })),
        (round(&INF, 2, 0, Some(0.5)), |e| matches!(e, EngineError::NonFinite { .. })),
        (round(&SHORT, 2, 0, Some(0.5)), |e| matches!(e, EngineError::DimensionMismatch { expected: 8, got: 7, .. })),
        (round(&GOOD, 0, 0, Some(0.5)), |e| matches!(e, EngineError::EmptyActionSet)),
        (round(&GOOD, 2, 2, Some(0.5)), |e| {
            matches!(e, EngineError::BaselineOutOfRange { baseline: 2, num_actions: 2 })
        }),
        (round(&GOOD, 2, 0, None), |e| matches!(e, EngineError::MissingBaselineReward)),
        (round(&GOOD, 2, 0, Some(f64::NAN)), |e| matches!(e, EngineError::NonFinite { .. })),
        (round(&GOOD, 2, 0, Some(1.5)), |e| matches!(e, EngineError::OutOfRange { .. })),
        (
            Round {
                actions: ActionSet::SharedContext { context: &GOOD[..4] },
                baseline: 0,
                baseline_expected_reward: Some(0.5),
            },
            |e| matches!(e, EngineError::LayoutMismatch { .. }),
        ),
        (Round { actions: ActionSet::Arms, baseline: 0, baseline_expected_reward: Some(0.5) }, |e| {
            matches!(e, EngineError::LayoutMismatch { .. })
        }),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        let error = policy.decide(bad).expect_err("bad round accepted");
        assert!(expected(&error), "case {i}: unexpected error {error}");
        let error = policy.decide_baseline(bad).expect_err("bad round accepted by decide_baseline");
        assert!(expected(&error), "case {i}: unexpected error {error}");
        assert_eq!(snapshot(&policy), before, "case {i} changed the state");
    }
    for (id, reward, kind) in [
        (pending.id, f64::NAN, ErrorKind::InvalidArgument),
        (pending.id, f64::NEG_INFINITY, ErrorKind::InvalidArgument),
        (pending.id, 1.5, ErrorKind::InvalidArgument),
        (pending.id, -0.1, ErrorKind::InvalidArgument),
        (ok.id, 0.5, ErrorKind::AlreadyExists),
        (99, 0.5, ErrorKind::NotFound),
    ] {
        let error = policy.observe_reward(id, reward).expect_err("bad reward accepted");
        assert_eq!(error.kind(), kind, "reward {reward} for {id}: {error}");
        assert_eq!(snapshot(&policy), before);
    }
    assert_eq!(policy.expire(ok.id).unwrap_err(), EngineError::AlreadyResolved(ok.id));
    assert_eq!(policy.expire(42).unwrap_err(), EngineError::UnknownDecision(42));
    assert!(policy.set_alpha(1.0).is_err() && policy.set_alpha(f64::NAN).is_err());
    assert_eq!(snapshot(&policy), before);

    // And the good path still works: the pending decision expires with the default reward, once.
    policy.expire(pending.id).unwrap();
    assert_eq!(policy.stats().defaulted, 1);
    assert_eq!(policy.observe_reward(pending.id, 0.5).unwrap_err(), EngineError::AlreadyResolved(pending.id));
}

#[test]
fn invalid_configurations_are_refused_with_the_field_named() {
    let base = config(Algorithm::Clucb, BaselineReward::Unknown, 0.1, 0);
    let cases: Vec<(&str, ConfigChange)> = vec![
        ("alpha", Box::new(|c| c.alpha = 1.0)),
        ("alpha", Box::new(|c| c.alpha = -0.1)),
        ("delta", Box::new(|c| c.delta = 0.0)),
        ("lambda", Box::new(|c| c.lambda = f64::NAN)),
        ("exploration_scale", Box::new(|c| c.exploration_scale = Some(0.5))),
        ("layout", Box::new(|c| c.layout = Layout::Arms { actions: 3 })),
        ("layout.dim", Box::new(|c| c.layout = Layout::Shared { dim: 0 })),
        ("reward_range", Box::new(|c| c.reward_range = [1.0, 0.0])),
        ("on_timeout.reward", Box::new(|c| c.on_timeout = PendingResolution::DefaultReward { reward: 2.0 })),
    ];
    for (field, mutate) in cases {
        let mut c = base.clone();
        mutate(&mut c);
        match Policy::new(c) {
            Err(EngineError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        }
    }
    // A fixed exploration scale is fine for an unconstrained learner: it is only the guarantee that is lost.
    let mut linucb = base.clone();
    linucb.algorithm = Algorithm::Linucb;
    linucb.exploration_scale = Some(0.5);
    assert!(Policy::new(linucb).is_ok());
}

#[test]
fn epsilon_greedy_propensities_are_exact_and_thompson_ones_are_marked_estimated() {
    let features = [0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0];
    let round = Round {
        actions: ActionSet::PerAction { features: &features, num_actions: 3 },
        baseline: 0,
        baseline_expected_reward: None,
    };
    let mut greedy = config(Algorithm::EpsilonGreedy, BaselineReward::Unknown, 0.1, 3);
    greedy.epsilon = 0.3;
    let mut policy = Policy::new(greedy).unwrap();
    // Teach it that action 1 is best.
    for _ in 0..50 {
        let d = policy.decide(&round).unwrap();
        policy.observe_reward(d.id, if d.action == 1 { 0.9 } else { 0.1 }).unwrap();
    }
    for _ in 0..50 {
        let d = policy.decide(&round).unwrap();
        let expected = if d.action == 1 { 0.7 + 0.1 } else { 0.1 };
        assert!((d.propensity.probability - expected).abs() < 1e-12, "{d:?}");
        assert_eq!(d.propensity.kind, safebet_engine::PropensityKind::Exact);
        policy.observe_reward(d.id, 0.5).unwrap();
    }
    let mut ts = Policy::new(config(Algorithm::Lints, BaselineReward::Unknown, 0.1, 3)).unwrap();
    let d = ts.decide(&round).unwrap();
    assert_eq!(d.propensity.kind, safebet_engine::PropensityKind::Estimated);
    assert!(d.propensity.probability > 0.0 && d.propensity.probability <= 1.0);
}

/// A state from outside (an import) is checked before use: a consistent one passes for every layout, and one
/// whose tables do not fit its configuration, or whose pending decision cannot be learned from, is refused
/// instead of panicking at the next call.
#[test]
fn deserialised_states_are_checked_for_consistency() {
    for layout in [Layout::Shared { dim: DIM }, Layout::Disjoint { dim: DIM, actions: 3 }, Layout::Arms { actions: 3 }]
    {
        let algorithm =
            if matches!(layout, Layout::Arms { .. }) { Algorithm::ConservativeUcb } else { Algorithm::Clucb };
        let mut policy = Policy::new(PolicyConfig::new(algorithm, layout)).unwrap();
        let features = vec![0.1; 3 * DIM];
        let context = vec![0.2; DIM];
        let actions = match layout {
            Layout::Shared { .. } => ActionSet::PerAction { features: &features, num_actions: 3 },
            Layout::Disjoint { .. } => ActionSet::SharedContext { context: &context },
            Layout::Arms { .. } => ActionSet::Arms,
        };
        for _ in 0..5 {
            policy.decide(&Round { actions, baseline: 0, baseline_expected_reward: None }).unwrap();
        }
        let json = serde_json::to_string(&policy).unwrap();
        let back: Policy = serde_json::from_str(&json).unwrap();
        back.check_consistent().unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        let grown = match layout {
            Layout::Shared { .. } => json.replacen("\"dim\":4", "\"dim\":5", 1),
            Layout::Disjoint { .. } => json.replacen("\"actions\":3", "\"actions\":4", 1),
            Layout::Arms { .. } => json.replacen("\"actions\":3", "\"actions\":2", 1),
        };
        assert_ne!(grown, json, "{layout:?}: the test must change the configuration");
        let doctored: Policy = serde_json::from_str(&grown).unwrap();
        let refused = doctored.check_consistent().unwrap_err().to_string();
        assert!(refused.contains("state"), "{layout:?}: {refused}");
    }
}
