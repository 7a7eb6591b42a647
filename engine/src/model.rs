//! Confidence models: what a learner knows about the expected reward of each action, as a point estimate and
//! a confidence set that holds with probability at least 1 - delta.
//!
//! Three models share one interface: a shared linear model (one ellipsoid), a disjoint linear model (one
//! ellipsoid per action, the product set computed blockwise) and K independent arms (one interval per arm).
//! Besides per-action means and optimistic indices, each gives the lower confidence bound of
//! <theta, h + x_a - c x_b> for the safety ledger's history vector h, in O(d) or O(1) per candidate.

use nalgebra::{DMatrix, DMatrixView, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::MAX_ACTIONS;
use crate::error::all_finite;
use crate::linalg::{axpy, dot, dots_against, gemv, means_and_quads};
use crate::ridge::{HISTORY_VECTORS, RadiusParams, RidgeState};
use crate::{ActionSet, Algorithm, EngineError, Layout, PolicyConfig};

/// A model plus the per-round values it computed in `prepare` (not serialised: recomputed every round).
// One model per policy: the size difference between variants costs nothing worth a pointer chase.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Model {
    Shared(SharedLinear),
    Disjoint(DisjointLinear),
    Arms(Arms),
}

/// Per-round values common to all models, indexed by action.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoundValues {
    /// Point estimate of each action's expected reward.
    pub means: Vec<f64>,
    /// The optimistic index used for ranking (UCB), +inf for never-tried arms.
    pub index: Vec<f64>,
    /// Safety ledger support: combined history terms, filled by `prepare_history`.
    history_mean: f64,
    history_quad: f64,
    /// x_a . V^-1 h for each action (linear models).
    cross: Vec<f64>,
    /// x_a . V^-1 x_a for each action (linear models).
    quad: Vec<f64>,
    /// x_a . V^-1 x_b for the round's baseline b (shared model, unknown baseline rewards).
    coupling: Vec<f64>,
}

impl RoundValues {
    fn reset(&mut self, k: usize) {
        self.means.clear();
        self.means.resize(k, 0.0);
        self.index.clear();
        self.index.resize(k, 0.0);
        self.cross.clear();
        self.cross.resize(k, 0.0);
        self.quad.clear();
        self.quad.resize(k, 0.0);
    }
}

/// How wide the optimistic index is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Radius {
    pub confidence: RadiusParams,
    /// Some(c): a fixed scale instead of beta_t, with no guarantee.
    pub fixed_scale: Option<f64>,
    pub mean_range: [f64; 2],
    pub reward_width: f64,
}

impl Model {
    /// Whether the model's tables have the sizes `layout` implies and finite contents (a deserialised state).
    pub(crate) fn fits(&self, layout: &crate::Layout) -> bool {
        use crate::Layout;
        match (self, layout) {
            (Model::Shared(m), Layout::Shared { dim }) => m.ridge.is_consistent(*dim),
            (Model::Disjoint(m), Layout::Disjoint { dim, actions }) => {
                m.blocks.len() == *actions && m.blocks.iter().all(|block| block.is_consistent(*dim))
            }
            (Model::Arms(m), Layout::Arms { actions }) => {
                m.pulls.len() == *actions
                    && m.sums.len() == *actions
                    && m.sums.iter().all(|v| v.is_finite())
                    && m.history.iter().all(|h| h.len() == *actions && h.iter().all(|v| v.is_finite()))
            }
            _ => false,
        }
    }

    pub(crate) fn new(config: &PolicyConfig) -> Self {
        let radius = Radius {
            confidence: RadiusParams {
                noise_scale: config.noise_scale,
                theta_norm_bound: config.theta_norm_bound,
                feature_norm_bound: config.feature_norm_bound,
                delta: config.delta,
                form: config.radius_form,
            },
            fixed_scale: config.exploration_scale,
            mean_range: config.mean_range(),
            reward_width: config.reward_range[1] - config.reward_range[0],
        };
        match config.layout {
            Layout::Shared { dim } => Model::Shared(SharedLinear {
                ridge: RidgeState::new(dim, config.lambda),
                radius,
                refactor_every: config.refactor_every,
                beta: 0.0,
                scratch: LinearScratch::default(),
            }),
            Layout::Disjoint { dim, actions } => Model::Disjoint(DisjointLinear {
                blocks: (0..actions).map(|_| RidgeState::new(dim, config.lambda)).collect(),
                radius: Radius {
                    confidence: RadiusParams { delta: config.delta / actions as f64, ..radius.confidence },
                    ..radius
                },
                refactor_every: config.refactor_every,
                scratch: DisjointScratch::default(),
            }),
            Layout::Arms { actions } => Model::Arms(Arms {
                pulls: vec![0; actions],
                sums: vec![0.0; actions],
                history: std::array::from_fn(|_| vec![0.0; actions]),
                radius,
                index_rule: if config.algorithm == Algorithm::Ucb1 { ArmIndex::Ucb1 } else { ArmIndex::Anytime },
                scratch: ArmScratch::default(),
            }),
        }
    }

