//! The experiments the service holds, each behind its own lock.
//!
//! Concurrency: the registry is a read-mostly map (an `RwLock` taken for reading by every call, for writing
//! only when an experiment is added or removed), so decisions for different experiments never wait on each
//! other. Each experiment's learner sits behind one `Mutex`, held only while the engine decides or learns
//! (microseconds): decisions of one experiment are serialised exactly as long as the learner needs, which is
//! what makes the service's results equal to a sequential replay in `sequence` order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use safebet_engine::{
    ActionSet, BaselineReward, DecisionId, EngineError, Fallback, Layout, PendingResolution, Policy, PolicyStats,
    PropensityKind, Round,
};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::definition::ExperimentDef;
use crate::limits::Limits;
use crate::store::Snapshot;

/// All experiments, by id.
#[derive(Debug)]
pub struct Registry {
    /// Read by every call, written only by create and delete (which the admin layer serialises).
    experiments: RwLock<HashMap<String, Arc<Experiment>>>,
    limits: Limits,
}

impl Registry {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: Limits) -> Registry {
        Registry { experiments: RwLock::new(HashMap::new()), limits }
    }

    /// The limits every call is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The experiment with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Experiment>, ServiceError> {
        let experiments = self.experiments.read().unwrap_or_else(|p| p.into_inner());
        experiments
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("unknown experiment '{}'", id.escape_debug())))
    }

    /// Whether an experiment with this id exists.
    pub fn contains(&self, id: &str) -> bool {
        self.experiments.read().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// Number of experiments.
    pub fn len(&self) -> usize {
        self.experiments.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the registry holds no experiment.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every experiment, ordered by id.
    pub fn list(&self) -> Vec<Arc<Experiment>> {
        let experiments = self.experiments.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = experiments.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Checks that a new experiment may be added: its id is free and the experiment limit not reached.
    pub fn check_insert(&self, id: &str) -> Result<(), ServiceError> {
        let experiments = self.experiments.read().unwrap_or_else(|p| p.into_inner());
        if experiments.contains_key(id) {
            return Err(ServiceError::AlreadyExists(format!("experiment '{id}' already exists")));
        }
        if experiments.len() >= self.limits.max_experiments {
            return Err(ServiceError::ResourceExhausted(format!(
                "the service holds {} experiments, the limit; delete one first",
                experiments.len()
            )));
        }
        Ok(())
    }

    /// Adds an experiment (the caller checked with [`Registry::check_insert`] and saved its definition).
    pub fn insert(&self, experiment: Arc<Experiment>) -> Result<(), ServiceError> {
        let mut experiments = self.experiments.write().unwrap_or_else(|p| p.into_inner());
        if experiments.contains_key(&experiment.id) {
            return Err(ServiceError::AlreadyExists(format!("experiment '{}' already exists", experiment.id)));
        }
        experiments.insert(experiment.id.clone(), experiment);
        Ok(())
    }

    /// Removes an experiment; calls already holding it finish, later ones see NOT_FOUND.
    pub fn remove(&self, id: &str) -> Result<Arc<Experiment>, ServiceError> {
        let removed = self.experiments.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        let experiment =
            removed.ok_or_else(|| ServiceError::NotFound(format!("unknown experiment '{}'", id.escape_debug())))?;
        experiment.lock().deleted = true;
        Ok(experiment)
    }
}

/// One decision request, checked against the experiment's shape by the API layer; borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct DecideInput<'a> {
    /// The caller's idempotency key.
    pub client_event_id: Option<&'a str>,
    /// The actions on offer.
    pub actions: ActionSet<'a>,
    /// Index of the baseline action.
    pub baseline: usize,
    /// The baseline's expected reward, if given.
    pub baseline_expected_reward: Option<f64>,
    /// The caller's ids of this round's actions (shared layout), possibly empty.
    pub round_action_ids: &'a [String],
}

/// The answer to a decision, kept for idempotent retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The engine's id of the decision.
    pub decision_id: DecisionId,
    /// The event id the caller reports the reward with.
    pub event_id: String,
    /// The action to play.
    pub action: usize,
    /// Its id, when actions have ids (else empty).
    pub action_id: String,
    /// The learner's proposal before the safety rule.
    pub proposed_action: usize,
    /// Probability of playing `action`.
    pub propensity: f64,
    /// Whether `propensity` is a Monte-Carlo estimate.
    pub propensity_estimated: bool,
    /// Why the baseline was played instead of the proposal, if it was.
    pub fallback: Fallback,
    /// Whether the played action is the baseline.
    pub played_baseline: bool,
    /// Number of model updates the decision was made with.
    pub model_version: u64,
    /// Position of the decision in the experiment's history.
    pub sequence: u64,
}

