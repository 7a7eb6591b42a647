//! The `EpisodeService`: episodic RL experiments over gRPC. Each experiment is an engine
//! [`EpisodicLearner`] behind one lock; every episode start, transition and episode end is written to the
//! same decision log as the bandits' before it is acknowledged, and an experiment is rebuilt after a restart
//! the same way: latest snapshot, then the log after it, each replayed start checked against the logged one.

use std::sync::{Arc, Mutex, MutexGuard};

use safebet_engine::{
    Driver, EngineError, EpisodePlan, EpisodeSummary, EpisodicConfig, EpisodicLearner, RlAlgorithm, StartState,
};
use safebet_proto as pb;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::ServiceError;
use crate::admin::{append_audit, blocking};
use crate::auth::{Role, principal};
use crate::definition::{EpisodicDef, check_experiment_id};
use crate::log::{EpisodeStartRecord, LogEntry, LogRecord, StepRecord};
use crate::registry::{Registry, now_unix_ms};
use crate::store::{Snapshot, Store, StoreError, StoredEpisodic, Write, decode_state, encode_state};
use crate::writer::{Commit, LogWriter};

/// One episodic experiment.
#[derive(Debug)]
pub struct EpisodicExperiment {
    id: String,
    state: Mutex<EpisodicState>,
    writer: Option<Arc<LogWriter>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EpisodicState {
    learner: EpisodicLearner,
    /// Position in the experiment's history (the log's sequence).
    sequence: u64,
    /// The answers to the latest start, step and end (rebuilt from the log like the learner).
    #[serde(default)]
    last: LastAnswers,
    /// The kill switch: the baseline policy drives every episode started while it is on.
    #[serde(default)]
    paused: bool,
    #[serde(skip)]
    deleted: bool,
    #[serde(skip)]
    revision: u64,
    #[serde(skip)]
    flushed_revision: u64,
}

/// The answers to the latest start, transition and end of an episode, kept so that a call retried after its
/// answer was lost (a timeout, a dropped connection, a server restart) gets that answer again instead of an
/// error: a client cannot tell whether a call it never heard back from was applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LastAnswers {
    /// The plan of the running episode, or of the latest one.
    plan: Option<EpisodePlan>,
    /// The running episode's latest transition and the step count answered for it.
    step: Option<(StepRecord, u64)>,
    /// The summary of the latest ended episode.
    summary: Option<EpisodeSummary>,
}

/// What a call did: changed the experiment (and is logged as `entry`), or repeated the latest change.
enum Outcome<T> {
    Applied(T, LogEntry),
    Repeated(T),
}

impl EpisodicState {
    /// The number of the running episode, if one is running.
    fn running_episode(&self) -> Option<u64> {
        self.learner.active_policy().map(|_| self.learner.stats().episodes - 1)
    }

    fn started(&mut self, paused: bool) -> Result<EpisodePlan, EngineError> {
        let plan = self.learner.start_episode_with(paused)?;
        self.last.plan = Some(plan);
        self.last.step = None;
        Ok(plan)
    }

    fn stepped(&mut self, s: StepRecord) -> Result<u64, EngineError> {
        self.learner.observe(s.step, s.state, s.action, s.reward, s.next_state)?;
        let steps = self.learner.stats().steps;
        self.last.step = Some((s, steps));
        Ok(steps)
    }

    fn ended(&mut self) -> Result<EpisodeSummary, EngineError> {
        let summary = self.learner.end_episode()?;
        self.last.summary = Some(summary);
        self.last.step = None;
        Ok(summary)
    }