    /// Validates the round's actions against the model and returns how many there are.
    pub(crate) fn check(&self, actions: &ActionSet<'_>) -> Result<usize, EngineError> {
        let mismatch = |expected| EngineError::LayoutMismatch { expected, got: actions.kind_name() };
        match (self, actions) {
            (Model::Shared(m), ActionSet::PerAction { features, num_actions }) => {
                let (k, d) = (*num_actions, m.ridge.dim());
                if k == 0 {
                    return Err(EngineError::EmptyActionSet);
                }
                if k > MAX_ACTIONS {
                    return Err(EngineError::OutOfRange {
                        what: "number of actions",
                        value: k as f64,
                        min: 1.0,
                        max: MAX_ACTIONS as f64,
                    });
                }
                if features.len() != k * d {
                    return Err(EngineError::DimensionMismatch {
                        what: "features (num_actions x dim)",
                        expected: k * d,
                        got: features.len(),
                    });
                }
                all_finite("feature", features)?;
                Ok(k)
            }
            (Model::Disjoint(m), ActionSet::SharedContext { context }) => {
                let d = m.blocks[0].dim();
                if context.len() != d {
                    return Err(EngineError::DimensionMismatch { what: "context", expected: d, got: context.len() });
                }
                all_finite("context", context)?;
                Ok(m.blocks.len())
            }
            (Model::Arms(m), ActionSet::Arms) => Ok(m.pulls.len()),
            (Model::Shared(_), _) => Err(mismatch("shared")),
            (Model::Disjoint(_), _) => Err(mismatch("disjoint")),
            (Model::Arms(_), _) => Err(mismatch("arms")),
        }
    }

    /// Computes means and optimistic indices of all `k` actions. The round must have passed `check`.
    pub(crate) fn prepare(&mut self, actions: &ActionSet<'_>, k: usize, out: &mut RoundValues) {
        out.reset(k);
        match self {
            Model::Shared(m) => m.prepare(features_of(actions), k, out),
            Model::Disjoint(m) => m.prepare(context_of(actions), out),
            Model::Arms(m) => m.prepare(out),
        }
    }

    /// Prepares lower bounds on <theta, h + x_a - c x_b> where h = sum_k weights[k] * history_k and b is the
    /// round's baseline.
    pub(crate) fn prepare_history(
        &mut self,
        actions: &ActionSet<'_>,
        weights: [f64; 3],
        baseline: usize,
        out: &mut RoundValues,
    ) {
        match self {
            Model::Shared(m) => m.prepare_history(features_of(actions), weights, baseline, out),
            Model::Disjoint(m) => m.prepare_history(context_of(actions), weights, out),
            Model::Arms(m) => m.prepare_history(weights, out),
        }
    }

    /// Lower confidence bound of <theta, h + x_a - c_b x_b>, after `prepare_history`.
    pub(crate) fn history_lower_bound(
        &self,
        values: &RoundValues,
        action: usize,
        baseline: usize,
        baseline_weight: f64,
    ) -> f64 {
        match self {
            Model::Shared(m) => m.history_lower_bound(values, action, baseline, baseline_weight),
            Model::Disjoint(m) => m.history_lower_bound(values, action, baseline, baseline_weight),
            Model::Arms(m) => m.history_lower_bound(action, baseline, baseline_weight),
        }
    }

    /// Adds `weight * x_a` of the prepared round to history vector `k`.
    pub(crate) fn record_history(&mut self, actions: &ActionSet<'_>, k: usize, action: usize, weight: f64) {
        match self {
            Model::Shared(m) => {
                let d = m.ridge.dim();
                let x = &features_of(actions)[action * d..(action + 1) * d];
                let u = &m.scratch.u.as_slice()[action * d..(action + 1) * d];
                m.ridge.add_history(k, x, u, weight);
            }
            Model::Disjoint(m) => {
                let d = m.blocks[0].dim();
                let u = &m.scratch.u.as_slice()[action * d..(action + 1) * d];
                m.blocks[action].add_history(k, context_of(actions), u, weight);
            }
            Model::Arms(m) => m.history[k][action] += weight,
        }
    }

