//! The `DecisionService`: checks each request against its experiment's shape and the limits, hands it to the
//! experiment, and carries the answer back. No policy logic lives here.

use std::sync::Arc;
use std::time::Instant;

use safebet_engine::{ActionSet, Fallback, Layout};
use safebet_proto as pb;
use safebet_proto::decide_request::{Actions, Baseline};
use tonic::{Request, Response, Status};

use crate::ServiceError;
use crate::auth::{Role, principal};
use crate::definition::{check_action_ids, check_experiment_id};
use crate::error::item_error;
use crate::limits::{Limits, MAX_EVENT_ID_LEN};
use crate::registry::{Answer, DecideInput, Experiment, Registry};
use crate::telemetry;
use crate::writer::Commit;

/// Serves `safebet.v1.DecisionService` from the registry.
#[derive(Debug, Clone)]
pub struct DecisionApi {
    registry: Arc<Registry>,
}

impl DecisionApi {
    /// The decision service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        DecisionApi { registry }
    }

    /// Decides one request; the answer may be given once the commit resolves.
    fn decide_one(
        &self,
        request: &pb::DecideRequest,
        cached: &mut Option<Arc<Experiment>>,
        now: Instant,
    ) -> Result<(pb::DecideResponse, Commit), ServiceError> {
        let limits = self.registry.limits();
        let experiment = self.experiment(&request.experiment_id, cached)?;
        let mut scratch = Vec::new();
        let input = decide_input(&experiment, request, limits, &mut scratch)?;
        let (answer, commit) = experiment.decide(&input, limits, now)?;
        Ok((to_response(answer), commit))
    }

    /// Decides `items`, all for one experiment, in order, appending each one's outcome to `decided`: those
    /// that parse are decided as one run ([`Experiment::decide_run`]), the others answered with their error.
    fn decide_run(
        &self,
        items: &[pb::DecideRequest],
        cached: &mut Option<Arc<Experiment>>,
        now: Instant,
        decided: &mut Vec<Result<(pb::DecideResponse, Commit), ServiceError>>,
    ) {
        let experiment = match self.experiment(&items[0].experiment_id, cached) {
            Ok(experiment) if items.len() > 1 => experiment,
            // One item, or an unknown experiment (each item gets its own error).
            _ => {
                decided.extend(items.iter().map(|item| self.decide_one(item, cached, now)));
                return;
            }
        };
        let limits = self.registry.limits();
        let mut scratches = vec![Vec::new(); items.len()];
        let mut inputs = Vec::with_capacity(items.len());
        // Per item: parsed (and so decided in the run, in order), or why not.
        let mut parsed = Vec::with_capacity(items.len());
        for (item, scratch) in items.iter().zip(&mut scratches) {
            match decide_input(&experiment, item, limits, scratch) {
                Ok(input) => {
                    inputs.push(input);
                    parsed.push(Ok(()));
                }
                Err(e) => parsed.push(Err(e)),
            }
        }
        let mut outcomes = experiment.decide_run(&inputs, limits, now).into_iter();
        for item in parsed {
            let outcome = item.and_then(|()| outcomes.next().expect("one outcome per parsed item"));
            decided.push(outcome.map(|(answer, commit)| (to_response(answer), commit)));
        }
    }

    /// Applies one reward; the answer may be given once the commit resolves.
    fn reward_one(
        &self,
        request: &pb::RewardRequest,
        cached: &mut Option<Arc<Experiment>>,
    ) -> Result<(pb::RewardResponse, Commit), ServiceError> {
        let experiment = self.experiment(&request.experiment_id, cached)?;
        check_event_id("event_id", &request.event_id)?;
        let value = match request.value {
            None => return Err(ServiceError::InvalidArgument("value is required".into())),
            Some(v) if !v.is_finite() => {
                return Err(ServiceError::InvalidArgument(format!("value must be finite, got {v}")));
            }
            Some(v) => v,
        };
        let (answer, commit) = experiment.reward(&request.event_id, value)?;
        Ok((pb::RewardResponse { model_version: answer.model_version, sequence: answer.sequence }, commit))
    }

    /// Looks the experiment up, reusing the previous item's when a batch names the same one.
    fn experiment(&self, id: &str, cached: &mut Option<Arc<Experiment>>) -> Result<Arc<Experiment>, ServiceError> {
        if let Some(experiment) = cached
            && experiment.id() == id
        {
            return Ok(experiment.clone());
        }
        check_experiment_id(id)?;
        let experiment = self.registry.get(id)?;
        *cached = Some(experiment.clone());
        Ok(experiment)
    }

    fn check_batch(&self, what: &str, len: usize) -> Result<(), ServiceError> {
        let max = self.registry.limits().max_batch;
        if len > max {
            return Err(ServiceError::ResourceExhausted(format!(
                "batch of {len} {what} is over the limit of {max}; split it"
            )));
        }
        Ok(())
    }
}