/// What a reward changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardAnswer {
    /// Number of model updates after the reward.
    pub model_version: u64,
    /// Position of the reward in the experiment's history.
    pub sequence: u64,
}

/// What the experiment has done so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The current definition (alpha and the kill switch included).
    pub definition: ExperimentDef,
    /// The engine's counters.
    pub stats: PolicyStats,
    /// Sum of the baseline expected rewards callers gave (known-baseline experiments).
    pub known_baseline_sum: Option<f64>,
    /// Position of the latest decision, reward or timeout.
    pub sequence: u64,
}

/// The most recent client event ids and their answers, so a retried Decide returns the first answer.
#[derive(Debug, Default)]
struct IdempotencyWindow {
    answers: HashMap<String, Answer>,
    /// Insertion order, oldest first, for evicting beyond the window.
    order: VecDeque<String>,
}

impl IdempotencyWindow {
    fn get(&self, client_event_id: &str) -> Option<&Answer> {
        self.answers.get(client_event_id)
    }

    fn insert(&mut self, client_event_id: &str, answer: Answer, capacity: usize) {
        while self.order.len() >= capacity.max(1) {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        self.order.push_back(client_event_id.to_owned());
        self.answers.insert(client_event_id.to_owned(), answer);
    }
}

/// What a snapshot holds: everything needed to continue exactly where the experiment was.
#[derive(Serialize, Deserialize)]
struct SavedState {
    sequence: u64,
    known_baseline_sum: f64,
    policy: Policy,
    /// Client event ids, oldest first.
    events: Vec<(String, Answer)>,
}

/// Fixed, per-experiment facts the API layer validates requests against without taking the lock.
#[derive(Debug, Clone)]
pub struct Shape {
    /// How actions are described.
    pub layout: Layout,
    /// Names of the fixed actions (disjoint and arms), possibly empty.
    pub action_ids: Vec<String>,
    /// `action_ids` by name.
    action_index: HashMap<String, usize>,
    /// Whether every Decide must give the baseline's expected reward.
    pub baseline_known: bool,
    /// How long a decision waits for its reward.
    pub reward_timeout: Option<Duration>,
}

impl Shape {
    /// The index of a fixed action named `id`.
    pub fn fixed_action(&self, id: &str) -> Option<usize> {
        self.action_index.get(id).copied()
    }
}

/// One experiment: its fixed shape and its learner behind a lock.
#[derive(Debug)]
pub struct Experiment {
    id: String,
    shape: Shape,
    /// Held only while the engine decides or learns, or while a snapshot clones the state.
    state: Mutex<ExperimentState>,
}

#[derive(Debug)]
struct ExperimentState {
    definition: ExperimentDef,
    policy: Policy,
    /// Set when the experiment is removed, so calls that found it just before see NOT_FOUND.
    deleted: bool,
    /// Number of decisions, rewards and timeouts applied: the position in the experiment's history.
    sequence: u64,
    /// Bumped by every change (including alpha and pause), so the snapshot task skips idle experiments.
    revision: u64,
    /// The revision the latest stored snapshot includes.
    flushed_revision: u64,
    known_baseline_sum: f64,
    idempotency: IdempotencyWindow,
    /// Decisions in decision order with the instant their reward times out (empty without a timeout).
    deadlines: VecDeque<(Instant, DecisionId)>,
}

impl Experiment {
    /// A fresh experiment from a checked definition.
    pub fn new(definition: ExperimentDef) -> Result<Experiment, ServiceError> {
        let policy = Policy::new(definition.policy.clone())
            .map_err(|e| ServiceError::engine(format!("experiment '{}'", definition.id), e))?;
        Ok(Self::assemble(definition, policy, 0, 0.0, Vec::new(), Instant::now()))
    }