    /// Copies what learning from this decision's reward will need (its feature vector) into `out`.
    pub(crate) fn stash(&self, actions: &ActionSet<'_>, action: usize, out: &mut Vec<f64>) {
        out.clear();
        match self {
            Model::Shared(m) => {
                let d = m.ridge.dim();
                out.extend_from_slice(&features_of(actions)[action * d..(action + 1) * d]);
            }
            Model::Disjoint(_) => out.extend_from_slice(context_of(actions)),
            Model::Arms(_) => {}
        }
    }

    /// Learns from a reward, given what `stash` kept. Returns the standardised residual
    /// (r - prediction) / (R sqrt(1 + predictive variance / noise)) of the model before the update, when the
    /// model had a prediction (see `crate::drift`).
    pub(crate) fn learn(&mut self, stashed: &[f64], action: usize, reward: f64) -> Option<f64> {
        match self {
            Model::Shared(m) => {
                Some(m.ridge.observe(stashed, reward, m.refactor_every) / m.radius.confidence.noise_scale)
            }
            Model::Disjoint(m) => {
                Some(m.blocks[action].observe(stashed, reward, m.refactor_every) / m.radius.confidence.noise_scale)
            }
            Model::Arms(m) => {
                let n = m.pulls[action];
                let residual = (n > 0).then(|| {
                    let scale = m.radius.confidence.noise_scale * (1.0 + 1.0 / n as f64).sqrt();
                    (reward - m.sums[action] / n as f64) / scale
                });
                m.pulls[action] += 1;
                m.sums[action] += reward;
                residual
            }
        }
    }

    /// Prepares Thompson sampling (a Cholesky factor of V^-1 per ellipsoid). Linear models only.
    /// Factors are cached per ellipsoid and refreshed only when that ellipsoid learned since: in the disjoint
    /// layout a reward changes one block, so a decision re-factors one d x d matrix instead of K.
    pub(crate) fn prepare_sampling(&mut self) {
        match self {
            Model::Shared(m) => {
                let version = m.ridge.observations();
                if m.scratch.chol_version != Some(version) {
                    cholesky_lower(m.ridge.gram_inv(), &mut m.scratch.chol[0]);
                    m.scratch.chol_version = Some(version);
                }
            }
            Model::Disjoint(m) => {
                let s = &mut m.scratch;
                s.chol.resize_with(m.blocks.len(), || DMatrix::zeros(0, 0));
                s.chol_version.resize(m.blocks.len(), None);
                for ((block, chol), cached) in m.blocks.iter().zip(s.chol.iter_mut()).zip(s.chol_version.iter_mut()) {
                    if *cached != Some(block.observations()) {
                        cholesky_lower(block.gram_inv(), chol);
                        *cached = Some(block.observations());
                    }
                }
            }
            Model::Arms(_) => {}
        }
    }

    /// Draws theta~ ~ N(theta_hat, v^2 V^-1) and writes <theta~, x_a> for every action into `scores`.
    pub(crate) fn sample_scores<R: Rng + ?Sized>(
        &mut self,
        actions: &ActionSet<'_>,
        scale: f64,
        rng: &mut R,
        scores: &mut [f64],
    ) {
        match self {
            Model::Shared(m) => {
                let s = &mut m.scratch;
                sample_gaussian(m.ridge.theta(), &s.chol[0], scale, rng, &mut s.normal, &mut s.sample);
                let d = m.ridge.dim();
                for (score, xa) in scores.iter_mut().zip(features_of(actions).chunks_exact(d)) {
                    *score = dot(xa, s.sample.as_slice());
                }
            }
            Model::Disjoint(m) => {
                let s = &mut m.scratch;
                let context = context_of(actions);
                for (a, score) in scores.iter_mut().enumerate() {
                    sample_gaussian(m.blocks[a].theta(), &s.chol[a], scale, rng, &mut s.normal, &mut s.sample);
                    *score = dot(context, s.sample.as_slice());
                }
            }
            Model::Arms(_) => unreachable!("validated: Thompson sampling needs a linear layout"),
        }
    }

