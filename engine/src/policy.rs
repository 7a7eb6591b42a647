//! A policy: a base learner over a confidence model, optionally wrapped in the safety layer, plus the book of
//! decisions whose rewards have not arrived yet.

use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::book::PendingBook;
use crate::drift::{DriftAlarm, DriftGuard};
use crate::error::finite;
use crate::model::{Model, RoundValues};
use crate::safety::{BudgetLedger, SafetyRule, select};
use crate::{
    ActionSet, Algorithm, BaselineReward, BudgetCheck, EngineError, Layout, PendingResolution, PolicyConfig, Round,
};

/// Identifies a decision within its policy: 0, 1, 2, ... in decision order.
pub type DecisionId = u64;

/// Why the played action differs from what the learner proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// The safety rule did not intervene (the proposal was played, or CLUCB2 played another safe action).
    None,
    /// The safety rule played the baseline because the proposal could break the constraint.
    Budget,
    /// The baseline was forced: by the caller (`Policy::decide_baseline`, the kill switch) or by a drift
    /// alarm (`Policy::drift_alarm`).
    Forced,
}

/// Whether a propensity is exact or a Monte-Carlo estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropensityKind {
    /// Computed in closed form.
    Exact,
    /// Estimated by sampling (Thompson sampling has no closed form).
    Estimated,
}

/// The probability with which the policy played the chosen action, for off-policy evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Propensity {
    /// P(action | context, state).
    pub probability: f64,
    /// Exact or estimated.
    pub kind: PropensityKind,
}

/// One decision and the values that justified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The decision's id, to report its reward with.
    pub id: DecisionId,
    /// The action to play.
    pub action: usize,
    /// The round's baseline action.
    pub baseline: usize,
    /// The base learner's choice before the safety rule.
    pub proposed_action: usize,
    /// Whether and why the baseline was played instead of the proposal.
    pub fallback: Fallback,
    /// The probability of playing `action`.
    pub propensity: Propensity,
    /// The learner's index (UCB, or sampled value for Thompson sampling) of the proposed action.
    pub upper_bound: f64,
    /// The budget check that decided (conservative policies): of the played action when the learner played,
    /// of the rejected proposal when the baseline was played; `None` when the proposal was the baseline.
    pub budget: Option<BudgetCheck>,
}

impl Decision {
    /// Whether the played action is the round's baseline.
    pub fn played_baseline(&self) -> bool {
        self.action == self.baseline
    }
}

/// Counters a service reports and a test asserts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    /// Decisions made.
    pub decisions: u64,
    /// Rewards applied (received or defaulted on timeout).
    pub rewards: u64,
    /// Decisions still waiting for their reward.
    pub pending: u64,
    /// Rounds where a non-baseline action was played.
    pub learner_plays: u64,
    /// Rounds where the baseline was played, for whatever reason.
    pub baseline_plays: u64,
    /// Baseline plays forced by the caller.
    pub forced_plays: u64,
    /// Baseline plays where the safety rule overrode the learner.
    pub budget_fallbacks: u64,
    /// Timed-out decisions dropped from learning.
    pub dropped: u64,
    /// Timed-out decisions learned from with the default reward.
    pub defaulted: u64,
    /// Sum of rewards applied.
    pub reward_sum: f64,
    /// Budget margin of the latest conservative check.
    pub last_margin: Option<f64>,
    /// Number of model updates: changes whenever the model learns.
    pub model_version: u64,
    /// The drift guard's CUSUM statistic (0 without a guard).
    pub drift_statistic: f64,
    /// The drift guard's alarm, while raised.
    pub drift_alarm: Option<DriftAlarm>,
}

/// How the base learner ranks actions and proposes one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Proposer {
    /// Highest optimistic index (LinUCB/OFUL, UCB1, and every conservative algorithm).
    Optimistic,
    /// Highest sampled value (LinTS).
    Thompson { scale: f64, samples: u32 },
    /// Highest mean, or with probability epsilon a uniform action.
    EpsilonGreedy { epsilon: f64 },
}

/// A decision waiting for its reward, with what learning from it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingDecision {
    action: usize,
    /// Shared, so that cloning the policy (the service snapshots a copy taken under the experiment's lock)
    /// copies a pointer per pending decision, not its features: 150,000 of them took 28-45 ms to clone.
    features: Arc<Vec<f64>>,
}