/// Waits for a commit; a failed one turns the answer into UNAVAILABLE (the change is not acknowledged).
async fn durable<T>(result: Result<(T, Commit), ServiceError>) -> Result<T, ServiceError> {
    let (value, commit) = result?;
    commit.wait().await.map_err(ServiceError::Unavailable)?;
    Ok(value)
}

#[tonic::async_trait]
impl pb::decision_service_server::DecisionService for DecisionApi {
    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let timer = telemetry::CallTimer::start("Decide");
        let result: Result<Response<pb::DecideResponse>, Status> = async move {
            principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
            let request = request.into_inner();
            let decided = self.decide_one(&request, &mut None, Instant::now());
            Ok(Response::new(durable(decided).await?))
        }
        .await;
        timer.finish(&result);
        result
    }

    async fn decide_batch(
        &self,
        request: Request<pb::DecideBatchRequest>,
    ) -> Result<Response<pb::DecideBatchResponse>, Status> {
        let timer = telemetry::CallTimer::start("DecideBatch");
        let result: Result<Response<pb::DecideBatchResponse>, Status> = async move {
            let caller = principal(&request);
            let request = request.into_inner();
            for item in &request.requests {
                caller.check(Role::Decide, &item.experiment_id)?;
            }
            self.check_batch("decisions", request.requests.len())?;
            let now = Instant::now();
            let mut cached = None;
            // Decide every item first, then wait for their commits: they share one group commit. Consecutive
            // items for one experiment are decided as a run (its lock taken once per run, not per item).
            let items = &request.requests;
            let mut decided = Vec::with_capacity(items.len());
            let mut start = 0;
            while start < items.len() {
                let id = &items[start].experiment_id;
                let end = start + items[start..].iter().take_while(|item| item.experiment_id == *id).count();
                self.decide_run(&items[start..end], &mut cached, now, &mut decided);
                start = end;
            }
            let mut results = Vec::with_capacity(decided.len());
            for outcome in decided {
                results.push(pb::DecideResult {
                    outcome: Some(match durable(outcome).await {
                        Ok(decision) => pb::decide_result::Outcome::Decision(decision),
                        Err(error) => pb::decide_result::Outcome::Error(item_error(error)),
                    }),
                });
            }
            Ok(Response::new(pb::DecideBatchResponse { results }))
        }
        .await;
        timer.finish(&result);
        result
    }

    async fn reward(&self, request: Request<pb::RewardRequest>) -> Result<Response<pb::RewardResponse>, Status> {
        let timer = telemetry::CallTimer::start("Reward");
        let result: Result<Response<pb::RewardResponse>, Status> = async move {
            principal(&request).check(Role::Decide, &request.get_ref().experiment_id)?;
            let request = request.into_inner();
            let applied = self.reward_one(&request, &mut None);
            Ok(Response::new(durable(applied).await?))
        }
        .await;
        timer.finish(&result);
        result
    }

    async fn reward_batch(
        &self,
        request: Request<pb::RewardBatchRequest>,
    ) -> Result<Response<pb::RewardBatchResponse>, Status> {
        let timer = telemetry::CallTimer::start("RewardBatch");
        let result: Result<Response<pb::RewardBatchResponse>, Status> = async move {
            let caller = principal(&request);
            let request = request.into_inner();
            for item in &request.rewards {
                caller.check(Role::Decide, &item.experiment_id)?;
            }
            self.check_batch("rewards", request.rewards.len())?;
            let mut cached = None;
            let applied: Vec<_> = request.rewards.iter().map(|item| self.reward_one(item, &mut cached)).collect();
            let mut results = Vec::with_capacity(applied.len());
            for outcome in applied {
                results.push(pb::RewardResult {
                    outcome: Some(match durable(outcome).await {
                        Ok(applied) => pb::reward_result::Outcome::Applied(applied),
                        Err(error) => pb::reward_result::Outcome::Error(item_error(error)),
                    }),
                });
            }
            Ok(Response::new(pb::RewardBatchResponse { results }))
        }
        .await;
        timer.finish(&result);
        result
    }
}

