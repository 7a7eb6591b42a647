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
    ActionSet, BaselineReward, DecisionId, EngineError, Fallback, FeatureLayout, Layout, PendingResolution, Policy,
    PolicyStats, PropensityKind, Round,
};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::definition::{ExperimentDef, FeaturePrecision};
use crate::episodes::EpisodicExperiment;
use crate::limits::Limits;
use crate::log::{DecisionRecord, LogEntry, LogRecord, round_to_f32};
use crate::store::{AuditEntry, Snapshot, StoreError, StoredExperiment, Write, decode_state, encode_state};
use crate::writer::{Commit, LogWriter};

/// All experiments, by id.
#[derive(Debug)]
pub struct Registry {
    /// Read by every call, written only by create and delete (which the admin layer serialises).
    experiments: RwLock<HashMap<String, Arc<Experiment>>>,
    /// Episodic (RL) experiments; ids are unique across both maps.
    episodic: RwLock<HashMap<String, Arc<EpisodicExperiment>>>,
    limits: Limits,
    /// The decision log's writer, handed to every experiment (none: nothing is logged).
    writer: Option<Arc<LogWriter>>,
}

impl Registry {
    /// An empty registry enforcing `limits`, logging through `writer`.
    pub fn new(limits: Limits, writer: Option<Arc<LogWriter>>) -> Registry {
        Registry { experiments: RwLock::new(HashMap::new()), episodic: RwLock::new(HashMap::new()), limits, writer }
    }