    /// An experiment continuing from a stored snapshot (or fresh, without one). Pending decisions get a full
    /// reward timeout from `now`: the clock of the process that made them is gone.
    pub fn restore(
        definition: ExperimentDef,
        snapshot: Option<&Snapshot>,
        now: Instant,
    ) -> Result<Experiment, ServiceError> {
        let Some(snapshot) = snapshot else { return Self::new(definition) };
        let context = format!("experiment '{}'", definition.id);
        let saved: SavedState = serde_json::from_slice(&snapshot.state).map_err(|e| {
            ServiceError::Store(crate::store::StoreError::Corrupt { id: definition.id.clone(), reason: e.to_string() })
        })?;
        let mut policy = saved.policy;
        // The definition is written on every admin change, the snapshot only periodically: the definition's
        // alpha is the newer one.
        if policy.config().alpha != definition.policy.alpha {
            policy.set_alpha(definition.policy.alpha).map_err(|e| ServiceError::engine(context, e))?;
        }
        Ok(Self::assemble(definition, policy, saved.sequence, saved.known_baseline_sum, saved.events, now))
    }

    fn assemble(
        definition: ExperimentDef,
        policy: Policy,
        sequence: u64,
        known_baseline_sum: f64,
        events: Vec<(String, Answer)>,
        now: Instant,
    ) -> Experiment {
        let reward_timeout =
            (definition.reward_timeout_ms > 0).then(|| Duration::from_millis(definition.reward_timeout_ms));
        let deadlines = match reward_timeout {
            Some(timeout) => policy.pending_ids().into_iter().map(|id| (now + timeout, id)).collect(),
            None => VecDeque::new(),
        };
        let mut idempotency = IdempotencyWindow::default();
        for (client_event_id, answer) in events {
            idempotency.order.push_back(client_event_id.clone());
            idempotency.answers.insert(client_event_id, answer);
        }
        let shape = Shape {
            layout: definition.policy.layout,
            action_index: definition.action_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
            action_ids: definition.action_ids.clone(),
            baseline_known: definition.policy.baseline_reward == BaselineReward::Known,
            reward_timeout,
        };
        Experiment {
            id: definition.id.clone(),
            shape,
            state: Mutex::new(ExperimentState {
                definition,
                policy,
                deleted: false,
                sequence,
                revision: 0,
                flushed_revision: 0,
                known_baseline_sum,
                idempotency,
                deadlines,
            }),
        }
    }

    /// The experiment's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What requests are validated against.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    fn lock(&self) -> MutexGuard<'_, ExperimentState> {
        // Engine calls that fail change nothing and the service's own updates cannot panic half-way, so a
        // poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn gone(&self) -> ServiceError {
        ServiceError::NotFound(format!("unknown experiment '{}' (deleted)", self.id))
    }

    /// Decides one round: replays the first answer for a known client event id, plays the baseline when
    /// paused, lets the learner (and its safety rule) decide otherwise.
    pub fn decide(&self, input: &DecideInput<'_>, limits: &Limits, now: Instant) -> Result<Answer, ServiceError> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.deleted {
            return Err(self.gone());
        }
        if let Some(client_event_id) = input.client_event_id
            && let Some(answer) = state.idempotency.get(client_event_id)
        {
            return Ok(answer.clone());
        }
        let pending = state.policy.stats().pending;
        if pending >= limits.max_pending {
            return Err(ServiceError::ResourceExhausted(format!(
                "experiment '{}' has {pending} decisions waiting for a reward, the limit; report rewards or \
                 give the experiment a reward timeout",
                self.id
            )));
        }
        let round = Round {
            actions: input.actions,
            baseline: input.baseline,
            baseline_expected_reward: input.baseline_expected_reward,
        };
        let decision =
            if state.definition.paused { state.policy.decide_baseline(&round) } else { state.policy.decide(&round) }
                .map_err(|e| ServiceError::engine(format!("experiment '{}'", self.id), e))?;