    /// The point estimate of every action's expected reward, <x_a, theta_hat> (arm means for arms). The
    /// round must have passed `check`. Allocates: for evaluation and reports, not the decision path.
    pub(crate) fn mean_estimates(&self, actions: &ActionSet<'_>, k: usize) -> Vec<f64> {
        match self {
            Model::Shared(m) => {
                let theta = m.ridge.theta().as_slice();
                features_of(actions).chunks_exact(theta.len()).take(k).map(|x| dot(x, theta)).collect()
            }
            Model::Disjoint(m) => {
                let context = context_of(actions);
                m.blocks.iter().map(|b| dot(context, b.theta().as_slice())).collect()
            }
            Model::Arms(m) => (0..k).map(|a| m.mean(a)).collect(),
        }
    }

    /// The current parameter estimate (per-action blocks concatenated; arm means for arms).
    pub(crate) fn theta_hat(&self) -> Vec<f64> {
        match self {
            Model::Shared(m) => m.ridge.theta().as_slice().to_vec(),
            Model::Disjoint(m) => m.blocks.iter().flat_map(|b| b.theta().iter().copied()).collect(),
            Model::Arms(m) => (0..m.pulls.len()).map(|a| m.mean(a)).collect(),
        }
    }

    /// The point estimate of <theta, sum of history vectors `ks`>: e.g. the expected reward summed over the
    /// rounds whose features those history vectors hold.
    pub(crate) fn estimate_history(&self, ks: &[usize]) -> f64 {
        match self {
            Model::Shared(m) => {
                ks.iter().map(|&k| dot(m.ridge.history(k).as_slice(), m.ridge.theta().as_slice())).sum()
            }
            Model::Disjoint(m) => m
                .blocks
                .iter()
                .map(|b| ks.iter().map(|&k| dot(b.history(k).as_slice(), b.theta().as_slice())).sum::<f64>())
                .sum(),
            Model::Arms(m) => {
                ks.iter().map(|&k| (0..m.pulls.len()).map(|a| m.history[k][a] * m.mean(a)).sum::<f64>()).sum()
            }
        }
    }

    /// Number of rewards learned from.
    pub(crate) fn observations(&self) -> u64 {
        match self {
            Model::Shared(m) => m.ridge.observations(),
            Model::Disjoint(m) => m.blocks.iter().map(RidgeState::observations).sum(),
            Model::Arms(m) => m.pulls.iter().sum(),
        }
    }
}

fn features_of<'a>(actions: &ActionSet<'a>) -> &'a [f64] {
    match actions {
        ActionSet::PerAction { features, .. } => features,
        _ => unreachable!("checked: the shared model receives per-action features"),
    }
}

fn context_of<'a>(actions: &ActionSet<'a>) -> &'a [f64] {
    match actions {
        ActionSet::SharedContext { context } => context,
        _ => unreachable!("checked: the disjoint model receives a shared context"),
    }
}

/// One ellipsoid over a shared parameter (Kazerouni et al. 2017's setting).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SharedLinear {
    ridge: RidgeState,
    radius: Radius,
    refactor_every: u32,
    /// beta_t of the current round.
    beta: f64,
    #[serde(skip)]
    scratch: LinearScratch,
}

#[derive(Debug, Clone, Default)]
struct LinearScratch {
    /// U = V^-1 X, one column per action.
    u: DMatrix<f64>,
    /// g = V^-1 h for the combined history vector h.
    image: DVector<f64>,
    combined: DVector<f64>,
    chol: [DMatrix<f64>; 1],
    /// Observation count of the model when `chol` was computed.
    chol_version: Option<u64>,
    normal: DVector<f64>,
    sample: DVector<f64>,
}

impl SharedLinear {
    fn prepare(&mut self, features: &[f64], k: usize, out: &mut RoundValues) {
        let d = self.ridge.dim();
        let x = DMatrixView::from_slice(features, d, k);
        let s = &mut self.scratch;
        if s.u.shape() != (d, k) {
            s.u = DMatrix::zeros(d, k);
        }
        s.u.gemm(1.0, self.ridge.gram_inv(), &x, 0.0);
        self.beta = self.ridge.radius(&self.radius.confidence);
        let width_scale = self.radius.fixed_scale.unwrap_or(self.beta);
        means_and_quads(features, s.u.as_slice(), self.ridge.theta().as_slice(), &mut out.means, &mut out.quad);
        for a in 0..k {
            out.quad[a] = out.quad[a].max(0.0);
            out.index[a] = out.means[a] + width_scale * out.quad[a].sqrt();
        }
    }

