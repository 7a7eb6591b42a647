//! The `ExperimentAdmin` service: operators create and steer experiments. Every change is written to the
//! store before it is acknowledged; if the store fails the change is undone and the call fails with
//! UNAVAILABLE, so a rejected request changes nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use safebet_proto as pb;
use tonic::{Request, Response, Status};

use safebet_engine::{DecisionLogSettings, DecisionTarget, Estimator, LoggedDecision, evaluate_decision_log};

use crate::ServiceError;
use crate::auth::{Role, principal};
use crate::definition::{ExperimentDef, check_experiment_id};
use crate::log::{LogEntry, LogRecord};
use crate::registry::{Experiment, Registry, Report, SavedState};
use crate::store::{AuditEntry, Snapshot, Store, StoreError, StoredExperiment, Write, encode_state};
use crate::writer::Commit;

/// The format tag of exported experiments.
pub const EXPORT_FORMAT: &str = "safebet-experiment/1";

/// Serves `safebet.v1.ExperimentAdmin`.
pub struct AdminApi {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    /// Serialises admin changes, so that "check, write to the store, apply" never interleaves between two
    /// operators (two creates of one id, a delete racing an update). Decisions never take it.
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").field("experiments", &self.registry.len()).finish_non_exhaustive()
    }
}

/// Runs a blocking store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || call(&*store)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::ShuttingDown),
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The part of an experiment's state the audit trail records: its definition and drift alarm, as JSON.
fn audit_state(experiment: &Experiment) -> String {
    let report = experiment.report();
    serde_json::json!({ "definition": report.definition, "drift_alarm": report.stats.drift_alarm }).to_string()
}

/// Writes an audit entry; a change whose entry cannot be written is reported UNAVAILABLE (it was made).
pub(crate) async fn append_audit(
    store: &Arc<dyn Store>,
    actor: &str,
    action: &str,
    experiment: &str,
    before: Option<String>,
    after: Option<String>,
) -> Result<(), ServiceError> {
    let entry = AuditEntry {
        unix_ms: now_unix_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        experiment_id: experiment.to_owned(),
        before,
        after,
    };
    blocking(store, move |store| store.append_audit(&entry)).await.map_err(|e| {
        tracing::error!(error = %e, "audit entry not written");
        ServiceError::Unavailable(format!("the change was made but its audit entry could not be written: {e}"))
    })
}