        state.sequence += 1;
        state.revision += 1;
        if self.shape.baseline_known
            && let Some(mu) = input.baseline_expected_reward
        {
            state.known_baseline_sum += mu;
        }
        let ids = if input.round_action_ids.is_empty() { &self.shape.action_ids[..] } else { input.round_action_ids };
        let answer = Answer {
            decision_id: decision.id,
            event_id: match input.client_event_id {
                Some(client_event_id) => client_event_id.to_owned(),
                None => format!("#{}", decision.id),
            },
            action: decision.action,
            action_id: ids.get(decision.action).cloned().unwrap_or_default(),
            proposed_action: decision.proposed_action,
            propensity: decision.propensity.probability,
            propensity_estimated: decision.propensity.kind == PropensityKind::Estimated,
            fallback: decision.fallback,
            played_baseline: decision.played_baseline(),
            model_version: state.policy.stats().model_version,
            sequence: state.sequence,
        };
        if let Some(timeout) = self.shape.reward_timeout {
            state.deadlines.push_back((now + timeout, decision.id));
        }
        if let Some(client_event_id) = input.client_event_id {
            state.idempotency.insert(client_event_id, answer.clone(), limits.idempotency_window);
        }
        Ok(answer)
    }

    /// Applies the reward of the decision named `event_id` (a client event id, or `#n` for server ids).
    pub fn reward(&self, event_id: &str, value: f64) -> Result<RewardAnswer, ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        let decision_id = match event_id.strip_prefix('#') {
            Some(digits) => match digits.parse::<DecisionId>() {
                Ok(id) if format!("#{id}") == event_id => id,
                _ => {
                    return Err(ServiceError::InvalidArgument(format!(
                        "event id '{}' is malformed: ids starting with '#' are server-assigned, '#' then a number",
                        event_id.escape_debug()
                    )));
                }
            },
            None => match state.idempotency.get(event_id) {
                Some(answer) => answer.decision_id,
                None => {
                    return Err(ServiceError::NotFound(format!(
                        "unknown event '{}' in experiment '{}'",
                        event_id.escape_debug(),
                        self.id
                    )));
                }
            },
        };
        state.policy.observe_reward(decision_id, value).map_err(|e| {
            let context = format!("experiment '{}', event '{}'", self.id, event_id.escape_debug());
            match e {
                EngineError::UnknownDecision(_) => ServiceError::NotFound(format!("{context}: unknown event")),
                EngineError::AlreadyResolved(_) => ServiceError::AlreadyExists(format!(
                    "{context}: the event already has its reward (or timed out); a reward is never applied twice"
                )),
                e => ServiceError::engine(context, e),
            }
        })?;
        state.sequence += 1;
        state.revision += 1;
        Ok(RewardAnswer { model_version: state.policy.stats().model_version, sequence: state.sequence })
    }

    /// Resolves, as the experiment's `on_timeout` says, every decision whose reward is overdue at `now`.
    /// Works in slices of at most `max` decisions per lock, so deciders never wait long; returns how many
    /// decisions it resolved and whether overdue ones remain.
    pub fn expire_due(&self, now: Instant, max: usize) -> (usize, bool) {
        let mut state = self.lock();
        let mut resolved = 0;
        let mut examined = 0;
        while examined < max {
            match state.deadlines.front() {
                Some(&(deadline, id)) if deadline <= now => {
                    state.deadlines.pop_front();
                    examined += 1;
                    // A decision whose reward arrived is resolved already: nothing to do.
                    if state.policy.expire(id).is_ok() {
                        state.sequence += 1;
                        state.revision += 1;
                        resolved += 1;
                    }
                }
                _ => return (resolved, false),
            }
        }
        let more = state.deadlines.front().is_some_and(|&(deadline, _)| deadline <= now);
        (resolved, more)
    }

    /// Changes the risk budget; returns the previous alpha.
    pub fn set_alpha(&self, alpha: f64) -> Result<f64, ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        let previous = state.policy.config().alpha;
        state.policy.set_alpha(alpha).map_err(|e| ServiceError::engine(format!("experiment '{}'", self.id), e))?;
        state.definition.policy.alpha = alpha;
        state.revision += 1;
        Ok(previous)
    }

    /// Sets the kill switch; returns its previous position.
    pub fn set_paused(&self, paused: bool) -> Result<bool, ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        let previous = std::mem::replace(&mut state.definition.paused, paused);
        state.revision += 1;
        Ok(previous)
    }

    /// The current definition.
    pub fn definition(&self) -> ExperimentDef {
        self.lock().definition.clone()
    }

    /// What the experiment has done so far.
    pub fn report(&self) -> Report {
        let state = self.lock();
        Report {
            definition: state.definition.clone(),
            stats: state.policy.stats(),
            known_baseline_sum: self.shape.baseline_known.then_some(state.known_baseline_sum),
            sequence: state.sequence,
        }
    }

    /// A snapshot of the state if it changed since the last stored one (or always, with `force`), with the
    /// revision it includes. The lock is held only to clone; serialising happens outside it.
    pub fn snapshot(&self, force: bool) -> Option<(Snapshot, u64)> {
        let (policy, sequence, known_baseline_sum, events, revision) = {
            let state = self.lock();
            if state.deleted || (!force && state.revision == state.flushed_revision) {
                return None;
            }
            let events: Vec<(String, Answer)> = state
                .idempotency
                .order
                .iter()
                .filter_map(|id| state.idempotency.answers.get(id).map(|a| (id.clone(), a.clone())))
                .collect();
            (state.policy.clone(), state.sequence, state.known_baseline_sum, events, state.revision)
        };
        let saved = SavedState { sequence, known_baseline_sum, policy, events };
        let bytes = serde_json::to_vec(&saved).expect("an experiment's state always serialises to JSON");
        Some((Snapshot { experiment_id: self.id.clone(), sequence, state: bytes }, revision))
    }

    /// Records that the snapshot of `revision` is stored.
    pub fn mark_flushed(&self, revision: u64) {
        let mut state = self.lock();
        state.flushed_revision = state.flushed_revision.max(revision);
    }

    /// What happens to a decision whose reward times out.
    pub fn on_timeout(&self) -> PendingResolution {
        self.lock().policy.config().on_timeout
    }
}