fn to_response(answer: Answer) -> pb::DecideResponse {
    pb::DecideResponse {
        event_id: answer.event_id,
        action_index: answer.action as u32,
        action_id: answer.action_id,
        propensity: answer.propensity,
        propensity_estimated: answer.propensity_estimated,
        fallback: match answer.fallback {
            Fallback::None => pb::Fallback::None,
            Fallback::Budget => pb::Fallback::Budget,
            Fallback::Forced => pb::Fallback::Paused,
        } as i32,
        played_baseline: answer.played_baseline,
        proposed_action_index: answer.proposed_action as u32,
        model_version: answer.model_version,
        sequence: answer.sequence,
    }
}

/// Checks an event id: non-empty, at most 256 bytes, no control characters.
fn check_event_id(field: &str, id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::InvalidArgument(format!("{field} is empty")));
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(ServiceError::InvalidArgument(format!(
            "{field} is {} bytes long, the limit is {MAX_EVENT_ID_LEN}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "{field} '{}' contains control characters",
            id.escape_debug()
        )));
    }
    Ok(())
}

fn check_finite(field: &str, values: &[f64], dim: usize) -> Result<(), ServiceError> {
    // Branch-free scan first (it vectorises); look for the culprit only when there is one.
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    if !values.iter().fold(false, |bad, v| bad | (v.to_bits() & EXPONENT == EXPONENT)) {
        return Ok(());
    }
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ServiceError::InvalidArgument(format!(
            "{field}[{i}] (action {}, feature {}) is {}: features must be finite",
            i / dim,
            i % dim,
            values[i]
        ))),
    }
}

/// The doubles of a repeated-double field or of one of its little-endian `bytes` twins (doubles or floats),
/// with the name of the one given. Doubles are read in place when they are 8-byte aligned (as an allocator
/// returns them) on a little-endian machine, and copied into `scratch` otherwise; floats are widened into it.
fn doubles<'a>(
    packed: (&'static str, &'a [f64]),
    little_endian: (&'static str, &'a [u8]),
    floats: (&'static str, &'a [u8]),
    scratch: &'a mut Vec<f64>,
) -> Result<(&'static str, &'a [f64]), ServiceError> {
    let ((packed_name, packed), (bytes_name, bytes), (floats_name, floats)) = (packed, little_endian, floats);
    let set = [!packed.is_empty(), !bytes.is_empty(), !floats.is_empty()];
    if set.iter().filter(|&&set| set).count() > 1 {
        let names = [packed_name, bytes_name, floats_name];
        let given = match names.into_iter().zip(set).filter_map(|(name, set)| set.then_some(name)).collect::<Vec<_>>()[..]
        {
            [a, b] => format!("both {a} and {b} are"),
            _ => format!("{packed_name}, {bytes_name} and {floats_name} are all"),
        };
        return Err(ServiceError::InvalidArgument(format!(
            "{given} set: give the values once, in one of {packed_name}, {bytes_name} or {floats_name}"
        )));
    }
    if !floats.is_empty() {
        if !floats.len().is_multiple_of(4) {
            return Err(ServiceError::InvalidArgument(format!(
                "{floats_name} has {} bytes, not a whole number of 4-byte little-endian floats",
                floats.len()
            )));
        }
        scratch.clear();
        scratch.extend(floats.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))));
        return Ok((floats_name, scratch));
    }
    if bytes.is_empty() {
        return Ok((packed_name, packed));
    }
    if !bytes.len().is_multiple_of(8) {
        return Err(ServiceError::InvalidArgument(format!(
            "{bytes_name} has {} bytes, not a whole number of 8-byte little-endian doubles",
            bytes.len()
        )));
    }
    if cfg!(target_endian = "little")
        && let Ok(values) = bytemuck::try_cast_slice::<u8, f64>(bytes)
    {
        return Ok((bytes_name, values));
    }
    scratch.clear();
    scratch.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])));
    Ok((bytes_name, scratch))
}