impl AdminApi {
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        experiment: &str,
        before: Option<String>,
        after: Option<String>,
    ) -> Result<(), ServiceError> {
        append_audit(&self.store, actor, action, experiment, before, after).await
    }

    /// Runs an admin change on experiment `id` and audits it with the state before and after.
    async fn audited(
        &self,
        actor: &str,
        action: &str,
        id: &str,
        change: impl std::future::Future<Output = Result<pb::Experiment, ServiceError>>,
    ) -> Result<pb::Experiment, ServiceError> {
        let before = self.registry.get(id).ok().map(|e| audit_state(&e));
        let changed = change.await?;
        let after = self.registry.get(id).ok().map(|e| audit_state(&e));
        self.audit(actor, action, id, before, after).await?;
        Ok(changed)
    }

    /// The admin service over `registry`, persisting to `store`.
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>) -> Self {
        AdminApi { registry, store, changes: tokio::sync::Mutex::new(()) }
    }

    fn experiment(&self, id: &str) -> Result<Arc<Experiment>, ServiceError> {
        check_experiment_id(id)?;
        self.registry.get(id)
    }

    async fn create(&self, request: pb::CreateExperimentRequest) -> Result<pb::Experiment, ServiceError> {
        check_experiment_id(&request.id)?;
        let spec = request.spec.ok_or_else(|| ServiceError::InvalidArgument("spec is required".into()))?;
        let mut definition = ExperimentDef::from_spec(request.id, spec)?;
        definition.check(self.registry.limits())?;
        let _changes = self.changes.lock().await;
        self.registry.check_insert(&definition.id)?;
        definition.created_unix_ms = now_unix_ms();
        let experiment = Arc::new(self.registry.fresh(definition.clone())?);
        let saved = definition.clone();
        blocking(&self.store, move |store| store.save_definition(&saved)).await?;
        self.registry.insert(experiment)?;
        tracing::info!(experiment = %definition.id, algorithm = definition.policy.algorithm.name(), "experiment created");
        Ok(definition.to_proto())
    }

    async fn export(&self, id: &str) -> Result<pb::ExportModelResponse, ServiceError> {
        let experiment = self.experiment(id)?;
        let (definition, state) = experiment.export()?;
        // JSON, whatever the store keeps: an export is read by people and other tools.
        #[derive(serde::Serialize)]
        struct Exported<'a> {
            format: &'a str,
            definition: &'a ExperimentDef,
            state: &'a SavedState,
        }
        let model = serde_json::to_vec(&Exported { format: EXPORT_FORMAT, definition: &definition, state: &state })
            .map_err(|e| ServiceError::FailedPrecondition(format!("exporting '{id}': {e}")))?;
        Ok(pb::ExportModelResponse { id: id.to_owned(), sequence: state.sequence, model })
    }

    async fn import(
        &self,
        request: pb::ImportModelRequest,
        caller: &crate::auth::Principal,
    ) -> Result<pb::Experiment, ServiceError> {
        #[derive(serde::Deserialize)]
        struct Exported {
            format: String,
            definition: ExperimentDef,
            state: Box<serde_json::value::RawValue>,
        }
        let bad = |what: String| ServiceError::InvalidArgument(format!("model is not an exported experiment: {what}"));
        let exported: Exported = serde_json::from_slice(&request.model).map_err(|e| bad(e.to_string()))?;
        if exported.format != EXPORT_FORMAT {
            return Err(bad(format!("format '{}', expected '{EXPORT_FORMAT}'", exported.format)));
        }
        let saved: SavedState = serde_json::from_str(exported.state.get()).map_err(|e| bad(e.to_string()))?;
        saved.policy.check_consistent().map_err(|e| bad(e.to_string()))?;
        let mut definition = exported.definition;
        if !request.id.is_empty() {
            definition.id = request.id;
        }
        check_experiment_id(&definition.id)?;
        caller
            .check(Role::Admin, &definition.id)
            .map_err(|status| ServiceError::PermissionDenied(status.message().to_owned()))?;
        definition.check(self.registry.limits())?;
        if saved.policy.config() != &definition.policy
            && (saved.policy.config().algorithm != definition.policy.algorithm
                || saved.policy.config().layout != definition.policy.layout)
        {
            return Err(bad("the state's policy does not match the definition's".into()));
        }
        let snapshot =
            Snapshot { experiment_id: definition.id.clone(), sequence: saved.sequence, state: encode_state(&saved) };
        let _changes = self.changes.lock().await;
        self.registry.check_insert(&definition.id)?;
        definition.created_unix_ms = now_unix_ms();
        let stored = StoredExperiment { definition: definition.clone(), snapshot: Some(snapshot.clone()), log: vec![] };
        let experiment = Arc::new(self.registry.rebuilt(&stored, std::time::Instant::now())?);
        let saved_definition = definition.clone();
        blocking(&self.store, move |store| store.save_definition(&saved_definition)).await?;
        if let Some(writer) = self.registry.writer() {
            let commit = writer.submit(Write::Snapshot { snapshot, compact: false });
            if let Err(reason) = commit.wait().await {
                let id = definition.id.clone();
                let _ = blocking(&self.store, move |store| store.delete_experiment(&id)).await;
                return Err(ServiceError::Unavailable(reason));
            }
        }
        self.registry.insert(experiment)?;
        tracing::info!(experiment = %definition.id, "experiment imported");
        Ok(definition.to_proto())
    }

    /// Applies a change to an experiment, saves its definition, and undoes the change if saving fails.
    async fn change<T: Copy + Send + 'static>(
        &self,
        id: &str,
        apply: impl Fn(&Experiment, T) -> Result<(T, Commit), ServiceError>,
        value: T,
    ) -> Result<pb::Experiment, ServiceError> {
        let _changes = self.changes.lock().await;
        let experiment = self.experiment(id)?;
        let (previous, commit) = apply(&experiment, value)?;
        commit.wait().await.map_err(ServiceError::Unavailable)?;
        let definition = experiment.definition();
        let saved = definition.clone();
        if let Err(e) = blocking(&self.store, move |store| store.save_definition(&saved)).await {
            let (_, undo) = apply(&experiment, previous)?;
            undo.wait().await.map_err(ServiceError::Unavailable)?;
            return Err(e.into());
        }
        Ok(definition.to_proto())
    }
}