    /// Starts the next episode. With `episode` (the number the caller means to start), a retry while that
    /// episode runs returns its plan; any other number is refused.
    fn start(&mut self, episode: Option<u64>) -> Result<Outcome<EpisodePlan>, ServiceError> {
        if let Some(wanted) = episode {
            match (self.running_episode(), self.last.plan) {
                (Some(running), Some(plan)) if running == wanted && plan.episode == wanted => {
                    return Ok(Outcome::Repeated(plan));
                }
                (Some(running), _) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "episode {wanted} cannot start: episode {running} is running (end it first)"
                    )));
                }
                (None, _) => {
                    let next = self.learner.stats().episodes;
                    if wanted != next {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "episode {wanted} cannot start: the next episode is {next}"
                        )));
                    }
                }
            }
        }
        let plan = self.started(self.paused).map_err(|e| ServiceError::engine("episode start", e))?;
        let record = EpisodeStartRecord {
            episode: plan.episode,
            learner_drives: plan.driver == Driver::Learner,
            paused: self.paused,
        };
        Ok(Outcome::Applied(plan, LogEntry::EpisodeStart(record)))
    }

    /// Learns from one transition. The running episode's latest transition sent again is a retry: the same
    /// values get the same answer, different ones are refused (that step is already learned from).
    fn observe(&mut self, step: StepRecord) -> Result<Outcome<u64>, ServiceError> {
        if let (Some(episode), Some((last, steps))) = (self.running_episode(), self.last.step)
            && last.step == step.step
        {
            if last == step {
                return Ok(Outcome::Repeated(steps));
            }
            return Err(ServiceError::AlreadyExists(format!(
                "step {} of episode {episode} was already observed as state {}, action {}, reward {}, next state \
                 {}; this call reports state {}, action {}, reward {}, next state {}",
                last.step,
                last.state,
                last.action,
                last.reward,
                last.next_state,
                step.state,
                step.action,
                step.reward,
                step.next_state
            )));
        }
        let steps = self.stepped(step).map_err(|e| ServiceError::engine("observe", e))?;
        Ok(Outcome::Applied(steps, LogEntry::Step(step)))
    }

    /// Ends the running episode. With `episode`, a retry after that episode ended returns its summary; a
    /// number that is not the running episode is refused.
    fn end(&mut self, episode: Option<u64>) -> Result<Outcome<EpisodeSummary>, ServiceError> {
        if let Some(wanted) = episode {
            match (self.running_episode(), self.last.summary) {
                (None, Some(summary)) if summary.episode == wanted => return Ok(Outcome::Repeated(summary)),
                (Some(running), _) if running == wanted => {}
                (Some(running), _) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "episode {wanted} cannot end: the running episode is {running}"
                    )));
                }
                (None, _) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "episode {wanted} cannot end: no episode is running and the latest ended one is {}",
                        self.last.summary.map_or("none".to_string(), |s| s.episode.to_string())
                    )));
                }
            }
        }
        let summary = self.ended().map_err(|e| ServiceError::engine("episode end", e))?;
        Ok(Outcome::Applied(summary, LogEntry::EpisodeEnd { episode: summary.episode }))
    }
}

fn engine_error(id: &str, error: EngineError) -> ServiceError {
    ServiceError::engine(format!("episodic experiment '{id}'"), error)
}

impl EpisodicExperiment {
    /// A fresh experiment.
    pub fn new(id: String, config: EpisodicConfig, writer: Option<Arc<LogWriter>>) -> Result<Self, ServiceError> {
        let learner = EpisodicLearner::new(config).map_err(|e| engine_error(&id, e))?;
        let state = EpisodicState {
            learner,
            sequence: 0,
            last: LastAnswers::default(),
            paused: false,
            deleted: false,
            revision: 0,
            flushed_revision: 0,
        };
        Ok(EpisodicExperiment { id, state: Mutex::new(state), writer })
    }

    /// Rebuilt from the store: snapshot, then the log after it.
    pub fn rebuild(stored: &StoredEpisodic, writer: Option<Arc<LogWriter>>) -> Result<Self, ServiceError> {
        let corrupt = |reason: String| ServiceError::Store(StoreError::Corrupt { id: stored.id.clone(), reason });
        let config: EpisodicConfig = serde_json::from_str(&stored.config).map_err(|e| corrupt(e.to_string()))?;
        let experiment = match &stored.snapshot {
            Some(snapshot) => {
                let state: EpisodicState = decode_state(&snapshot.state).map_err(corrupt)?;
                EpisodicExperiment { id: stored.id.clone(), state: Mutex::new(state), writer }
            }
            None => EpisodicExperiment::new(stored.id.clone(), config, writer)?,
        };
        {
            let mut state = experiment.lock();
            for record in &stored.log {
                replay(&mut state, record).map_err(corrupt)?;
            }
        }
        Ok(experiment)
    }

    /// The experiment's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The learner's configuration.
    pub fn config(&self) -> EpisodicConfig {
        self.lock().learner.config().clone()
    }