    /// The episodic experiment with this id.
    pub fn episodic(&self, id: &str) -> Result<Arc<EpisodicExperiment>, ServiceError> {
        let episodic = self.episodic.read().unwrap_or_else(|p| p.into_inner());
        episodic
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("unknown episodic experiment '{}'", id.escape_debug())))
    }

    /// Every episodic experiment, ordered by id.
    pub fn list_episodic(&self) -> Vec<Arc<EpisodicExperiment>> {
        let episodic = self.episodic.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = episodic.values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Adds an episodic experiment (the caller checked with [`Registry::check_insert`]).
    pub fn insert_episodic(&self, experiment: Arc<EpisodicExperiment>) -> Result<(), ServiceError> {
        let mut episodic = self.episodic.write().unwrap_or_else(|p| p.into_inner());
        if episodic.contains_key(experiment.id()) {
            return Err(ServiceError::AlreadyExists(format!("experiment '{}' already exists", experiment.id())));
        }
        episodic.insert(experiment.id().to_owned(), experiment);
        Ok(())
    }

    /// Removes an episodic experiment.
    pub fn remove_episodic(&self, id: &str) -> Result<(), ServiceError> {
        let removed = self.episodic.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        let experiment = removed
            .ok_or_else(|| ServiceError::NotFound(format!("unknown episodic experiment '{}'", id.escape_debug())))?;
        experiment.mark_deleted();
        Ok(())
    }

    /// The decision log's writer.
    pub fn writer(&self) -> Option<&Arc<LogWriter>> {
        self.writer.as_ref()
    }

    /// A fresh experiment of this registry (logging through its writer); not inserted yet.
    pub fn fresh(&self, definition: ExperimentDef) -> Result<Experiment, ServiceError> {
        Experiment::new(definition, &self.limits, self.writer.clone())
    }

    /// An experiment of this registry rebuilt from the store; not inserted yet.
    pub fn rebuilt(&self, stored: &StoredExperiment, now: Instant) -> Result<Experiment, ServiceError> {
        Experiment::rebuild(stored, &self.limits, now, self.writer.clone())
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
        let episodic = self.episodic.read().unwrap_or_else(|p| p.into_inner());
        if experiments.contains_key(id) || episodic.contains_key(id) {
            return Err(ServiceError::AlreadyExists(format!("experiment '{id}' already exists")));
        }
        if experiments.len() + episodic.len() >= self.limits.max_experiments {
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
    /// The policy's estimate of the baseline's cumulative expected reward (conservative policies): the sum
    /// given when known, the model's estimate when not.
    pub baseline_estimate: Option<f64>,
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
pub(crate) struct SavedState {
    pub(crate) sequence: u64,
    pub(crate) known_baseline_sum: f64,
    pub(crate) policy: Policy,
    /// Client event ids, oldest first.
    pub(crate) events: Vec<(String, Answer)>,
    /// Pending decisions' reward deadlines (Unix ms), in decision order, so timeouts keep counting across a
    /// restart.
    #[serde(default)]
    pub(crate) deadlines: Vec<(i64, DecisionId)>,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The instant of a Unix-ms deadline, as seen from `now` (past deadlines are due now).
fn instant_of(deadline_unix_ms: i64, now: Instant) -> Instant {
    let remaining = deadline_unix_ms.saturating_sub(now_unix_ms()).max(0);
    now + Duration::from_millis(remaining as u64)
}

/// The answer a logged decision gave, for the idempotency window.
fn answer_of(logged: &DecisionRecord, sequence: u64) -> Answer {
    Answer {
        decision_id: logged.decision_id,
        event_id: logged.event_id.clone(),
        action: logged.action,
        action_id: logged.action_id.clone(),
        proposed_action: logged.proposed_action,
        propensity: logged.propensity,
        propensity_estimated: logged.propensity_estimated,
        fallback: logged.fallback,
        played_baseline: logged.played_baseline,
        model_version: logged.model_version,
        sequence,
    }
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
    /// Whether features are rounded to `f32` on arrival and logged as such (the experiment's precision).
    pub features_f32: bool,
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
    /// Where every change is logged before it is acknowledged (none: nothing is logged, e.g. in replays).
    writer: Option<Arc<LogWriter>>,
    /// How many client event ids are remembered (the limits'), also when replaying.
    idempotency_window: usize,
    /// Metrics handles, labelled with the experiment once (no allocation per call).
    counters: Counters,
}

#[derive(Debug)]
struct Counters {
    decisions: metrics::Counter,
    learner_plays: metrics::Counter,
    budget_fallbacks: metrics::Counter,
    forced_plays: metrics::Counter,
    rewards: metrics::Counter,
}

impl Counters {
    fn new(id: &str) -> Counters {
        let fallback = |reason: &'static str| metrics::counter!("safebet_decisions_by_outcome_total", "experiment" => id.to_owned(), "outcome" => reason);
        Counters {
            decisions: metrics::counter!("safebet_decisions_total", "experiment" => id.to_owned()),
            learner_plays: fallback("learner"),
            budget_fallbacks: fallback("budget_fallback"),
            forced_plays: fallback("forced_baseline"),
            rewards: metrics::counter!("safebet_rewards_total", "experiment" => id.to_owned()),
        }
    }
}

/// Most decisions of a `DecideBatch` made under one hold of an experiment's lock: long enough runs to keep
/// the learner's state in one core's cache, short enough (about 100 us at d = 32, K = 16) that a `Decide`
/// for the same experiment does not wait long behind a batch.
pub const DECISIONS_PER_LOCK: usize = 32;

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
    /// Decisions in decision order with the instant their reward times out and the same deadline in Unix
    /// ms (empty without a timeout).
    deadlines: VecDeque<(Instant, i64, DecisionId)>,
}

impl Experiment {
    /// A fresh experiment from a checked definition, logging to `writer`.
    pub fn new(
        definition: ExperimentDef,
        limits: &Limits,
        writer: Option<Arc<LogWriter>>,
    ) -> Result<Experiment, ServiceError> {
        let policy = Policy::new(definition.policy.clone())
            .map_err(|e| ServiceError::engine(format!("experiment '{}'", definition.id), e))?;
        let saved = SavedState { sequence: 0, known_baseline_sum: 0.0, policy, events: Vec::new(), deadlines: vec![] };
        Ok(Self::assemble(definition, saved, limits, Instant::now(), writer))
    }

    /// An experiment rebuilt from the store: its latest snapshot (or a fresh state), then every log record
    /// after it, applied exactly as the live experiment applied them. Each replayed decision must come out
    /// as logged (same decision id and action), or the store is reported corrupt. Pending decisions keep
    /// their reward deadlines.
    pub fn rebuild(
        stored: &StoredExperiment,
        limits: &Limits,
        now: Instant,
        writer: Option<Arc<LogWriter>>,
    ) -> Result<Experiment, ServiceError> {
        let definition = stored.definition.clone();
        let corrupt = |reason: String| ServiceError::Store(StoreError::Corrupt { id: definition.id.clone(), reason });
        let saved = match &stored.snapshot {
            Some(snapshot) => {
                let saved: SavedState = decode_state(&snapshot.state).map_err(corrupt)?;
                saved
            }
            None => {
                let policy = Policy::new(definition.policy.clone())
                    .map_err(|e| ServiceError::engine(format!("experiment '{}'", definition.id), e))?;
                SavedState { sequence: 0, known_baseline_sum: 0.0, policy, events: Vec::new(), deadlines: vec![] }
            }
        };
        let experiment = Self::assemble(definition.clone(), saved, limits, now, writer);
        {
            let mut state = experiment.lock();
            for record in &stored.log {
                experiment.replay(&mut state, record, now).map_err(corrupt)?;
            }
            // Every alpha change is in the log before its definition is saved: if the process died in between,
            // the log (what the policy actually ran with) wins.
            let alpha = state.policy.config().alpha;
            state.definition.policy.alpha = alpha;
        }
        Ok(experiment)
    }

    /// Applies one logged record to the state, checking it continues the history.
    fn replay(&self, state: &mut ExperimentState, record: &LogRecord, now: Instant) -> Result<(), String> {
        if record.sequence != state.sequence + 1 {
            return Err(format!(
                "the log jumps from sequence {} to {}: a record is missing",
                state.sequence, record.sequence
            ));
        }
        let at = |what: &str| format!("replaying log record {} ({what})", record.sequence);
        match &record.entry {
            LogEntry::Decision(logged) => {
                let actions = match self.shape.layout {
                    Layout::Shared { .. } => {
                        ActionSet::PerAction { features: &logged.features, num_actions: logged.num_actions }
                    }
                    Layout::Disjoint { .. } => ActionSet::SharedContext { context: &logged.features },
                    Layout::Arms { .. } => ActionSet::Arms,
                };
                let round = Round {
                    actions,
                    baseline: logged.baseline,
                    baseline_expected_reward: logged.baseline_expected_reward,
                };
                let decision =
                    if logged.paused { state.policy.decide_baseline(&round) } else { state.policy.decide(&round) }
                        .map_err(|e| format!("{}: {e}", at("decision")))?;
                if decision.id != logged.decision_id || decision.action != logged.action {
                    return Err(format!(
                        "{}: the engine decided #{} action {}, the log says #{} action {}",
                        at("decision"),
                        decision.id,
                        decision.action,
                        logged.decision_id,
                        logged.action
                    ));
                }
                if self.shape.baseline_known
                    && let Some(mu) = logged.baseline_expected_reward
                {
                    state.known_baseline_sum += mu;
                }
                if let Some(timeout) = self.shape.reward_timeout {
                    let deadline_ms = record.unix_ms.saturating_add(timeout.as_millis() as i64);
                    state.deadlines.push_back((instant_of(deadline_ms, now), deadline_ms, decision.id));
                }
                if logged.client_event_id {
                    state.idempotency.insert(
                        &logged.event_id,
                        answer_of(logged, record.sequence),
                        self.idempotency_window,
                    );
                }
            }
            LogEntry::Reward { decision_id, value, .. } => {
                state.policy.observe_reward(*decision_id, *value).map_err(|e| format!("{}: {e}", at("reward")))?;
            }
            LogEntry::Timeout { decision_id } => {
                state.policy.expire(*decision_id).map_err(|e| format!("{}: {e}", at("timeout")))?;
            }
            LogEntry::Alpha { alpha } => {
                state.policy.set_alpha(*alpha).map_err(|e| format!("{}: {e}", at("alpha")))?;
            }
            LogEntry::ClearDrift => state.policy.clear_drift_alarm(),
            LogEntry::EpisodeStart(_) | LogEntry::Step(_) | LogEntry::EpisodeEnd { .. } | LogEntry::Paused { .. } => {
                return Err(format!("{}: an episodic record in a bandit experiment's log", at("record")));
            }
        }
        state.sequence = record.sequence;
        Ok(())
    }

    /// Replaces the state with the store's (after a failed commit left memory ahead of the log).
    pub fn reload(&self, stored: &StoredExperiment, limits: &Limits, now: Instant) -> Result<(), ServiceError> {
        let rebuilt = Experiment::rebuild(stored, limits, now, None)?;
        let fresh = rebuilt.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        if !state.deleted {
            *state = fresh;
        }
        Ok(())
    }

    fn assemble(
        definition: ExperimentDef,
        saved: SavedState,
        limits: &Limits,
        now: Instant,
        writer: Option<Arc<LogWriter>>,
    ) -> Experiment {
        let SavedState { sequence, known_baseline_sum, policy, events, deadlines } = saved;
        let reward_timeout =
            (definition.reward_timeout_ms > 0).then(|| Duration::from_millis(definition.reward_timeout_ms));
        let deadlines = match reward_timeout {
            Some(_) => deadlines.into_iter().map(|(ms, id)| (instant_of(ms, now), ms, id)).collect(),
            None => VecDeque::new(),
        };
        let mut idempotency = IdempotencyWindow::default();
        for (client_event_id, answer) in events {
            idempotency.order.push_back(client_event_id.clone());
            idempotency.answers.insert(client_event_id, answer);
        }
        let definition_id = definition.id.clone();
        let shape = Shape {
            layout: definition.policy.layout,
            action_index: definition.action_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
            action_ids: definition.action_ids.clone(),
            baseline_known: definition.policy.baseline_reward == BaselineReward::Known,
            reward_timeout,
            features_f32: definition.feature_precision == FeaturePrecision::F32,
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
            counters: Counters::new(&definition_id),
            writer,
            idempotency_window: limits.idempotency_window,
        }
    }

    /// Logs `entry` as the state's current sequence (the caller just advanced it), under the lock.
    fn log(&self, state: &ExperimentState, unix_ms: i64, entry: LogEntry) -> Commit {
        match &self.writer {
            None => Commit::done(),
            Some(writer) => writer.submit(Write::Log(LogRecord {
                experiment_id: self.id.clone(),
                sequence: state.sequence,
                unix_ms,
                entry,
            })),
        }
    }

    /// UNAVAILABLE while the log refuses writes: nothing may change in memory that the log cannot hold.
    fn check_writable(&self) -> Result<(), ServiceError> {
        match self.writer.as_ref().and_then(|w| w.failure()) {
            Some(reason) => Err(ServiceError::Unavailable(reason)),
            None => Ok(()),
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
    /// paused, lets the learner (and its safety rule) decide otherwise. The decision is in the log once the
    /// returned [`Commit`] resolves; only then may it be acknowledged.
    pub fn decide(
        &self,
        input: &DecideInput<'_>,
        limits: &Limits,
        now: Instant,
    ) -> Result<(Answer, Commit), ServiceError> {
        // An f32 experiment learns from, and logs, its features rounded to f32: round a copy first (outside
        // the lock; the log needs a copy anyway).
        let rounded = self.rounded_features(input.actions)?;
        self.decide_locked(&mut self.lock(), input, rounded, limits, now)
    }

    /// Decides a run of rounds (a `DecideBatch`'s items for this experiment), in order, answering each as
    /// [`Experiment::decide`] would. The lock is taken once per [`DECISIONS_PER_LOCK`] rounds instead of
    /// once per round: each hand-over of the lock between two cores moves the learner's state (its matrices
    /// and tables, tens of kilobytes) from one core's cache to the other's.
    pub fn decide_run(
        &self,
        inputs: &[DecideInput<'_>],
        limits: &Limits,
        now: Instant,
    ) -> Vec<Result<(Answer, Commit), ServiceError>> {
        let mut rounded =
            inputs.iter().map(|input| self.rounded_features(input.actions)).collect::<Vec<_>>().into_iter();
        let mut outcomes = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(DECISIONS_PER_LOCK) {
            let mut state = self.lock();
            for input in chunk {
                let rounded = rounded.next().expect("one per input");
                outcomes.push(rounded.and_then(|rounded| self.decide_locked(&mut state, input, rounded, limits, now)));
            }
        }
        outcomes
    }

    /// One decision, with the experiment's lock held; `rounded` is the round's features rounded to f32 for
    /// an experiment that keeps them so.
    fn decide_locked(
        &self,
        state: &mut ExperimentState,
        input: &DecideInput<'_>,
        rounded: Option<Vec<f64>>,
        limits: &Limits,
        now: Instant,
    ) -> Result<(Answer, Commit), ServiceError> {
        let actions = match (&rounded, input.actions) {
            (Some(features), ActionSet::PerAction { num_actions, .. }) => {
                ActionSet::PerAction { features, num_actions }
            }
            (Some(context), ActionSet::SharedContext { .. }) => ActionSet::SharedContext { context },
            _ => input.actions,
        };
        if state.deleted {
            return Err(self.gone());
        }
        if let Some(client_event_id) = input.client_event_id
            && let Some(answer) = state.idempotency.get(client_event_id)
        {
            // The first answer may still be on its way to disk: acknowledge the retry once it is there.
            let commit = self.writer.as_ref().map_or_else(Commit::done, |w| w.barrier());
            return Ok((answer.clone(), commit));
        }
        self.check_writable()?;
        let pending = state.policy.stats().pending;
        if pending >= limits.max_pending {
            return Err(ServiceError::ResourceExhausted(format!(
                "experiment '{}' has {pending} decisions waiting for a reward, the limit; report rewards or \
                 give the experiment a reward timeout",
                self.id
            )));
        }
        let round =
            Round { actions, baseline: input.baseline, baseline_expected_reward: input.baseline_expected_reward };
        let paused = state.definition.paused;
        let decision = if paused { state.policy.decide_baseline(&round) } else { state.policy.decide(&round) }
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
        self.counters.decisions.increment(1);
        match decision.fallback {
            Fallback::Budget => self.counters.budget_fallbacks.increment(1),
            Fallback::Forced => self.counters.forced_plays.increment(1),
            Fallback::None if !decision.played_baseline() => self.counters.learner_plays.increment(1),
            Fallback::None => {}
        }
        let unix_ms = now_unix_ms();
        if let Some(timeout) = self.shape.reward_timeout {
            state.deadlines.push_back((now + timeout, unix_ms.saturating_add(timeout.as_millis() as i64), decision.id));
        }
        if let Some(client_event_id) = input.client_event_id {
            state.idempotency.insert(client_event_id, answer.clone(), limits.idempotency_window);
        }
        let commit = if self.writer.is_some() {
            let (features, num_actions) = match input.actions {
                ActionSet::PerAction { features, num_actions } => {
                    (rounded.unwrap_or_else(|| features.to_vec()), num_actions)
                }
                ActionSet::SharedContext { context } => {
                    (rounded.unwrap_or_else(|| context.to_vec()), self.shape.action_ids.len().max(1))
                }
                ActionSet::Arms => (Vec::new(), self.shape.action_ids.len().max(1)),
            };
            let num_actions = match self.shape.layout {
                Layout::Disjoint { actions, .. } | Layout::Arms { actions } => actions,
                Layout::Shared { .. } => num_actions,
            };
            let record = DecisionRecord {
                decision_id: answer.decision_id,
                event_id: answer.event_id.clone(),
                client_event_id: input.client_event_id.is_some(),
                num_actions,
                features,
                features_f32: self.shape.features_f32,
                layout: Some(match self.shape.layout {
                    Layout::Shared { .. } => FeatureLayout::Shared,
                    Layout::Disjoint { .. } => FeatureLayout::Disjoint,
                    Layout::Arms { .. } => FeatureLayout::Arms,
                }),
                round_action_ids: input.round_action_ids.to_vec(),
                baseline: input.baseline,
                baseline_expected_reward: input.baseline_expected_reward,
                paused,
                action: answer.action,
                action_id: answer.action_id.clone(),
                proposed_action: answer.proposed_action,
                propensity: answer.propensity,
                propensity_estimated: answer.propensity_estimated,
                fallback: answer.fallback,
                played_baseline: answer.played_baseline,
                model_version: answer.model_version,
            };
            self.log(state, unix_ms, LogEntry::Decision(Box::new(record)))
        } else {
            Commit::done()
        };
        Ok((answer, commit))
    }

    /// A copy of the round's features rounded to `f32`, for an experiment that keeps them so; `None` otherwise.
    fn rounded_features(&self, actions: ActionSet<'_>) -> Result<Option<Vec<f64>>, ServiceError> {
        let (features, per_action) = match actions {
            _ if !self.shape.features_f32 => return Ok(None),
            ActionSet::PerAction { features, num_actions } => (features, Some(features.len() / num_actions.max(1))),
            ActionSet::SharedContext { context } => (context, None),
            ActionSet::Arms => return Ok(None),
        };
        let mut rounded = features.to_vec();
        let Err(i) = round_to_f32(&mut rounded) else { return Ok(Some(rounded)) };
        let which = match per_action {
            Some(dim) => format!("features[{i}] (action {}, feature {})", i / dim.max(1), i % dim.max(1)),
            None => format!("context[{i}]"),
        };
        Err(ServiceError::InvalidArgument(format!(
            "{which} is {:e}, beyond float32's range (3.4e38): experiment '{}' keeps its features as float32 \
             (feature_precision F32)",
            features[i], self.id
        )))
    }

    /// Applies the reward of the decision named `event_id` (a client event id, or `#n` for server ids).
    pub fn reward(&self, event_id: &str, value: f64) -> Result<(RewardAnswer, Commit), ServiceError> {
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
        self.check_writable()?;
        let alarmed_before = state.policy.drift_alarm().is_some();
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
        self.counters.rewards.increment(1);
        if !alarmed_before && let Some(alarm) = state.policy.drift_alarm() {
            if let Some(writer) = &self.writer {
                writer.submit_detached(Write::Audit(AuditEntry {
                    unix_ms: now_unix_ms(),
                    actor: "drift-guard".into(),
                    action: "drift_alarm".into(),
                    experiment_id: self.id.clone(),
                    before: None,
                    after: Some(serde_json::json!({ "drift_alarm": alarm }).to_string()),
                }));
            }
            tracing::warn!(
                experiment = %self.id,
                at_reward = alarm.at_reward,
                statistic = alarm.statistic,
                "drift alarm: the reward model no longer fits; playing the baseline until an operator resumes"
            );
        }
        let commit =
            self.log(&state, now_unix_ms(), LogEntry::Reward { decision_id, event_id: event_id.to_owned(), value });
        Ok((RewardAnswer { model_version: state.policy.stats().model_version, sequence: state.sequence }, commit))
    }

    /// Resolves, as the experiment's `on_timeout` says, every decision whose reward is overdue at `now`.
    /// Works in slices of at most `max` decisions per lock, so deciders never wait long; returns how many
    /// decisions it resolved and whether overdue ones remain.
    pub fn expire_due(&self, now: Instant, max: usize) -> (usize, bool) {
        let mut state = self.lock();
        if self.check_writable().is_err() {
            return (0, false);
        }
        let mut resolved = 0;
        let mut examined = 0;
        let unix_ms = now_unix_ms();
        while examined < max {
            match state.deadlines.front() {
                Some(&(deadline, _, id)) if deadline <= now => {
                    state.deadlines.pop_front();
                    examined += 1;
                    // A decision whose reward arrived is resolved already: nothing to do.
                    if state.policy.expire(id).is_ok() {
                        state.sequence += 1;
                        state.revision += 1;
                        resolved += 1;
                        if let Some(writer) = &self.writer {
                            writer.submit_detached(Write::Log(LogRecord {
                                experiment_id: self.id.clone(),
                                sequence: state.sequence,
                                unix_ms,
                                entry: LogEntry::Timeout { decision_id: id },
                            }));
                        }
                    }
                }
                _ => return (resolved, false),
            }
        }
        let more = state.deadlines.front().is_some_and(|&(deadline, _, _)| deadline <= now);
        (resolved, more)
    }

    /// Changes the risk budget; returns the previous alpha and the commit of the change to the log.
    pub fn set_alpha(&self, alpha: f64) -> Result<(f64, Commit), ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        self.check_writable()?;
        let previous = state.policy.config().alpha;
        state.policy.set_alpha(alpha).map_err(|e| ServiceError::engine(format!("experiment '{}'", self.id), e))?;
        state.definition.policy.alpha = alpha;
        state.sequence += 1;
        state.revision += 1;
        let commit = self.log(&state, now_unix_ms(), LogEntry::Alpha { alpha });
        Ok((previous, commit))
    }

    /// Sets the kill switch; returns its previous position. Pausing needs no log record (each decision
    /// records whether the experiment was paused); resuming also clears a drift alarm, which is logged.
    pub fn set_paused(&self, paused: bool) -> Result<(bool, Commit), ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        let mut commit = Commit::done();
        if !paused && state.policy.drift_alarm().is_some() {
            self.check_writable()?;
            state.policy.clear_drift_alarm();
            state.sequence += 1;
            commit = self.log(&state, now_unix_ms(), LogEntry::ClearDrift);
            tracing::warn!(experiment = %self.id, "drift alarm cleared by an operator: the learner explores again");
        }
        let previous = std::mem::replace(&mut state.definition.paused, paused);
        state.revision += 1;
        Ok((previous, commit))
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
            baseline_estimate: state.policy.baseline_estimate(),
            sequence: state.sequence,
        }
    }

    /// A snapshot of the state if it changed since the last stored one (or always, with `force`), with the
    /// revision it includes. The lock is held only to clone; serialising happens outside it.
    pub fn snapshot(&self, force: bool) -> Option<(Snapshot, u64)> {
        let (saved, revision) = self.saved_state(force)?;
        let snapshot =
            Snapshot { experiment_id: self.id.clone(), sequence: saved.sequence, state: encode_state(&saved) };
        Some((snapshot, revision))
    }

    /// A copy of the state (see [`Experiment::snapshot`]).
    fn saved_state(&self, force: bool) -> Option<(SavedState, u64)> {
        let (policy, sequence, known_baseline_sum, events, deadlines, revision) = {
            let state = self.lock();
            if state.deleted || (!force && state.revision == state.flushed_revision) {
                return None;
            }
            let deadlines: Vec<(i64, DecisionId)> = state.deadlines.iter().map(|&(_, ms, id)| (ms, id)).collect();
            let events: Vec<(String, Answer)> = state
                .idempotency
                .order
                .iter()
                .filter_map(|id| state.idempotency.answers.get(id).map(|a| (id.clone(), a.clone())))
                .collect();
            (state.policy.clone(), state.sequence, state.known_baseline_sum, events, deadlines, state.revision)
        };
        Some((SavedState { sequence, known_baseline_sum, policy, events, deadlines }, revision))
    }

    /// The definition and a copy of the state, for export.
    pub(crate) fn export(&self) -> Result<(ExperimentDef, SavedState), ServiceError> {
        let definition = {
            let state = self.lock();
            if state.deleted {
                return Err(self.gone());
            }
            state.definition.clone()
        };
        // The copy takes the lock again; an alpha change in between shows in both the policy and, on
        // import, is reconciled from the definition (whose alpha the rebuilt policy adopts).
        let (saved, _) = self.saved_state(true).ok_or_else(|| self.gone())?;
        let mut definition = definition;
        definition.policy.alpha = saved.policy.config().alpha;
        Ok((definition, saved))
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
            feature_precision: FeaturePrecision::F64,
        }
    }

    fn features(round: usize, k: usize, d: usize) -> Vec<f64> {
        (0..k * d).map(|i| (((i * 7 + round * 13) % 17) as f64 / 17.0 - 0.4) / (d as f64).sqrt()).collect()
    }

    /// Runs `rounds` decide/reward pairs on `experiment` (waiting for each commit), returning the answers.
    /// Every third reward is left out, so pending decisions are part of the state.
    fn drive(experiment: &Experiment, from: usize, rounds: usize, k: usize, d: usize) -> Vec<Answer> {
        drive_with(experiment, from, rounds, k, d, features)
    }

    /// [`drive`] with the rounds' features from `round_features` (round, k, d).
    fn drive_with(
        experiment: &Experiment,
        from: usize,
        rounds: usize,
        k: usize,
        d: usize,
        round_features: fn(usize, usize, usize) -> Vec<f64>,
    ) -> Vec<Answer> {
        let limits = Limits::default();
        (from..from + rounds)
            .map(|t| {
                let x = round_features(t, k, d);
                let actions = match experiment.shape().layout {
                    Layout::Shared { .. } => ActionSet::PerAction { features: &x, num_actions: k },
                    Layout::Disjoint { .. } => ActionSet::SharedContext { context: &x[..d] },
                    Layout::Arms { .. } => ActionSet::Arms,
                };
                let event = format!("c{t}");
                let input = DecideInput {
                    client_event_id: (t % 2 == 0).then_some(event.as_str()),
                    actions,
                    baseline: 0,
                    baseline_expected_reward: None,
                    round_action_ids: &[],
                };
                let (answer, commit) = experiment.decide(&input, &limits, Instant::now()).unwrap();
                commit.wait_blocking().unwrap();
                if t % 3 != 2 {
                    let reward = 0.3 + 0.1 * (answer.action % 3) as f64 + 0.01 * (t % 5) as f64;
                    let (_, commit) = experiment.reward(&answer.event_id, reward).unwrap();
                    commit.wait_blocking().unwrap();
                }
                answer
            })
            .collect()
    }

    fn policy_json(experiment: &Experiment) -> String {
        serde_json::to_string(&experiment.lock().policy).unwrap()
    }

    #[test]
    fn snapshot_plus_log_replay_equals_an_uninterrupted_run_for_every_algorithm() {
        use crate::store::{SqliteStore, Store};
        for (algorithm, layout) in [
            (Algorithm::Linucb, Layout::Shared { dim: 4 }),
            (Algorithm::Clucb, Layout::Shared { dim: 4 }),
            (Algorithm::Clucb2, Layout::Disjoint { dim: 4, actions: 4 }),
            (Algorithm::Clucb, Layout::Disjoint { dim: 4, actions: 4 }),
            (Algorithm::Lints, Layout::Shared { dim: 4 }),
            (Algorithm::EpsilonGreedy, Layout::Shared { dim: 4 }),
            (Algorithm::ConservativeUcb, Layout::Arms { actions: 4 }),
            (Algorithm::Ucb1, Layout::Arms { actions: 4 }),
        ] {
            for with_snapshot in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
                let writer = Arc::new(LogWriter::start(store.clone()));
                let def = definition(algorithm, layout);
                store.save_definition(&def).unwrap();
                let original = Experiment::new(def.clone(), &Limits::default(), Some(writer.clone())).unwrap();
                drive(&original, 0, 30, 4, 4);
                if with_snapshot {
                    let (snapshot, _) = original.snapshot(false).unwrap();
                    writer.submit(Write::Snapshot { snapshot, compact: true }).wait_blocking().unwrap();
                }
                original.set_alpha(0.2).unwrap().1.wait_blocking().unwrap();
                drive(&original, 30, 30, 4, 4);
                writer.stop();

                let stored = store.load_experiment("e").unwrap().unwrap();
                assert_eq!(stored.snapshot.is_some(), with_snapshot);
                // Retention: the compacted log keeps only what the snapshot does not include.
                let mut kept = 0;
                store
                    .read_log(Some("e"), &mut |_| {
                        kept += 1;
                        Ok::<(), StoreError>(())
                    })
                    .unwrap();
                assert_eq!(kept, stored.log.len());
                let rebuilt = Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap();
                let context = format!("{algorithm:?} {layout:?} snapshot {with_snapshot}");
                assert_eq!(policy_json(&original), policy_json(&rebuilt), "{context}: state differs after replay");
                assert_eq!(original.report(), rebuilt.report(), "{context}");
                let original = Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap();
                let a = drive(&original, 60, 30, 4, 4);
                let b = drive(&rebuilt, 60, 30, 4, 4);
                assert_eq!(a, b, "{context}: diverged after the replay");
            }
        }
    }

    #[test]
    fn an_f32_experiment_learns_from_rounded_features_and_its_log_replays_exactly() {
        use crate::store::{SqliteStore, Store};
        for layout in [Layout::Shared { dim: 4 }, Layout::Disjoint { dim: 4, actions: 4 }] {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
            let writer = Arc::new(LogWriter::start(store.clone()));
            let def =
                ExperimentDef { feature_precision: FeaturePrecision::F32, ..definition(Algorithm::Clucb, layout) };
            store.save_definition(&def).unwrap();
            let compact = Experiment::new(def.clone(), &Limits::default(), Some(writer.clone())).unwrap();
            let answers = drive(&compact, 0, 40, 4, 4);

            // The same rounds with the features rounded by the caller, on an f64 experiment: the same run.
            let exact = Experiment::new(definition(Algorithm::Clucb, layout), &Limits::default(), None).unwrap();
            let rounded_answers = drive_with(&exact, 0, 40, 4, 4, |t, k, d| {
                let mut x = features(t, k, d);
                crate::log::round_to_f32(&mut x).unwrap();
                x
            });
            assert_eq!(answers, rounded_answers, "{layout:?}");
            assert_eq!(policy_json(&compact), policy_json(&exact), "{layout:?}");

            // Out of float32's range: refused, nothing changed.
            let limits = Limits::default();
            let before = compact.report();
            let mut x = features(99, 4, 4);
            x[1] = -1e39;
            let actions = match layout {
                Layout::Shared { .. } => ActionSet::PerAction { features: &x, num_actions: 4 },
                _ => ActionSet::SharedContext { context: &x[..4] },
            };
            let input = DecideInput {
                client_event_id: None,
                actions,
                baseline: 0,
                baseline_expected_reward: None,
                round_action_ids: &[],
            };
            let refused = compact.decide(&input, &limits, Instant::now()).unwrap_err();
            assert!(matches!(&refused, ServiceError::InvalidArgument(m) if m.contains("float32")), "{refused:?}");
            assert_eq!(compact.report(), before);
            writer.stop();

            // The log holds floats, exactly what was learned from, and replays to the same state.
            let stored = store.load_experiment("e").unwrap().unwrap();
            let logged: Vec<&DecisionRecord> = stored
                .log
                .iter()
                .filter_map(|r| match &r.entry {
                    LogEntry::Decision(d) => Some(&**d),
                    _ => None,
                })
                .collect();
            assert_eq!(logged.len(), 40);
            for d in &logged {
                assert!(d.features_f32);
                assert!(d.features.iter().all(|v| f64::from(*v as f32).to_bits() == v.to_bits()));
            }
            let rebuilt = Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap();
            assert_eq!(policy_json(&compact), policy_json(&rebuilt), "{layout:?}: state differs after replay");
        }
    }

    /// Snapshots stored as JSON (before MessagePack) still load, to the same state as the MessagePack
    /// snapshot of the same moment, for every algorithm; the MessagePack one is smaller.
    #[test]
    fn json_snapshots_from_before_messagepack_still_load() {
        for (algorithm, layout) in [
            (Algorithm::Clucb, Layout::Shared { dim: 4 }),
            (Algorithm::Clucb2, Layout::Disjoint { dim: 4, actions: 4 }),
            (Algorithm::Lints, Layout::Shared { dim: 4 }),
            (Algorithm::EpsilonGreedy, Layout::Shared { dim: 4 }),
            (Algorithm::ConservativeUcb, Layout::Arms { actions: 4 }),
        ] {
            let def = definition(algorithm, layout);
            let original = Experiment::new(def.clone(), &Limits::default(), None).unwrap();
            drive(&original, 0, 40, 4, 4);
            let (saved, _) = original.saved_state(true).unwrap();
            let (packed, _) = original.snapshot(true).unwrap();
            let json = Snapshot { state: serde_json::to_vec(&saved).unwrap(), ..packed.clone() };
            assert!(
                packed.state.len() < json.state.len(),
                "{algorithm:?}: {} vs {}",
                packed.state.len(),
                json.state.len()
            );
            let load = |snapshot: Snapshot| {
                let stored = StoredExperiment { definition: def.clone(), snapshot: Some(snapshot), log: vec![] };
                Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap()
            };
            let (from_json, from_packed) = (load(json), load(packed));
            assert_eq!(policy_json(&from_json), policy_json(&original), "{algorithm:?}");
            assert_eq!(policy_json(&from_packed), policy_json(&original), "{algorithm:?}");
            assert_eq!(drive(&from_json, 40, 20, 4, 4), drive(&from_packed, 40, 20, 4, 4), "{algorithm:?}");
        }
        let garbage = Snapshot { experiment_id: "e".into(), sequence: 1, state: b"SBm1\xff\x00".to_vec() };
        let stored = StoredExperiment {
            definition: definition(Algorithm::Clucb, Layout::Shared { dim: 4 }),
            snapshot: Some(garbage),
            log: vec![],
        };
        let error = Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap_err().to_string();
        assert!(error.contains("MessagePack"), "{error}");
    }

    #[test]
    fn a_retried_client_event_id_gets_the_logged_answer_after_a_rebuild() {
        use crate::store::{SqliteStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let writer = Arc::new(LogWriter::start(store.clone()));
        let def = definition(Algorithm::Clucb, Layout::Shared { dim: 4 });
        store.save_definition(&def).unwrap();
        let original = Experiment::new(def, &Limits::default(), Some(writer.clone())).unwrap();
        let answers = drive(&original, 0, 10, 4, 4);
        writer.stop();
        let rebuilt = Experiment::rebuild(
            &store.load_experiment("e").unwrap().unwrap(),
            &Limits::default(),
            Instant::now(),
            None,
        )
        .unwrap();
        // c0 was decided at t = 0 and rewarded: a retry returns the first answer, a second reward is refused.
        assert_eq!(rebuilt.lock().idempotency.get("c0"), Some(&answers[0]));
        assert_eq!(rebuilt.reward("c0", 0.5).unwrap_err().code(), tonic::Code::AlreadyExists);
        // c2 was decided at t = 2 and never rewarded: its reward still joins after the rebuild.
        assert!(rebuilt.reward("c2", 0.5).is_ok());
    }

    #[test]
    fn reward_timeouts_keep_counting_across_a_rebuild() {
        use crate::store::{SqliteStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let writer = Arc::new(LogWriter::start(store.clone()));
        let mut def = definition(Algorithm::Clucb, Layout::Shared { dim: 4 });
        def.reward_timeout_ms = 300;
        store.save_definition(&def).unwrap();
        let original = Experiment::new(def, &Limits::default(), Some(writer.clone())).unwrap();
        let x = features(0, 4, 4);
        let input = DecideInput {
            client_event_id: None,
            actions: ActionSet::PerAction { features: &x, num_actions: 4 },
            baseline: 0,
            baseline_expected_reward: None,
            round_action_ids: &[],
        };
        original.decide(&input, &Limits::default(), Instant::now()).unwrap().1.wait_blocking().unwrap();
        writer.stop();
        std::thread::sleep(Duration::from_millis(350));
        // The process that made the decision is gone, but its deadline (300 ms after the decision) has passed:
        // the rebuilt experiment times it out now, not 300 ms after the restart.
        let stored = store.load_experiment("e").unwrap().unwrap();
        let rebuilt = Experiment::rebuild(&stored, &Limits::default(), Instant::now(), None).unwrap();
        assert_eq!(rebuilt.expire_due(Instant::now(), 10), (1, false));
        assert_eq!(rebuilt.report().stats.dropped, 1);
    }

    #[test]
    fn a_second_reward_is_already_exists_and_not_applied() {
        let experiment =
            Experiment::new(definition(Algorithm::Clucb, Layout::Shared { dim: 4 }), &Limits::default(), None).unwrap();
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
        let experiment = Experiment::new(def, &Limits::default(), None).unwrap();
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
        let (first, _) = experiment.decide(&input, &limits, start).unwrap();
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