/// Conservative bandit policy: see the crate documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    config: PolicyConfig,
    model: Model,
    proposer: Proposer,
    ledger: Option<BudgetLedger>,
    drift: Option<DriftGuard>,
    #[serde(with = "sorted_pending")]
    pending: PendingBook<PendingDecision>,
    rng: Xoshiro256PlusPlus,
    /// A separate stream for propensity estimates, so that how many samples are drawn never changes the
    /// decisions themselves.
    propensity_rng: Xoshiro256PlusPlus,
    next_id: DecisionId,
    stats: PolicyStats,
    #[serde(skip)]
    scratch: Scratch,
}

/// Buffers reused across rounds so that deciding and learning allocate nothing in steady state.
#[derive(Debug, Clone, Default)]
struct Scratch {
    values: RoundValues,
    scores: Vec<f64>,
    passes: Vec<bool>,
    checks: Vec<Option<BudgetCheck>>,
    spare_buffers: Vec<Arc<Vec<f64>>>,
}

impl Policy {
    /// Validates the configuration and builds a fresh policy.
    pub fn new(config: PolicyConfig) -> Result<Policy, EngineError> {
        config.validate()?;
        let proposer = match config.algorithm {
            Algorithm::Lints => Proposer::Thompson {
                scale: config.posterior_scale.unwrap_or(config.noise_scale),
                samples: config.propensity_samples,
            },
            Algorithm::EpsilonGreedy => Proposer::EpsilonGreedy { epsilon: config.epsilon },
            _ => Proposer::Optimistic,
        };
        let rule = match config.algorithm {
            Algorithm::Clucb | Algorithm::ConservativeUcb => Some(SafetyRule::BaselineOnFailure),
            Algorithm::Clucb2 => Some(SafetyRule::BestPassing),
            _ => None,
        };
        let ledger = rule.map(|rule| {
            BudgetLedger::new(rule, config.constraint, config.alpha, config.baseline_reward, config.baseline_floor())
        });
        Ok(Policy {
            model: Model::new(&config),
            proposer,
            ledger,
            drift: config.drift_guard.map(DriftGuard::new),
            pending: PendingBook::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            propensity_rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            next_id: 0,
            stats: PolicyStats::default(),
            scratch: Scratch::default(),
            config,
        })
    }

    /// Checks a policy that was deserialised rather than built (an imported state): its configuration, that
    /// the model's tables fit the layout, and that every pending decision can be learned from, so that no
    /// later call can index out of bounds.
    pub fn check_consistent(&self) -> Result<(), EngineError> {
        self.config.validate()?;
        let bad = |reason: String| Err(EngineError::InvalidConfig { field: "state", reason });
        if !self.model.fits(&self.config.layout) {
            return bad(format!("the model's tables do not fit the layout {:?}", self.config.layout));
        }
        let (features, actions) = match self.config.layout {
            Layout::Shared { dim } => (dim, usize::MAX),
            Layout::Disjoint { dim, actions } => (dim, actions),
            Layout::Arms { actions } => (0, actions),
        };
        for (id, pending) in self.pending.iter() {
            if id >= self.next_id
                || pending.action >= actions
                || pending.features.len() != features
                || !pending.features.iter().all(|v| v.is_finite())
            {
                return bad(format!("pending decision {id} does not fit the layout"));
            }
        }
        Ok(())
    }

    /// The validated configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Counters since the policy was created.
    pub fn stats(&self) -> PolicyStats {
        PolicyStats {
            pending: self.pending.len() as u64,
            model_version: self.model.observations(),
            drift_statistic: self.drift.as_ref().map_or(0.0, DriftGuard::statistic),
            drift_alarm: self.drift_alarm(),
            ..self.stats
        }
    }

    /// The current parameter estimate: theta_hat (shared), per-action blocks concatenated (disjoint), or the
    /// arms' empirical means (arms).
    pub fn theta_hat(&self) -> Vec<f64> {
        self.model.theta_hat()
    }

    /// The action the current model believes best on `actions` (highest <x_a, theta_hat>, lowest index on
    /// ties): the deterministic "learner snapshot" policy that off-policy evaluation compares with the
    /// baseline. Changes nothing; bad input is the same typed error `decide` would give.
    pub fn greedy_action(&self, actions: &ActionSet<'_>) -> Result<usize, EngineError> {
        let k = self.model.check(actions)?;
        let means = self.model.mean_estimates(actions, k);
        let mut best = 0;
        for (a, &mean) in means.iter().enumerate() {
            if mean > means[best] {
                best = a;
            }
        }
        Ok(best)
    }