#[cfg(test)]
mod tests {
    use safebet_engine::{Algorithm, PolicyConfig};

    use super::*;

    fn definition(algorithm: Algorithm, layout: Layout) -> ExperimentDef {
        ExperimentDef {
            id: "e".into(),
            policy: PolicyConfig::new(algorithm, layout),
            reward_timeout_ms: 0,
            action_ids: vec![],
            paused: false,
            created_unix_ms: 0,
        }
    }

    fn features(round: usize, k: usize, d: usize) -> Vec<f64> {
        (0..k * d).map(|i| (((i * 7 + round * 13) % 17) as f64 / 17.0 - 0.4) / (d as f64).sqrt()).collect()
    }

    /// Runs `rounds` decide/reward pairs on `experiment`, returning the answers.
    fn drive(experiment: &Experiment, from: usize, rounds: usize, k: usize, d: usize) -> Vec<Answer> {
        let limits = Limits::default();
        (from..from + rounds)
            .map(|t| {
                let x = features(t, k, d);
                let actions = match experiment.shape().layout {
                    Layout::Shared { .. } => ActionSet::PerAction { features: &x, num_actions: k },
                    Layout::Disjoint { .. } => ActionSet::SharedContext { context: &x[..d] },
                    Layout::Arms { .. } => ActionSet::Arms,
                };
                let input = DecideInput {
                    client_event_id: None,
                    actions,
                    baseline: 0,
                    baseline_expected_reward: None,
                    round_action_ids: &[],
                };
                let answer = experiment.decide(&input, &limits, Instant::now()).unwrap();
                let reward = 0.3 + 0.1 * (answer.action % 3) as f64 + 0.01 * (t % 5) as f64;
                experiment.reward(&answer.event_id, reward).unwrap();
                answer
            })
            .collect()
    }