    fn lock(&self) -> MutexGuard<'_, EpisodicState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone(&self) -> ServiceError {
        ServiceError::NotFound(format!("unknown episodic experiment '{}' (deleted)", self.id))
    }

    /// Runs `change` on the state; a change advances the sequence and logs its entry, a repeat waits (through
    /// its commit) for the first answer to be durable.
    fn apply<T>(
        &self,
        change: impl FnOnce(&mut EpisodicState) -> Result<Outcome<T>, ServiceError>,
    ) -> Result<(T, Commit), ServiceError> {
        let mut state = self.lock();
        if state.deleted {
            return Err(self.gone());
        }
        if let Some(reason) = self.writer.as_ref().and_then(|w| w.failure()) {
            return Err(ServiceError::Unavailable(reason));
        }
        // The state's calls name what failed ("observe"); the experiment is named here, where it is known.
        let in_context = |e: ServiceError| match e {
            ServiceError::Engine { context, source } => {
                ServiceError::engine(format!("episodic experiment '{}', {context}", self.id), source)
            }
            other => other,
        };
        let (result, entry) = match change(&mut state).map_err(in_context)? {
            Outcome::Repeated(answer) => {
                return Ok((answer, self.writer.as_ref().map_or_else(Commit::done, |w| w.barrier())));
            }
            Outcome::Applied(answer, entry) => (answer, entry),
        };
        state.sequence += 1;
        state.revision += 1;
        let commit = match &self.writer {
            None => Commit::done(),
            Some(writer) => writer.submit(Write::Log(LogRecord {
                experiment_id: self.id.clone(),
                sequence: state.sequence,
                unix_ms: now_unix_ms(),
                entry,
            })),
        };
        Ok((result, commit))
    }

    /// A snapshot if the state changed since the last stored one (or always, with `force`).
    pub fn snapshot(&self, force: bool) -> Option<(Snapshot, u64)> {
        let state = self.lock().clone();
        if state.deleted || (!force && state.revision == state.flushed_revision) {
            return None;
        }
        let snapshot =
            Snapshot { experiment_id: self.id.clone(), sequence: state.sequence, state: encode_state(&state) };
        Some((snapshot, state.revision))
    }

    /// Records that the snapshot of `revision` is stored.
    pub fn mark_flushed(&self, revision: u64) {
        let mut state = self.lock();
        state.flushed_revision = state.flushed_revision.max(revision);
    }

    /// Marks the experiment deleted: later calls holding it see NOT_FOUND.
    pub fn mark_deleted(&self) {
        self.lock().deleted = true;
    }

    /// Reloads the state from the store (after a failed commit).
    pub fn reload(&self, stored: &StoredEpisodic) -> Result<(), ServiceError> {
        let rebuilt = EpisodicExperiment::rebuild(stored, None)?;
        let fresh = rebuilt.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        if !state.deleted {
            *state = fresh;
        }
        Ok(())
    }

    /// The experiment as the API shows it.
    fn to_proto(&self) -> pb::EpisodicExperiment {
        let state = self.lock();
        pb::EpisodicExperiment {
            id: self.id.clone(),
            spec: Some(spec_of(state.learner.config())),
            paused: state.paused,
        }
    }

    /// Changes the risk budget of the episodes started from now on.
    fn set_alpha(&self, alpha: f64) -> Result<((), Commit), ServiceError> {
        self.apply(|state| {
            state.learner.set_alpha(alpha).map_err(|e| ServiceError::engine("risk budget", e))?;
            Ok(Outcome::Applied((), LogEntry::Alpha { alpha }))
        })
    }

    /// Turns the kill switch on or off; setting it as it already is changes (and logs) nothing.
    fn set_paused(&self, paused: bool) -> Result<((), Commit), ServiceError> {
        self.apply(|state| {
            if state.paused == paused {
                return Ok(Outcome::Repeated(()));
            }
            state.paused = paused;
            Ok(Outcome::Applied((), LogEntry::Paused { paused }))
        })
    }

    /// What the audit trail records of it: its configuration and where it stands.
    fn audit_state(&self) -> String {
        let report = self.report();
        serde_json::json!({
            "learner": self.config(),
            "paused": report.paused,
            "episodes": report.episodes,
            "learner_episodes": report.learner_episodes,
            "steps": report.steps,
        })
        .to_string()
    }

    /// Where the experiment stands.
    pub fn report(&self) -> pb::EpisodicReport {
        let state = self.lock();
        let stats = state.learner.stats();
        pb::EpisodicReport {
            experiment_id: self.id.clone(),
            episodes: stats.episodes,
            learner_episodes: stats.learner_episodes,
            baseline_episodes: stats.baseline_episodes,
            steps: stats.steps,
            last_margin: stats.last_margin,
            episode_running: state.learner.active_policy().is_some(),
            sequence: state.sequence,
            alpha: state.learner.config().alpha,
            paused: state.paused,
        }
    }
}