/// Checks a Decide request against its experiment's shape and the limits, borrowing its features (or copying
/// them into `scratch` when they came as misaligned bytes or as floats).
fn decide_input<'a>(
    experiment: &Experiment,
    request: &'a pb::DecideRequest,
    limits: &Limits,
    scratch: &'a mut Vec<f64>,
) -> Result<DecideInput<'a>, ServiceError> {
    let shape = experiment.shape();
    let client_event_id = match request.client_event_id.as_str() {
        "" => None,
        id => {
            check_event_id("client_event_id", id)?;
            if id.starts_with('#') {
                return Err(ServiceError::InvalidArgument(format!(
                    "client_event_id '{}' starts with '#', which is reserved for server-assigned event ids",
                    id.escape_debug()
                )));
            }
            Some(id)
        }
    };
    let (actions, num_actions, round_action_ids): (ActionSet<'a>, usize, &'a [String]) =
        match (&request.actions, shape.layout) {
            (Some(Actions::PerAction(p)), Layout::Shared { dim }) => {
                let k = p.num_actions as usize;
                if k == 0 {
                    return Err(ServiceError::InvalidArgument(
                        "per_action.num_actions is 0: a round needs at least one action".into(),
                    ));
                }
                if k > limits.max_actions {
                    return Err(ServiceError::ResourceExhausted(format!(
                        "too many actions: per_action.num_actions is {k}, the limit is {}",
                        limits.max_actions
                    )));
                }
                let (field, features) = doubles(
                    ("per_action.features", &p.features),
                    ("per_action.features_le", &p.features_le),
                    ("per_action.features_f32_le", &p.features_f32_le),
                    scratch,
                )?;
                let expected = k * dim;
                if features.len() != expected {
                    return Err(ServiceError::InvalidArgument(format!(
                        "wrong dimension: {field} has {} values, expected num_actions x dim = {k} x {dim} = {expected}",
                        features.len()
                    )));
                }
                check_finite(field, features, dim)?;
                if !p.action_ids.is_empty() {
                    if p.action_ids.len() != k {
                        return Err(ServiceError::InvalidArgument(format!(
                            "per_action.action_ids has {} ids for {k} actions",
                            p.action_ids.len()
                        )));
                    }
                    check_action_ids("per_action.action_ids", &p.action_ids)?;
                }
                (ActionSet::PerAction { features, num_actions: k }, k, &p.action_ids[..])
            }
            (Some(Actions::SharedContext(c)), Layout::Disjoint { dim, actions }) => {
                let (field, context) = doubles(
                    ("shared_context.context", &c.context),
                    ("shared_context.context_le", &c.context_le),
                    ("shared_context.context_f32_le", &c.context_f32_le),
                    scratch,
                )?;
                if context.len() != dim {
                    return Err(ServiceError::InvalidArgument(format!(
                        "wrong dimension: {field} has {} values, the experiment's dim is {dim}",
                        context.len()
                    )));
                }
                if let Some(i) = context.iter().position(|v| !v.is_finite()) {
                    return Err(ServiceError::InvalidArgument(format!(
                        "{field}[{i}] is {}: features must be finite",
                        context[i]
                    )));
                }
                (ActionSet::SharedContext { context }, actions, &[][..])
            }
            (Some(Actions::Arms(_)) | None, Layout::Arms { actions }) => (ActionSet::Arms, actions, &[][..]),
            (given, layout) => {
                let wanted = match layout {
                    Layout::Shared { .. } => "per_action",
                    Layout::Disjoint { .. } => "shared_context",
                    Layout::Arms { .. } => "arms",
                };
                let message = match given {
                    None => format!("actions are missing: experiment '{}' needs {wanted}", experiment.id()),
                    Some(Actions::PerAction(_)) => format!(
                        "experiment '{}' uses the {} layout: give {wanted}, not per_action",
                        experiment.id(),
                        layout.name()
                    ),
                    Some(Actions::SharedContext(_)) => format!(
                        "experiment '{}' uses the {} layout: give {wanted}, not shared_context",
                        experiment.id(),
                        layout.name()
                    ),
                    Some(Actions::Arms(_)) => format!(
                        "experiment '{}' uses the {} layout: give {wanted}, not arms",
                        experiment.id(),
                        layout.name()
                    ),
                };
                return Err(if given.is_none() {
                    ServiceError::InvalidArgument(message)
                } else {
                    ServiceError::FailedPrecondition(message)
                });
            }
        };
    let baseline = match &request.baseline {
        None => {
            return Err(ServiceError::InvalidArgument(
                "baseline is required: set baseline_index or baseline_action_id".into(),
            ));
        }
        Some(Baseline::BaselineIndex(i)) => {
            let i = *i as usize;
            if i >= num_actions {
                return Err(ServiceError::InvalidArgument(format!(
                    "baseline_index {i} is out of range: the round has {num_actions} actions"
                )));
            }
            i
        }
        Some(Baseline::BaselineActionId(id)) => {
            let found = if round_action_ids.is_empty() {
                shape.fixed_action(id)
            } else {
                round_action_ids.iter().position(|a| a == id)
            };
            found.ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "baseline_action_id '{}' names no action of this round",
                    id.escape_debug()
                ))
            })?
        }
    };
    match request.baseline_expected_reward {
        Some(mu) if !mu.is_finite() => {
            return Err(ServiceError::InvalidArgument(format!("baseline_expected_reward must be finite, got {mu}")));
        }
        None if shape.baseline_known => {
            return Err(ServiceError::FailedPrecondition(format!(
                "experiment '{}' declares baseline rewards known: every Decide must give baseline_expected_reward",
                experiment.id()
            )));
        }
        _ => {}
    }
    Ok(DecideInput {
        client_event_id,
        actions,
        baseline,
        baseline_expected_reward: request.baseline_expected_reward,
        round_action_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_bytes_read_the_same_aligned_or_not() {
        let values = [0.25, -1.5, f64::MIN_POSITIVE, 1e300];
        let mut buffer = vec![0u8; 1];
        buffer.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        buffer.extend([0u8; 7]);
        // Every starting offset within 8 bytes: at most one is 8-byte aligned, the others take the copy.
        for offset in 0..8 {
            let mut shifted = vec![0u8; offset];
            shifted.extend(&buffer[1..33]);
            let mut scratch = Vec::new();
            let (name, read) = doubles(("f", &[]), ("f_le", &shifted[offset..]), ("f_f32", &[]), &mut scratch).unwrap();
            assert_eq!(name, "f_le");
            assert_eq!(read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), values.map(f64::to_bits));
        }
        let mut scratch = Vec::new();
        let (name, read) = doubles(("f", &values), ("f_le", &[]), ("f_f32", &[]), &mut scratch).unwrap();
        assert_eq!((name, read), ("f", &values[..]));
    }

    #[test]
    fn floats_widen_exactly_and_one_encoding_is_given() {
        let floats = [0.1_f32, -0.0, f32::MIN_POSITIVE, 3e38, f32::NAN];
        let bytes: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut scratch = Vec::new();
        let (name, read) = doubles(("f", &[]), ("f_le", &[]), ("f_f32", &bytes), &mut scratch).unwrap();
        assert_eq!(name, "f_f32");
        let widened: Vec<u64> = floats.iter().map(|v| f64::from(*v).to_bits()).collect();
        assert_eq!(read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), widened);
        let ragged = doubles(("f", &[]), ("f_le", &[]), ("f_f32", &bytes[..7]), &mut scratch).unwrap_err();
        assert!(ragged.to_string().contains("f_f32 has 7 bytes, not a whole number of 4-byte"), "{ragged}");
        let twice = doubles(("f", &[1.0]), ("f_le", &[]), ("f_f32", &bytes), &mut scratch).unwrap_err();
        assert!(twice.to_string().contains("both f and f_f32 are set"), "{twice}");
        let thrice = doubles(("f", &[1.0]), ("f_le", &[0; 8]), ("f_f32", &bytes), &mut scratch).unwrap_err();
        assert!(thrice.to_string().contains("f, f_le and f_f32 are all set"), "{thrice}");
    }
}