    fn prepare_history(&mut self, features: &[f64], weights: [f64; 3], baseline: usize, out: &mut RoundValues) {
        let d = self.ridge.dim();
        let s = &mut self.scratch;
        if s.image.len() != d {
            s.image = DVector::zeros(d);
            s.combined = DVector::zeros(d);
        }
        s.image.fill(0.0);
        s.combined.fill(0.0);
        for (k, &w) in weights.iter().enumerate().take(HISTORY_VECTORS) {
            if w != 0.0 {
                axpy(w, self.ridge.history(k).as_slice(), s.combined.as_mut_slice());
                axpy(w, self.ridge.history_image(k).as_slice(), s.image.as_mut_slice());
            }
        }
        out.history_mean = dot(s.combined.as_slice(), self.ridge.theta().as_slice());
        out.history_quad = dot(s.combined.as_slice(), s.image.as_slice());
        let ub = &s.u.as_slice()[baseline * d..(baseline + 1) * d];
        out.coupling.resize(out.means.len(), 0.0);
        dots_against(features, s.image.as_slice(), ub, &mut out.cross, &mut out.coupling);
    }

    fn history_lower_bound(&self, v: &RoundValues, a: usize, b: usize, c: f64) -> f64 {
        let (mean, quad) = if c == 0.0 {
            (v.history_mean + v.means[a], v.history_quad + 2.0 * v.cross[a] + v.quad[a])
        } else {
            (
                v.history_mean + v.means[a] - c * v.means[b],
                v.history_quad + 2.0 * (v.cross[a] - c * v.cross[b]) + v.quad[a] - 2.0 * c * v.coupling[a]
                    + c * c * v.quad[b],
            )
        };
        mean - self.beta * quad.max(0.0).sqrt()
    }
}

/// One ellipsoid per action over a shared context (Li et al. 2010), each at confidence delta / K so that
/// their product holds with probability 1 - delta. Never materialises a K*d vector or matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DisjointLinear {
    blocks: Vec<RidgeState>,
    radius: Radius,
    refactor_every: u32,
    #[serde(skip)]
    scratch: DisjointScratch,
}

#[derive(Debug, Clone, Default)]
struct DisjointScratch {
    /// Column a = V_a^-1 c.
    u: DMatrix<f64>,
    quad: Vec<f64>,
    beta: Vec<f64>,
    /// Per block: h_a . theta_a, h_a . V_a^-1 h_a, c . V_a^-1 h_a, and the block's lower bound term.
    block_mean: Vec<f64>,
    block_quad: Vec<f64>,
    block_term: Vec<f64>,
    total: f64,
    chol: Vec<DMatrix<f64>>,
    chol_version: Vec<Option<u64>>,
    normal: DVector<f64>,
    sample: DVector<f64>,
}

impl DisjointLinear {
    fn prepare(&mut self, context: &[f64], out: &mut RoundValues) {
        let (k, d) = (self.blocks.len(), self.blocks[0].dim());
        let s = &mut self.scratch;
        if s.u.shape() != (d, k) {
            s.u = DMatrix::zeros(d, k);
        }
        s.quad.resize(k, 0.0);
        s.beta.resize(k, 0.0);
        for (a, (block, ua)) in self.blocks.iter().zip(s.u.as_mut_slice().chunks_exact_mut(d)).enumerate() {
            gemv(block.gram_inv().as_slice(), context, ua);
            let quad = dot(context, ua).max(0.0);
            let beta = block.radius(&self.radius.confidence);
            let mean = dot(context, block.theta().as_slice());
            s.quad[a] = quad;
            s.beta[a] = beta;
            out.means[a] = mean;
            out.index[a] = mean + self.radius.fixed_scale.unwrap_or(beta) * quad.sqrt();
        }
    }