/// Applies one logged record during a rebuild.
fn replay(state: &mut EpisodicState, record: &LogRecord) -> Result<(), String> {
    if record.sequence != state.sequence + 1 {
        return Err(format!("the log jumps from sequence {} to {}", state.sequence, record.sequence));
    }
    let at = format!("replaying log record {}", record.sequence);
    match &record.entry {
        LogEntry::EpisodeStart(logged) => {
            let plan = state.started(logged.paused).map_err(|e| format!("{at}: {e}"))?;
            if plan.episode != logged.episode || (plan.driver == Driver::Learner) != logged.learner_drives {
                return Err(format!("{at}: the learner started episode {} differently than logged", plan.episode));
            }
        }
        LogEntry::Step(s) => {
            state.stepped(*s).map_err(|e| format!("{at}: {e}"))?;
        }
        LogEntry::EpisodeEnd { .. } => {
            state.ended().map_err(|e| format!("{at}: {e}"))?;
        }
        LogEntry::Alpha { alpha } => state.learner.set_alpha(*alpha).map_err(|e| format!("{at}: {e}"))?,
        LogEntry::Paused { paused } => state.paused = *paused,
        other => return Err(format!("{at}: a {} record in an episodic experiment's log", other.kind())),
    }
    state.sequence = record.sequence;
    Ok(())
}

/// The engine configuration of a spec.
fn config_of(spec: &pb::EpisodicSpec) -> Result<EpisodicConfig, ServiceError> {
    let algorithm = match pb::RlAlgorithm::try_from(spec.algorithm) {
        Ok(pb::RlAlgorithm::Ucbvi) => RlAlgorithm::Ucbvi,
        Ok(pb::RlAlgorithm::ConservativeUcbvi) => RlAlgorithm::ConservativeUcbvi,
        _ => {
            return Err(ServiceError::InvalidArgument(format!(
                "spec.algorithm {} is not RL_ALGORITHM_UCBVI or RL_ALGORITHM_CONSERVATIVE_UCBVI",
                spec.algorithm
            )));
        }
    };
    let start = if spec.start_probabilities.is_empty() {
        StartState::Fixed { state: spec.start_state as usize }
    } else {
        StartState::Distribution { probabilities: spec.start_probabilities.clone() }
    };
    let config = EpisodicConfig {
        algorithm,
        states: spec.states as usize,
        actions: spec.actions as usize,
        horizon: spec.horizon as usize,
        start,
        baseline_policy: spec.baseline_policy.iter().map(|&a| a as usize).collect(),
        baseline_value: spec.baseline_value,
        alpha: spec.alpha.unwrap_or(0.1),
        delta: spec.delta.unwrap_or(0.05),
        reward_range: [spec.reward_min.unwrap_or(0.0), spec.reward_max.unwrap_or(1.0)],
        bonus_scale: spec.bonus_scale.unwrap_or(1.0),
    };
    config.validate().map_err(|e| ServiceError::engine("spec", e))?;
    Ok(config)
}

fn spec_of(config: &EpisodicConfig) -> pb::EpisodicSpec {
    let (start_state, start_probabilities) = match &config.start {
        StartState::Fixed { state } => (*state as u32, vec![]),
        StartState::Distribution { probabilities } => (0, probabilities.clone()),
    };
    pb::EpisodicSpec {
        algorithm: match config.algorithm {
            RlAlgorithm::Ucbvi => pb::RlAlgorithm::Ucbvi,
            RlAlgorithm::ConservativeUcbvi => pb::RlAlgorithm::ConservativeUcbvi,
        } as i32,
        states: config.states as u32,
        actions: config.actions as u32,
        horizon: config.horizon as u32,
        start_state,
        start_probabilities,
        baseline_policy: config.baseline_policy.iter().map(|&a| a as u32).collect(),
        baseline_value: config.baseline_value,
        alpha: Some(config.alpha),
        delta: Some(config.delta),
        reward_min: Some(config.reward_range[0]),
        reward_max: Some(config.reward_range[1]),
        bonus_scale: Some(config.bonus_scale),
    }
}