/// Log records the report's off-policy comparison looks back over (decisions and their rewards).
const OPE_WINDOW_RECORDS: usize = 20_000;
/// Bootstrap resamples of the report's interval: enough for a 95% interval, cheap enough for a report.
const OPE_RESAMPLES: usize = 1_000;

/// The learner's mean reward minus the baseline's doubly robust estimate on the same logged rounds.
fn learner_vs_baseline(records: &[LogRecord]) -> Option<pb::OpeComparison> {
    let mut decisions: Vec<LoggedDecision> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for record in records {
        match &record.entry {
            LogEntry::Decision(d) => {
                index.insert(d.decision_id, decisions.len());
                decisions.push(LoggedDecision {
                    decision_id: Some(d.decision_id),
                    num_actions: d.num_actions,
                    action: d.action,
                    baseline: d.baseline,
                    propensity: d.propensity,
                    reward: None,
                    features: Some(d.features.clone()),
                    layout: d.layout,
                });
            }
            LogEntry::Reward { decision_id, value, .. } => {
                if let Some(&i) = index.get(decision_id) {
                    decisions[i].reward = Some(*value);
                }
            }
            _ => {}
        }
    }
    let settings = DecisionLogSettings { resamples: OPE_RESAMPLES, ..DecisionLogSettings::default() };
    let evaluation = evaluate_decision_log(&decisions, &[DecisionTarget::Baseline], &settings).ok()?;
    let target = evaluation.targets.first()?;
    let dr = target.estimates.iter().find(|e| e.estimator == Estimator::Dr)?;
    let difference = target.logged_minus_target;
    Some(pb::OpeComparison {
        estimate: difference.estimate,
        lower: difference.lower,
        upper: difference.upper,
        level: 1.0 - difference.alpha,
        rounds: evaluation.rewarded as u64,
        learner_mean: evaluation.logged.estimate,
        baseline_estimate: dr.interval.estimate,
    })
}

fn state(paused: bool) -> i32 {
    (if paused { pb::ExperimentState::Paused } else { pb::ExperimentState::Active }) as i32
}

fn to_report(report: Report) -> pb::ExperimentReport {
    let Report { definition, stats, known_baseline_sum, baseline_estimate, sequence } = report;
    pb::ExperimentReport {
        experiment_id: definition.id,
        state: state(definition.paused),
        alpha: definition.policy.alpha,
        decisions: stats.decisions,
        rewards_received: stats.rewards.saturating_sub(stats.defaulted),
        rewards_pending: stats.pending,
        rewards_dropped: stats.dropped,
        rewards_defaulted: stats.defaulted,
        cumulative_reward: stats.reward_sum,
        baseline_estimate: known_baseline_sum.or(baseline_estimate),
        budget_margin: stats.last_margin,
        learner_plays: stats.learner_plays,
        baseline_plays: stats.baseline_plays,
        budget_fallbacks: stats.budget_fallbacks,
        forced_baseline_plays: stats.forced_plays,
        baseline_play_share: if stats.decisions == 0 {
            0.0
        } else {
            stats.baseline_plays as f64 / stats.decisions as f64
        },
        model_version: stats.model_version,
        sequence,
        learner_vs_baseline: None,
        drift_statistic: stats.drift_statistic,
        drift_alarm: stats
            .drift_alarm
            .map(|alarm| pb::DriftAlarm { at_reward: alarm.at_reward, statistic: alarm.statistic }),
    }
}