    fn prepare_history(&mut self, context: &[f64], weights: [f64; 3], out: &mut RoundValues) {
        let k = self.blocks.len();
        let s = &mut self.scratch;
        s.block_mean.resize(k, 0.0);
        s.block_quad.resize(k, 0.0);
        s.block_term.resize(k, 0.0);
        s.total = 0.0;
        for (a, block) in self.blocks.iter().enumerate() {
            let (mut mean, mut quad, mut cross) = (0.0, 0.0, 0.0);
            // <sum_i w_i h_i, theta>, and the quadratic form expanded pairwise over the weighted histories.
            for (i, &wi) in weights.iter().enumerate() {
                if wi == 0.0 {
                    continue;
                }
                let history = block.history(i).as_slice();
                mean += wi * dot(history, block.theta().as_slice());
                cross += wi * dot(context, block.history_image(i).as_slice());
                for (j, &wj) in weights.iter().enumerate() {
                    if wj != 0.0 {
                        quad += wi * wj * dot(history, block.history_image(j).as_slice());
                    }
                }
            }
            s.block_mean[a] = mean;
            s.block_quad[a] = quad;
            out.cross[a] = cross;
            let term = mean - s.beta[a] * quad.max(0.0).sqrt();
            s.block_term[a] = term;
            s.total += term;
        }
        out.history_mean = s.total;
    }

    /// The block's lower-bound term when `coef * c` is added to its history vector.
    fn block_term(&self, v: &RoundValues, block: usize, coef: f64) -> f64 {
        let s = &self.scratch;
        let mean = s.block_mean[block] + coef * v.means[block];
        let quad = s.block_quad[block] + 2.0 * coef * v.cross[block] + coef * coef * s.quad[block];
        mean - s.beta[block] * quad.max(0.0).sqrt()
    }

    fn history_lower_bound(&self, v: &RoundValues, a: usize, b: usize, c: f64) -> f64 {
        let s = &self.scratch;
        if a == b {
            return s.total - s.block_term[a] + self.block_term(v, a, 1.0 - c);
        }
        let mut total = s.total - s.block_term[a] + self.block_term(v, a, 1.0);
        if c != 0.0 {
            total += self.block_term(v, b, -c) - s.block_term[b];
        }
        total
    }
}

/// K independent arms with anytime confidence intervals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Arms {
    pulls: Vec<u64>,
    sums: Vec<f64>,
    /// History vectors in arm coordinates: how often each arm entered each sum.
    history: [Vec<f64>; HISTORY_VECTORS],
    radius: Radius,
    index_rule: ArmIndex,
    #[serde(skip)]
    scratch: ArmScratch,
}

/// Which optimistic index ranks the arms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum ArmIndex {
    /// mean + scale * sqrt(2 ln t / T_i) (Auer et al. 2002); no 1-delta guarantee.
    Ucb1,
    /// mean + R sqrt(2 psi(T_i) / T_i), the anytime bound of Wu et al. (2016).
    Anytime,
}

#[derive(Debug, Clone, Default)]
struct ArmScratch {
    lower: Vec<f64>,
    upper: Vec<f64>,
    combined: Vec<f64>,
    base: f64,
}

impl Arms {
    fn mean(&self, a: usize) -> f64 {
        if self.pulls[a] == 0 { 0.0 } else { self.sums[a] / self.pulls[a] as f64 }
    }

    fn prepare(&mut self, out: &mut RoundValues) {
        let k = self.pulls.len();
        let total: u64 = self.pulls.iter().sum();
        let [lo, hi] = self.radius.mean_range;
        let s = &mut self.scratch;
        s.lower.resize(k, 0.0);
        s.upper.resize(k, 0.0);
        for a in 0..k {
            let n = self.pulls[a];
            if n == 0 {
                out.means[a] = 0.0;
                out.index[a] = f64::INFINITY;
                s.lower[a] = lo;
                s.upper[a] = hi;
                continue;
            }
            let mean = self.sums[a] / n as f64;
            let width = match self.index_rule {
                ArmIndex::Ucb1 => {
                    let scale = self.radius.fixed_scale.unwrap_or(self.radius.reward_width);
                    scale * (2.0 * (total as f64).ln() / n as f64).sqrt()
                }
                ArmIndex::Anytime => {
                    anytime_width(k, self.radius.confidence.delta, self.radius.confidence.noise_scale, n)
                }
            };
            out.means[a] = mean;
            out.index[a] = mean + width;
            // UCB1's width is no confidence bound: its budget bounds fall back to the declared range.
            let bound = if let ArmIndex::Anytime = self.index_rule { width } else { f64::INFINITY };
            s.lower[a] = (mean - bound).clamp(lo, hi);
            s.upper[a] = (mean + bound).clamp(lo, hi);
        }
    }