fn driver(driver: Driver) -> i32 {
    let driver = match driver {
        Driver::Learner => pb::Driver::Learner,
        Driver::Baseline => pb::Driver::Baseline,
    };
    driver as i32
}

/// The `format` of an exported episodic experiment.
pub const EPISODIC_EXPORT_FORMAT: &str = "safebet-episodic/1";

/// Largest number of states times actions times horizon accepted over the API: planning an episode costs
/// H * S^2 * A, and must stay well under a second.
const MAX_PLANNING_SIZE: u64 = 50_000_000;

/// Checks an episodic experiment before it is created: its id, its configuration, and that planning an
/// episode stays fast.
pub fn check_episodic(id: &str, config: &EpisodicConfig) -> Result<(), ServiceError> {
    check_experiment_id(id)?;
    config.validate().map_err(|e| ServiceError::engine(format!("episodic experiment '{id}'"), e))?;
    let size = config.states as u64 * config.states as u64 * config.actions as u64 * config.horizon as u64;
    if size > MAX_PLANNING_SIZE {
        return Err(ServiceError::ResourceExhausted(format!(
            "episodic experiment '{id}': states^2 x actions x horizon = {size} is over the limit of \
             {MAX_PLANNING_SIZE}: planning an episode would take too long"
        )));
    }
    Ok(())
}

/// Creates a declared episodic experiment unless one with its id is stored (whose definition and state are
/// kept: an experiments file never resets a learner; its risk budget and kill switch are steered at run time).
pub(crate) async fn declare_episodic(
    registry: &Registry,
    store: &Arc<dyn Store>,
    declared: &EpisodicDef,
) -> Result<(), ServiceError> {
    check_episodic(&declared.id, &declared.learner)?;
    if let Ok(existing) = registry.episodic(&declared.id) {
        // The risk budget is steered at run time, like a bandit experiment's.
        let stored = EpisodicConfig { alpha: declared.learner.alpha, ..existing.config() };
        if stored != declared.learner {
            tracing::warn!(
                experiment = %declared.id,
                "the experiments file declares this episodic experiment differently from the stored one; the \
                 stored definition and state are kept (delete the experiment to start it anew)"
            );
        }
        return Ok(());
    }
    registry.check_insert(&declared.id)?;
    let experiment =
        Arc::new(EpisodicExperiment::new(declared.id.clone(), declared.learner.clone(), registry.writer().cloned())?);
    let json = serde_json::to_string(&declared.learner).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
    let id = declared.id.clone();
    blocking(store, move |store| store.save_episodic(&id, &json)).await?;
    if declared.paused {
        durable(experiment.set_paused(true)).await?;
    }
    registry.insert_episodic(experiment)?;
    tracing::info!(experiment = %declared.id, "declared episodic experiment created");
    Ok(())
}

/// Serves `safebet.v1.EpisodeService`.
pub struct EpisodeApi {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EpisodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpisodeApi").finish_non_exhaustive()
    }
}

async fn durable<T>(result: Result<(T, Commit), ServiceError>) -> Result<T, ServiceError> {
    let (value, commit) = result?;
    commit.wait().await.map_err(ServiceError::Unavailable)?;
    Ok(value)
}

impl EpisodeApi {
    /// The episode service over `registry`, persisting to `store`.
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>) -> Self {
        EpisodeApi { registry, store, changes: tokio::sync::Mutex::new(()) }
    }

    fn experiment(&self, id: &str) -> Result<Arc<EpisodicExperiment>, ServiceError> {
        check_experiment_id(id)?;
        self.registry.episodic(id)
    }

    /// An operator's change to experiment `id`, durable before it is answered and audited with the state
    /// before and after.
    async fn steer(
        &self,
        actor: &str,
        action: &str,
        id: &str,
        change: impl FnOnce(&EpisodicExperiment) -> Result<((), Commit), ServiceError>,
    ) -> Result<pb::EpisodicExperiment, ServiceError> {
        let experiment = self.experiment(id)?;
        let before = experiment.audit_state();
        durable(change(&experiment)).await?;
        append_audit(&self.store, actor, action, id, Some(before), Some(experiment.audit_state())).await?;
        Ok(experiment.to_proto())
    }
}