    #[test]
    fn snapshot_then_restore_continues_bit_for_bit() {
        for (algorithm, layout) in [
            (Algorithm::Clucb, Layout::Shared { dim: 4 }),
            (Algorithm::Clucb2, Layout::Disjoint { dim: 4, actions: 4 }),
            (Algorithm::Lints, Layout::Shared { dim: 4 }),
            (Algorithm::EpsilonGreedy, Layout::Shared { dim: 4 }),
            (Algorithm::ConservativeUcb, Layout::Arms { actions: 4 }),
            (Algorithm::Ucb1, Layout::Arms { actions: 4 }),
        ] {
            let original = Experiment::new(definition(algorithm, layout)).unwrap();
            drive(&original, 0, 40, 4, 4);
            let (snapshot, _) = original.snapshot(false).unwrap();
            let restored = Experiment::restore(original.definition(), Some(&snapshot), Instant::now()).unwrap();
            let a = drive(&original, 40, 40, 4, 4);
            let b = drive(&restored, 40, 40, 4, 4);
            assert_eq!(a, b, "{algorithm:?} diverged after a snapshot round trip");
            assert_eq!(original.report().stats, restored.report().stats);
        }
    }

    #[test]
    fn a_second_reward_is_already_exists_and_not_applied() {
        let experiment = Experiment::new(definition(Algorithm::Clucb, Layout::Shared { dim: 4 })).unwrap();
        let answer = drive(&experiment, 0, 1, 4, 4).pop().unwrap();
        let before = experiment.report();
        let error = experiment.reward(&answer.event_id, 0.5).unwrap_err();
        assert_eq!(error.code(), tonic::Code::AlreadyExists, "{error}");
        assert_eq!(experiment.report(), before);
        assert_eq!(experiment.reward("#99", 0.5).unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(experiment.reward("#007", 0.5).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(experiment.reward("nope", 0.5).unwrap_err().code(), tonic::Code::NotFound);
    }

    #[test]
    fn overdue_decisions_expire_and_rewarded_ones_are_left_alone() {
        let mut def = definition(Algorithm::Clucb, Layout::Shared { dim: 4 });
        def.reward_timeout_ms = 1000;
        let experiment = Experiment::new(def).unwrap();
        let limits = Limits::default();
        let x = features(0, 4, 4);
        let start = Instant::now();
        let input = DecideInput {
            client_event_id: None,
            actions: ActionSet::PerAction { features: &x, num_actions: 4 },
            baseline: 0,
            baseline_expected_reward: None,
            round_action_ids: &[],
        };
        let first = experiment.decide(&input, &limits, start).unwrap();
        let _second = experiment.decide(&input, &limits, start).unwrap();
        experiment.reward(&first.event_id, 0.5).unwrap();
        assert_eq!(experiment.expire_due(start + Duration::from_millis(999), 10), (0, false));
        assert_eq!(experiment.expire_due(start + Duration::from_millis(1000), 10), (1, false));
        let stats = experiment.report().stats;
        assert_eq!((stats.pending, stats.dropped, stats.rewards), (0, 1, 1));
    }

    #[test]
    fn the_idempotency_window_forgets_the_oldest() {
        let mut window = IdempotencyWindow::default();
        let answer = Answer {
            decision_id: 0,
            event_id: String::new(),
            action: 0,
            action_id: String::new(),
            proposed_action: 0,
            propensity: 1.0,
            propensity_estimated: false,
            fallback: Fallback::None,
            played_baseline: true,
            model_version: 0,
            sequence: 0,
        };
        for i in 0..5 {
            window.insert(&format!("c{i}"), answer.clone(), 3);
        }
        assert!(window.get("c1").is_none());
        assert!(window.get("c2").is_some() && window.get("c4").is_some());
        assert_eq!(window.answers.len(), 3);
    }
}