    /// min over the box prod_i [L_i, U_i] of <theta, v> is sum_i (v_i L_i if v_i >= 0 else v_i U_i).
    fn box_term(&self, arm: usize, coef: f64) -> f64 {
        if coef >= 0.0 { coef * self.scratch.lower[arm] } else { coef * self.scratch.upper[arm] }
    }

    fn prepare_history(&mut self, weights: [f64; 3], out: &mut RoundValues) {
        let k = self.pulls.len();
        self.scratch.combined.clear();
        self.scratch
            .combined
            .extend((0..k).map(|a| (0..HISTORY_VECTORS).map(|i| weights[i] * self.history[i][a]).sum::<f64>()));
        self.scratch.base = (0..k).map(|a| self.box_term(a, self.scratch.combined[a])).sum();
        out.history_mean = self.scratch.base;
    }

    fn history_lower_bound(&self, a: usize, b: usize, c: f64) -> f64 {
        let h = &self.scratch.combined;
        if a == b {
            return self.scratch.base - self.box_term(a, h[a]) + self.box_term(a, h[a] + 1.0 - c);
        }
        self.scratch.base - self.box_term(a, h[a]) - self.box_term(b, h[b])
            + self.box_term(a, h[a] + 1.0)
            + self.box_term(b, h[b] - c)
    }
}

/// Delta_i = R sqrt(2 psi(T_i) / T_i), with x = ln(K/delta), y = ln(max(3, ln(K/delta))) + ln(2 e^2 K/delta) and
/// psi(T) = x (1 + ln x) / ((x - 1) ln x) ln ln(T + 1) + y: the anytime bound of Wu et al. (2016), as the
/// authors' code computes it, scaled by the noise scale R.
pub fn anytime_width(arms: usize, delta: f64, noise_scale: f64, pulls: u64) -> f64 {
    let ratio = arms as f64 / delta;
    // x must exceed 1 for the coefficient to be finite; clamping only widens the interval (K/delta < 3).
    let x = ratio.ln().max(1.1);
    let y = ratio.ln().max(3.0).ln() + (2.0 * std::f64::consts::E.powi(2) * ratio).ln();
    let n = pulls as f64;
    let psi = x * (1.0 + x.ln()) / ((x - 1.0) * x.ln()) * (n + 1.0).ln().ln() + y;
    noise_scale * (2.0 * psi.max(0.0) / n).sqrt()
}

/// Lower Cholesky factor of a symmetric positive semi-definite matrix, reading only its lower triangle and
/// writing into a reused buffer. Pivots that rounding drove to <= 0 give a zero column.
fn cholesky_lower(a: &DMatrix<f64>, l: &mut DMatrix<f64>) {
    let n = a.nrows();
    if l.shape() != (n, n) {
        *l = DMatrix::zeros(n, n);
    }
    l.fill(0.0);
    for j in 0..n {
        let mut diag = a[(j, j)];
        for p in 0..j {
            diag -= l[(j, p)] * l[(j, p)];
        }
        if diag <= 0.0 {
            continue;
        }
        let pivot = diag.sqrt();
        l[(j, j)] = pivot;
        for i in j + 1..n {
            let mut v = a[(i, j)];
            for p in 0..j {
                v -= l[(i, p)] * l[(j, p)];
            }
            l[(i, j)] = v / pivot;
        }
    }
}

/// sample = theta + scale * L z with z standard normal.
fn sample_gaussian<R: Rng + ?Sized>(
    theta: &DVector<f64>,
    chol: &DMatrix<f64>,
    scale: f64,
    rng: &mut R,
    normal: &mut DVector<f64>,
    sample: &mut DVector<f64>,
) {
    let d = theta.len();
    if normal.len() != d {
        *normal = DVector::zeros(d);
        *sample = DVector::zeros(d);
    }
    for z in normal.iter_mut() {
        *z = StandardNormal.sample(rng);
    }
    gemv(chol.as_slice(), normal.as_slice(), sample.as_mut_slice());
    for (x, t) in sample.iter_mut().zip(theta.iter()) {
        *x = t + scale * *x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_reproduces_the_matrix() {
        let a = DMatrix::from_row_slice(3, 3, &[4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0]);
        let mut l = DMatrix::zeros(0, 0);
        cholesky_lower(&a, &mut l);
        assert!((&l * l.transpose() - a).amax() < 1e-12);
    }
}