#[tonic::async_trait]
impl pb::episode_service_server::EpisodeService for EpisodeApi {
    async fn create_episodic_experiment(
        &self,
        request: Request<pb::CreateEpisodicExperimentRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let request = request.into_inner();
        check_experiment_id(&request.id)?;
        let spec = request.spec.ok_or_else(|| ServiceError::InvalidArgument("spec is required".into()))?;
        let config = config_of(&spec)?;
        check_episodic(&request.id, &config)?;
        let _changes = self.changes.lock().await;
        self.registry.check_insert(&request.id)?;
        let experiment =
            Arc::new(EpisodicExperiment::new(request.id.clone(), config.clone(), self.registry.writer().cloned())?);
        let json = serde_json::to_string(&config).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let id = request.id.clone();
        blocking(&self.store, move |store| store.save_episodic(&id, &json)).await.map_err(ServiceError::from)?;
        self.registry.insert_episodic(experiment.clone())?;
        tracing::info!(experiment = %request.id, "episodic experiment created");
        append_audit(&self.store, &actor, "create_episodic", &request.id, None, Some(experiment.audit_state())).await?;
        Ok(Response::new(experiment.to_proto()))
    }

    async fn get_episodic_experiment(
        &self,
        request: Request<pb::GetEpisodicExperimentRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let experiment = self.experiment(&request.into_inner().experiment_id)?;
        Ok(Response::new(experiment.to_proto()))
    }

    async fn list_episodic_experiments(
        &self,
        request: Request<pb::ListEpisodicExperimentsRequest>,
    ) -> Result<Response<pb::ListEpisodicExperimentsResponse>, Status> {
        principal(&request).check_role(Role::Admin)?;
        let experiments = self.registry.list_episodic().iter().map(|e| e.to_proto()).collect();
        Ok(Response::new(pb::ListEpisodicExperimentsResponse { experiments }))
    }

    async fn start_episode(
        &self,
        request: Request<pb::StartEpisodeRequest>,
    ) -> Result<Response<pb::EpisodePlan>, Status> {
        principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
        let request = request.into_inner();
        let experiment = self.experiment(&request.experiment_id)?;
        let plan = durable(experiment.apply(|state| state.start(request.episode))).await?;
        Ok(Response::new(pb::EpisodePlan {
            episode: plan.episode,
            driver: driver(plan.driver),
            learner_value_lower_bound: plan.learner_value_lower_bound,
            margin: plan.margin,
        }))
    }

    async fn act(&self, request: Request<pb::ActRequest>) -> Result<Response<pb::ActResponse>, Status> {
        principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
        let request = request.into_inner();
        let experiment = self.experiment(&request.experiment_id)?;
        let state = experiment.lock();
        if state.deleted {
            return Err(experiment.gone().into());
        }
        let action = state
            .learner
            .action(request.step as usize, request.state as usize)
            .map_err(|e| engine_error(&experiment.id, e))?;
        Ok(Response::new(pb::ActResponse { action: action as u32 }))
    }

    async fn observe(&self, request: Request<pb::ObserveRequest>) -> Result<Response<pb::ObserveResponse>, Status> {
        principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
        let request = request.into_inner();
        let experiment = self.experiment(&request.experiment_id)?;
        let reward = match request.reward {
            Some(r) if r.is_finite() => r,
            Some(r) => return Err(ServiceError::InvalidArgument(format!("reward must be finite, got {r}")).into()),
            None => return Err(ServiceError::InvalidArgument("reward is required".into()).into()),
        };
        let step = StepRecord {
            step: request.step as usize,
            state: request.state as usize,
            action: request.action as usize,
            reward,
            next_state: request.next_state as usize,
        };
        let steps = durable(experiment.apply(|state| state.observe(step))).await?;
        Ok(Response::new(pb::ObserveResponse { steps }))
    }

    async fn end_episode(
        &self,
        request: Request<pb::EndEpisodeRequest>,
    ) -> Result<Response<pb::EpisodeSummary>, Status> {
        principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
        let request = request.into_inner();
        let experiment = self.experiment(&request.experiment_id)?;
        let summary = durable(experiment.apply(|state| state.end(request.episode))).await?;
        Ok(Response::new(pb::EpisodeSummary {
            episode: summary.episode,
            driver: driver(summary.driver),
            steps: summary.steps as u64,
            episode_return: summary.episode_return,
        }))
    }