    /// The baseline's cumulative expected reward over every round so far (conservative policies only): the
    /// sum of the values callers gave when baseline rewards are known, the model's estimate otherwise. What
    /// the learner must keep (1 - alpha) of.
    pub fn baseline_estimate(&self) -> Option<f64> {
        self.ledger.as_ref().map(|ledger| ledger.baseline_estimate(&self.model))
    }

    /// The drift guard's alarm, while raised: decisions then play the baseline (`Fallback::Forced`) and
    /// keep teaching the model, until `clear_drift_alarm`.
    pub fn drift_alarm(&self) -> Option<DriftAlarm> {
        self.drift.as_ref().and_then(DriftGuard::alarm)
    }

    /// Clears a drift alarm (the operator's "resume"): the policy explores again with the model it has.
    /// To start from scratch instead, build a new policy.
    pub fn clear_drift_alarm(&mut self) {
        if let Some(guard) = &mut self.drift {
            guard.clear();
        }
    }

    /// Ids of the decisions still waiting for a reward, in increasing order.
    pub fn pending_ids(&self) -> Vec<DecisionId> {
        self.pending.sorted().into_iter().map(|(id, _)| id).collect()
    }

    /// Changes the risk budget. The constraint then holds with the new alpha over the whole history.
    pub fn set_alpha(&mut self, alpha: f64) -> Result<(), EngineError> {
        let mut config = self.config.clone();
        config.alpha = alpha;
        config.validate()?;
        self.config = config;
        if let Some(ledger) = &mut self.ledger {
            ledger.set_alpha(alpha);
        }
        Ok(())
    }

    /// Checks a round and returns (number of actions, baseline's expected reward if known).
    fn check_round(&self, round: &Round<'_>) -> Result<(usize, Option<f64>), EngineError> {
        let k = self.model.check(&round.actions)?;
        if round.baseline >= k {
            return Err(EngineError::BaselineOutOfRange { baseline: round.baseline, num_actions: k });
        }
        let baseline_mean = match self.config.baseline_reward {
            BaselineReward::Unknown => None,
            BaselineReward::Known => {
                let mu = finite(
                    "baseline expected reward",
                    round.baseline_expected_reward.ok_or(EngineError::MissingBaselineReward)?,
                )?;
                let [min, max] = self.config.mean_range();
                if !(min..=max).contains(&mu) {
                    return Err(EngineError::OutOfRange { what: "baseline expected reward", value: mu, min, max });
                }
                Some(mu)
            }
        };
        Ok((k, baseline_mean))
    }

    /// Chooses an action for the round. On error nothing changed.
    pub fn decide(&mut self, round: &Round<'_>) -> Result<Decision, EngineError> {
        if self.drift_alarm().is_some() {
            return self.decide_baseline(round);
        }
        let (k, baseline_mean) = self.check_round(round)?;
        let b = round.baseline;
        let actions = &round.actions;
        let mut s = std::mem::take(&mut self.scratch);
        self.model.prepare(actions, k, &mut s.values);

        // The base learner ranks the actions and proposes one.
        s.scores.clear();
        let mut explored = None;
        match self.proposer {
            Proposer::Optimistic => s.scores.extend_from_slice(&s.values.index),
            Proposer::EpsilonGreedy { epsilon } => {
                s.scores.extend_from_slice(&s.values.means);
                if self.rng.random_bool(epsilon) {
                    explored = Some(self.rng.random_range(0..k));
                }
            }
            Proposer::Thompson { scale, .. } => {
                s.scores.resize(k, 0.0);
                self.model.prepare_sampling();
                self.model.sample_scores(actions, scale, &mut self.rng, &mut s.scores);
            }
        }
        let proposal = explored.unwrap_or_else(|| argmax(&s.scores));

        // The safety layer checks every action against the budget and picks.
        s.passes.clear();
        s.passes.resize(k, true);
        s.checks.clear();
        s.checks.resize(k, None);
        let action = match &self.ledger {
            None => proposal,
            Some(ledger) => {
                self.model.prepare_history(actions, ledger.history_weights(), b, &mut s.values);
                // CLUCB with a deterministic proposer only ever needs the proposal's check; CLUCB2 and
                // stochastic proposers (whose propensity depends on every action's check) need them all.
                let check_all =
                    ledger.rule == SafetyRule::BestPassing || !matches!(self.proposer, Proposer::Optimistic);
                for a in (0..k).filter(|&a| a != b && (check_all || a == proposal)) {
                    let check = ledger.check(&self.model, &s.values, a, b, baseline_mean);
                    s.passes[a] = check.margin >= 0.0;
                    s.checks[a] = Some(check);
                }
                select(ledger.rule, proposal, b, &s.scores, &s.passes)
            }
        };
        let fallback =
            if self.ledger.is_some() && action == b && proposal != b { Fallback::Budget } else { Fallback::None };
        let budget = if action != b { s.checks[action] } else { s.checks[proposal] };
        let propensity = self.propensity(actions, k, b, proposal, action, &mut s);
        let upper_bound = s.scores[proposal];
        self.scratch = s;
        let id = self.book(actions, action, b, baseline_mean);
        if fallback == Fallback::Budget {
            self.stats.budget_fallbacks += 1;
        }
        if let Some(check) = budget {
            self.stats.last_margin = Some(check.margin);
        }
        Ok(Decision { id, action, baseline: b, proposed_action: proposal, fallback, propensity, upper_bound, budget })
    }