#[tonic::async_trait]
impl pb::experiment_admin_server::ExperimentAdmin for AdminApi {
    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let id = request.get_ref().id.clone();
        Ok(Response::new(self.audited(&actor, "create", &id, self.create(request.into_inner())).await?))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let experiment = self.experiment(&request.into_inner().id)?;
        Ok(Response::new(experiment.definition().to_proto()))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        principal(&request).check_role(Role::Admin)?;
        let experiments = self.registry.list().iter().map(|e| e.definition().to_proto()).collect();
        Ok(Response::new(pb::ListExperimentsResponse { experiments }))
    }

    async fn update_risk_budget(
        &self,
        request: Request<pb::UpdateRiskBudgetRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let request = request.into_inner();
        let alpha = match request.alpha {
            None => return Err(ServiceError::InvalidArgument("alpha is required".into()).into()),
            Some(alpha) if !(0.0..1.0).contains(&alpha) => {
                return Err(ServiceError::InvalidArgument(format!("alpha must be in [0, 1), got {alpha}")).into());
            }
            Some(alpha) => alpha,
        };
        let updated = self
            .audited(&actor, "update_risk_budget", &request.id, self.change(&request.id, Experiment::set_alpha, alpha))
            .await?;
        tracing::info!(experiment = %request.id, alpha, "risk budget updated");
        Ok(Response::new(updated))
    }

    async fn pause_experiment(
        &self,
        request: Request<pb::PauseExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().id;
        let updated = self.audited(&actor, "pause", &id, self.change(&id, Experiment::set_paused, true)).await?;
        tracing::warn!(experiment = %id, "experiment paused: every decision plays the baseline");
        Ok(Response::new(updated))
    }

    async fn resume_experiment(
        &self,
        request: Request<pb::ResumeExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().id;
        let updated = self.audited(&actor, "resume", &id, self.change(&id, Experiment::set_paused, false)).await?;
        tracing::info!(experiment = %id, "experiment resumed");
        Ok(Response::new(updated))
    }

    async fn delete_experiment(
        &self,
        request: Request<pb::DeleteExperimentRequest>,
    ) -> Result<Response<pb::DeleteExperimentResponse>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let actor = principal(&request).id;
        let id = request.into_inner().id;
        let _changes = self.changes.lock().await;
        let before = audit_state(&*self.experiment(&id)?);
        let deleted = id.clone();
        blocking(&self.store, move |store| store.delete_experiment(&deleted)).await.map_err(ServiceError::from)?;
        self.registry.remove(&id)?;
        // Records of calls that were deciding as it was removed are dropped by the store (no definition);
        // wait for them, so that an experiment created next under the same id starts with an empty log.
        if let Some(writer) = self.registry.writer() {
            let _ = writer.barrier().wait().await;
        }
        tracing::info!(experiment = %id, "experiment deleted");
        self.audit(&actor, "delete", &id, Some(before), None).await?;
        Ok(Response::new(pb::DeleteExperimentResponse {}))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::ExperimentReport>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        let experiment = self.experiment(&request.into_inner().id)?;
        let mut report = to_report(experiment.report());
        let id = experiment.id().to_owned();
        let recent = blocking(&self.store, move |store| store.recent_log(&id, OPE_WINDOW_RECORDS)).await;
        match recent {
            Ok(records) => report.learner_vs_baseline = learner_vs_baseline(&records),
            Err(e) => tracing::warn!(experiment = %experiment.id(), error = %e, "report without OPE: log unreadable"),
        }
        Ok(Response::new(report))
    }

    async fn export_model(
        &self,
        request: Request<pb::ExportModelRequest>,
    ) -> Result<Response<pb::ExportModelResponse>, Status> {
        principal(&request).check(Role::Admin, &request.get_ref().id)?;
        Ok(Response::new(self.export(&request.into_inner().id).await?))
    }

    async fn import_model(&self, request: Request<pb::ImportModelRequest>) -> Result<Response<pb::Experiment>, Status> {
        let caller = principal(&request);
        match request.get_ref().id.as_str() {
            // The exported id is known only once the model is read: checked then.
            "" => caller.check_role(Role::Admin)?,
            id => caller.check(Role::Admin, id)?,
        }
        let imported = self.import(request.into_inner(), &caller).await?;
        let after = self.registry.get(&imported.id).ok().map(|e| audit_state(&e));
        self.audit(&caller.id, "import", &imported.id, None, after).await?;
        Ok(Response::new(imported))
    }

    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let experiment = request.get_ref().experiment_id.clone();
        // An empty id asks for every experiment's entries: only unscoped admin keys may.
        principal(&request).check(Role::Admin, &experiment)?;
        let filter = (!experiment.is_empty()).then_some(experiment);
        let entries = blocking(&self.store, move |store| store.audit_entries(filter.as_deref()))
            .await
            .map_err(ServiceError::from)?;
        let entries = entries
            .into_iter()
            .map(|e| pb::AuditEntry {
                unix_ms: e.unix_ms,
                actor: e.actor,
                action: e.action,
                experiment_id: e.experiment_id,
                before: e.before.unwrap_or_default(),
                after: e.after.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListAuditEntriesResponse { entries }))
    }
}