    async fn update_episodic_risk_budget(
        &self,
        request: Request<pb::UpdateEpisodicRiskBudgetRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let actor = principal(&request).id;
        let request = request.into_inner();
        let alpha = request.alpha.ok_or_else(|| ServiceError::InvalidArgument("alpha is required".into()))?;
        let changed = self
            .steer(&actor, "update_risk_budget", &request.experiment_id, |experiment| experiment.set_alpha(alpha))
            .await?;
        Ok(Response::new(changed))
    }

    async fn pause_episodic_experiment(
        &self,
        request: Request<pb::PauseEpisodicExperimentRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().experiment_id;
        Ok(Response::new(self.steer(&actor, "pause", &id, |experiment| experiment.set_paused(true)).await?))
    }

    async fn resume_episodic_experiment(
        &self,
        request: Request<pb::ResumeEpisodicExperimentRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().experiment_id;
        Ok(Response::new(self.steer(&actor, "resume", &id, |experiment| experiment.set_paused(false)).await?))
    }

    async fn export_episodic_experiment(
        &self,
        request: Request<pb::ExportEpisodicExperimentRequest>,
    ) -> Result<Response<pb::ExportEpisodicExperimentResponse>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let experiment = self.experiment(&request.into_inner().experiment_id)?;
        let state = experiment.lock().clone();
        #[derive(Serialize)]
        struct Exported<'a> {
            format: &'a str,
            id: &'a str,
            state: &'a EpisodicState,
        }
        let exported = Exported { format: EPISODIC_EXPORT_FORMAT, id: &experiment.id, state: &state };
        let model = serde_json::to_vec(&exported).map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
        Ok(Response::new(pb::ExportEpisodicExperimentResponse {
            experiment_id: experiment.id.clone(),
            sequence: state.sequence,
            model,
        }))
    }

    async fn import_episodic_experiment(
        &self,
        request: Request<pb::ImportEpisodicExperimentRequest>,
    ) -> Result<Response<pb::EpisodicExperiment>, Status> {
        let caller = principal(&request);
        caller.check_role(Role::Admin)?;
        let request = request.into_inner();
        #[derive(Deserialize)]
        struct Exported {
            format: String,
            id: String,
            state: Box<serde_json::value::RawValue>,
        }
        let bad = |what: String| {
            ServiceError::InvalidArgument(format!("model is not an exported episodic experiment: {what}"))
        };
        let exported: Exported = serde_json::from_slice(&request.model).map_err(|e| bad(e.to_string()))?;
        if exported.format != EPISODIC_EXPORT_FORMAT {
            return Err(bad(format!("format '{}', expected '{EPISODIC_EXPORT_FORMAT}'", exported.format)).into());
        }
        let id = if request.id.is_empty() { exported.id } else { request.id };
        check_experiment_id(&id)?;
        caller.check(Role::Admin, &id)?;
        let mut state: EpisodicState = serde_json::from_str(exported.state.get()).map_err(|e| bad(e.to_string()))?;
        state.learner.check_consistent().map_err(|e| bad(e.to_string()))?;
        check_episodic(&id, state.learner.config())?;
        // Stored afresh: the snapshot written below is the whole of its history here.
        (state.revision, state.flushed_revision) = (1, 0);
        let config = state.learner.config().clone();
        let experiment = Arc::new(EpisodicExperiment {
            id: id.clone(),
            state: Mutex::new(state),
            writer: self.registry.writer().cloned(),
        });
        let _changes = self.changes.lock().await;
        self.registry.check_insert(&id)?;
        let json = serde_json::to_string(&config).map_err(|e| bad(e.to_string()))?;
        let saved = id.clone();
        blocking(&self.store, move |store| store.save_episodic(&saved, &json)).await.map_err(ServiceError::from)?;
        if let (Some(writer), Some((snapshot, revision))) = (self.registry.writer(), experiment.snapshot(true)) {
            if let Err(reason) = writer.submit(Write::Snapshot { snapshot, compact: false }).wait().await {
                let deleted = id.clone();
                let _ = blocking(&self.store, move |store| store.delete_episodic(&deleted)).await;
                return Err(ServiceError::Unavailable(reason).into());
            }
            experiment.mark_flushed(revision);
        }
        self.registry.insert_episodic(experiment.clone())?;
        tracing::info!(experiment = %id, "episodic experiment imported");
        append_audit(&self.store, &caller.id, "import_episodic", &id, None, Some(experiment.audit_state())).await?;
        Ok(Response::new(experiment.to_proto()))
    }

    async fn get_episodic_report(
        &self,
        request: Request<pb::GetEpisodicReportRequest>,
    ) -> Result<Response<pb::EpisodicReport>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let experiment = self.experiment(&request.into_inner().experiment_id)?;
        Ok(Response::new(experiment.report()))
    }

    async fn delete_episodic_experiment(
        &self,
        request: Request<pb::DeleteEpisodicExperimentRequest>,
    ) -> Result<Response<pb::DeleteEpisodicExperimentResponse>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().experiment_id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().experiment_id;
        let _changes = self.changes.lock().await;
        let before = self.experiment(&id)?.audit_state();
        let deleted = id.clone();
        blocking(&self.store, move |store| store.delete_episodic(&deleted)).await.map_err(ServiceError::from)?;
        self.registry.remove_episodic(&id)?;
        if let Some(writer) = self.registry.writer() {
            let _ = writer.barrier().wait().await;
        }
        tracing::info!(experiment = %id, "episodic experiment deleted");
        append_audit(&self.store, &actor, "delete_episodic", &id, Some(before), None).await?;
        Ok(Response::new(pb::DeleteEpisodicExperimentResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use safebet_engine::rl::environments::river_swim;

    use super::*;
    use crate::store::SqliteStore;

    /// The kill switch and risk-budget changes are in the log, so the log alone (no snapshot) rebuilds the
    /// experiment exactly: same learner, same switch, same answers to retries.
    #[test]
    fn pauses_and_budget_changes_replay_from_the_log() {
        let env = river_swim(4, 3).unwrap();
        let config = EpisodicConfig {
            algorithm: RlAlgorithm::Ucbvi,
            states: 4,
            actions: 2,
            horizon: 3,
            start: StartState::Fixed { state: env.start },
            baseline_policy: env.baseline.clone(),
            baseline_value: None,
            alpha: 0.1,
            delta: 0.05,
            reward_range: [0.0, 1.0],
            bonus_scale: 1.0,
        };
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        store.save_episodic("r", &serde_json::to_string(&config).unwrap()).unwrap();
        let writer = Arc::new(LogWriter::start(store.clone()));
        let live = EpisodicExperiment::new("r".into(), config, Some(writer.clone())).unwrap();
        let mut drivers = Vec::new();
        for episode in 0..6u64 {
            match episode {
                1 => live.set_paused(true).unwrap().1.wait_blocking().unwrap(),
                2 => live.set_alpha(0.4).unwrap().1.wait_blocking().unwrap(),
                4 => live.set_paused(false).unwrap().1.wait_blocking().unwrap(),
                _ => {}
            }
            let (plan, commit) = live.apply(|state| state.start(Some(episode))).unwrap();
            commit.wait_blocking().unwrap();
            drivers.push(plan.driver);
            let mut state = env.start;
            for step in 0..3 {
                let action = live.lock().learner.action(step, state).unwrap();
                let record =
                    StepRecord { step, state, action, reward: 0.01 * step as f64, next_state: (state + 1) % 4 };
                live.apply(|s| s.observe(record)).unwrap().1.wait_blocking().unwrap();
                state = record.next_state;
            }
            live.apply(|state| state.end(Some(episode))).unwrap().1.wait_blocking().unwrap();
        }
        use Driver::{Baseline, Learner};
        assert_eq!(drivers, [Learner, Baseline, Baseline, Baseline, Learner, Learner], "UCBVI drives unless paused");
        // Pausing twice logs once.
        let sequence = live.lock().sequence;
        live.set_paused(false).unwrap().1.wait_blocking().unwrap();
        assert_eq!(live.lock().sequence, sequence);
        writer.stop();

        let stored = store.load_episodic().unwrap().pop().unwrap();
        assert!(stored.snapshot.is_none(), "the log alone rebuilds it");
        let rebuilt = EpisodicExperiment::rebuild(&stored, None).unwrap();
        let json = |e: &EpisodicExperiment| serde_json::to_string(&*e.lock()).unwrap();
        assert_eq!(json(&rebuilt), json(&live));
        assert_eq!((rebuilt.config().alpha, rebuilt.lock().paused), (0.4, false));
        let summary = rebuilt.apply(|state| state.end(Some(5))).unwrap().0;
        assert_eq!(summary.episode, 5, "a retried end after the rebuild gets its answer");
    }
}