    /// Plays the baseline whatever the learner thinks (the kill switch). The decision is booked like any
    /// other: its reward still teaches the model, and it banks budget.
    pub fn decide_baseline(&mut self, round: &Round<'_>) -> Result<Decision, EngineError> {
        let (k, baseline_mean) = self.check_round(round)?;
        let mut s = std::mem::take(&mut self.scratch);
        self.model.prepare(&round.actions, k, &mut s.values);
        let upper_bound = s.values.index[round.baseline];
        self.scratch = s;
        let id = self.book(&round.actions, round.baseline, round.baseline, baseline_mean);
        self.stats.forced_plays += 1;
        Ok(Decision {
            id,
            action: round.baseline,
            baseline: round.baseline,
            proposed_action: round.baseline,
            fallback: Fallback::Forced,
            propensity: Propensity { probability: 1.0, kind: PropensityKind::Exact },
            upper_bound,
            budget: None,
        })
    }

    /// Records a decision in the ledger and the pending book; returns its id.
    fn book(
        &mut self,
        actions: &crate::ActionSet<'_>,
        action: usize,
        b: usize,
        baseline_mean: Option<f64>,
    ) -> DecisionId {
        if let Some(ledger) = &mut self.ledger {
            ledger.record(&mut self.model, actions, action, b, baseline_mean);
        }
        // A buffer no copy of the policy shares any more, reused (a fresh one only after a snapshot took some).
        let mut features = self.scratch.spare_buffers.pop().unwrap_or_default();
        self.model.stash(actions, action, Arc::make_mut(&mut features));
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, PendingDecision { action, features });
        self.stats.decisions += 1;
        if action == b {
            self.stats.baseline_plays += 1;
        } else {
            self.stats.learner_plays += 1;
        }
        id
    }

    /// P(action) under the whole policy (learner and safety rule) given this round's state.
    fn propensity(
        &mut self,
        actions: &crate::ActionSet<'_>,
        k: usize,
        b: usize,
        proposal: usize,
        action: usize,
        s: &mut Scratch,
    ) -> Propensity {
        let rule = self.ledger.as_ref().map(|l| l.rule);
        let after_safety = |proposal: usize, scores: &[f64]| match rule {
            None => proposal,
            Some(rule) => select(rule, proposal, b, scores, &s.passes),
        };
        match self.proposer {
            Proposer::Optimistic => Propensity { probability: 1.0, kind: PropensityKind::Exact },
            Proposer::EpsilonGreedy { epsilon } => {
                let greedy = argmax(&s.scores);
                let mut probability = if after_safety(greedy, &s.scores) == action { 1.0 - epsilon } else { 0.0 };
                let hits = (0..k).filter(|&j| after_safety(j, &s.scores) == action).count();
                probability += epsilon * hits as f64 / k as f64;
                Propensity { probability, kind: PropensityKind::Exact }
            }
            Proposer::Thompson { scale, samples } => {
                // The decision itself is one draw from the distribution being estimated: count it.
                let _ = proposal;
                let mut hits = 1u64;
                let mut sampled = std::mem::take(&mut s.scores);
                for _ in 0..samples {
                    self.model.sample_scores(actions, scale, &mut self.propensity_rng, &mut sampled);
                    if after_safety(argmax(&sampled), &sampled) == action {
                        hits += 1;
                    }
                }
                s.scores = sampled;
                Propensity { probability: hits as f64 / (samples as f64 + 1.0), kind: PropensityKind::Estimated }
            }
        }
    }

    fn check_reward(&self, id: DecisionId, reward: f64) -> Result<(), EngineError> {
        finite("reward", reward)?;
        let [min, max] = self.config.reward_range;
        if !(min..=max).contains(&reward) {
            return Err(EngineError::OutOfRange { what: "reward", value: reward, min, max });
        }
        self.check_pending(id)
    }

    fn check_pending(&self, id: DecisionId) -> Result<(), EngineError> {
        if id >= self.next_id {
            Err(EngineError::UnknownDecision(id))
        } else if !self.pending.contains(id) {
            Err(EngineError::AlreadyResolved(id))
        } else {
            Ok(())
        }
    }

    /// Learns from the reward of decision `id`. A reward is applied at most once; on error nothing changed.
    pub fn observe_reward(&mut self, id: DecisionId, reward: f64) -> Result<(), EngineError> {
        self.check_reward(id, reward)?;
        self.learn(id, Some(reward));
        Ok(())
    }

    /// Resolves a decision whose reward timed out, as `config.on_timeout` says: learn from the default reward,
    /// or drop it from learning (it stays in the budget ledger either way).
    pub fn expire(&mut self, id: DecisionId) -> Result<(), EngineError> {
        self.check_pending(id)?;
        match self.config.on_timeout {
            PendingResolution::Drop => {
                self.learn(id, None);
                self.stats.dropped += 1;
            }
            PendingResolution::DefaultReward { reward } => {
                self.learn(id, Some(reward));
                self.stats.defaulted += 1;
            }
        }
        Ok(())
    }

    fn learn(&mut self, id: DecisionId, reward: Option<f64>) {
        let Some(decision) = self.pending.remove(id) else { return };
        if let Some(reward) = reward {
            let residual = self.model.learn(&decision.features, decision.action, reward);
            self.stats.rewards += 1;
            self.stats.reward_sum += reward;
            if let (Some(guard), Some(z)) = (&mut self.drift, residual) {
                guard.observe(z, self.stats.rewards);
            }
        }
        // Its buffer is reused unless a copy of the policy still shares it.
        if Arc::strong_count(&decision.features) == 1 {
            self.scratch.spare_buffers.push(decision.features);
        }
    }
}

/// Index of the largest value, the lowest index on ties.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Pending decisions serialise in id order, so equal states give equal bytes.
mod sorted_pending {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(book: &PendingBook<PendingDecision>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(book.sorted())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PendingBook<PendingDecision>, D::Error> {
        let entries: Vec<(DecisionId, PendingDecision)> = Vec::deserialize(deserializer)?;
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActionSet, Layout};

    /// The service snapshots a clone of the policy while the original goes on deciding and learning: the two
    /// share their pending decisions' features, and nothing the original does may change the clone.
    #[test]
    fn a_clone_is_not_changed_by_the_original_going_on() {
        let mut policy = Policy::new(PolicyConfig::new(Algorithm::Clucb, Layout::Shared { dim: 4 })).unwrap();
        let features = |t: usize| -> Vec<f64> { (0..12).map(|i| (((i + 3 * t) % 7) as f64 - 3.0) / 10.0).collect() };
        let decide = |policy: &mut Policy, t: usize| {
            let x = features(t);
            let round = Round {
                actions: ActionSet::PerAction { features: &x, num_actions: 3 },
                baseline: 0,
                baseline_expected_reward: None,
            };
            policy.decide(&round).unwrap().id
        };
        for t in 0..50 {
            let id = decide(&mut policy, t);
            policy.observe_reward(id, 0.5).unwrap();
        }
        let pending: Vec<_> = (50..80).map(|t| decide(&mut policy, t)).collect();
        let copy = policy.clone();
        let frozen = serde_json::to_string(&copy).unwrap();
        // The original learns from every pending decision (its buffers go back to its spare pool only if
        // unshared) and decides on, writing features into reused buffers.
        for (i, id) in pending.into_iter().enumerate() {
            policy.observe_reward(id, 0.1 * (i % 10) as f64).unwrap();
        }
        for t in 80..200 {
            let id = decide(&mut policy, t);
            if t % 2 == 0 {
                policy.observe_reward(id, 0.9).unwrap();
            }
        }
        assert_eq!(serde_json::to_string(&copy).unwrap(), frozen);
        assert_eq!(copy.stats().pending, 30);
        drop(copy);
        // Once the clone is gone its buffers are the original's alone again.
        for t in 200..300 {
            let id = decide(&mut policy, t);
            policy.observe_reward(id, 0.5).unwrap();
        }
    }
}
