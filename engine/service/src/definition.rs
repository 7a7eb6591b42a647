//! What defines an experiment besides its learner's state: the policy configuration plus the service-level
//! settings (reward timeout, action names, kill switch). Converted from the admin API's `ExperimentSpec`, read
//! from a TOML experiments file, and saved by the store.

use std::collections::HashSet;
use std::path::Path;

use safebet_engine::{
    Algorithm, BaselineReward, Constraint, DriftGuardConfig, EpisodicConfig, Layout, PendingResolution, PolicyConfig,
};
use safebet_proto as pb;
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::limits::{Limits, MAX_EVENT_ID_LEN, MAX_EXPERIMENT_ID_LEN};

/// One experiment's definition. Checked by [`ExperimentDef::check`] before the service accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentDef {
    /// 1 to 128 characters from `[A-Za-z0-9._-]`.
    pub id: String,
    /// The learner and its hyper-parameters; `policy.alpha` is the current risk budget.
    pub policy: PolicyConfig,
    /// Rewards arriving later than this many milliseconds after their decision are not applied; 0 = never.
    #[serde(default)]
    pub reward_timeout_ms: u64,
    /// Optional names of the fixed actions (disjoint and arms layouts), one per action.
    #[serde(default)]
    pub action_ids: Vec<String>,
    /// Kill switch: every decision plays the baseline.
    #[serde(default)]
    pub paused: bool,
    /// Creation time, milliseconds since the Unix epoch (set by the service).
    #[serde(default)]
    pub created_unix_ms: i64,
    /// The precision features are learned from and logged at.
    #[serde(default, skip_serializing_if = "FeaturePrecision::is_f64")]
    pub feature_precision: FeaturePrecision,
}

/// The precision an experiment's features are learned from and logged at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeaturePrecision {
    /// As given: 8 bytes per value in the log.
    #[default]
    F64,
    /// Rounded to the nearest `f32` on arrival, before the learner sees them, so the log's 4 bytes per value
    /// hold exactly what was learned from: half the log, for features with no more than `f32`'s precision.
    F32,
}

impl FeaturePrecision {
    fn is_f64(&self) -> bool {
        *self == FeaturePrecision::F64
    }
}

/// An episodic (RL) experiment declared in an experiments file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodicDef {
    /// 1 to 128 characters from `[A-Za-z0-9._-]`, unique across bandit and episodic experiments.
    pub id: String,
    /// The learner: algorithm, states, actions, horizon, start, baseline policy, alpha, ...
    pub learner: EpisodicConfig,
    /// Created with the kill switch on: the baseline policy drives until an operator resumes it.
    #[serde(default)]
    pub paused: bool,
}

/// The experiments file given to `safebet serve --experiments FILE`: bandit experiments (`[[experiment]]`)
/// and episodic RL ones (`[[episodic]]`):
///
/// ```toml
/// [[experiment]]
/// id = "homepage"
/// reward_timeout_ms = 60000
/// policy = { algorithm = "clucb2", layout = { kind = "shared", dim = 32 }, alpha = 0.05 }
///
/// [[episodic]]
/// id = "onboarding"
/// [episodic.learner]
/// algorithm = "conservative_ucbvi"
/// states = 6
/// actions = 2
/// horizon = 20
/// start = { kind = "fixed", state = 0 }
/// baseline_policy = [0, 0, 0, 0, 0, 0]
/// baseline_value = 0.1
/// alpha = 0.2
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentsFile {
    /// The declared bandit experiments.
    #[serde(default)]
    pub experiment: Vec<ExperimentDef>,
    /// The declared episodic experiments.
    #[serde(default)]
    pub episodic: Vec<EpisodicDef>,
}

impl ExperimentsFile {
    /// Parses an experiments file from TOML text.
    pub fn parse(text: &str) -> Result<ExperimentsFile, ServiceError> {
        let file: ExperimentsFile =
            toml::from_str(text).map_err(|e| ServiceError::InvalidArgument(format!("experiments file: {e}")))?;
        let mut seen = HashSet::new();
        for id in file.experiment.iter().map(|d| &d.id).chain(file.episodic.iter().map(|d| &d.id)) {
            if !seen.insert(id.as_str()) {
                return Err(ServiceError::InvalidArgument(format!(
                    "experiments file: experiment id '{id}' is declared twice"
                )));
            }
        }
        Ok(file)
    }

    /// Reads and parses an experiments file.
    pub fn read(path: &Path) -> Result<ExperimentsFile, ServiceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServiceError::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", path.display())))
    }
}

/// Checks an experiment id: non-empty, at most 128 bytes, only `[A-Za-z0-9._-]` (ids appear in logs, file
/// names and URLs).
pub(crate) fn check_experiment_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::InvalidArgument("experiment id is empty".into()));
    }
    if id.len() > MAX_EXPERIMENT_ID_LEN {
        return Err(ServiceError::InvalidArgument(format!(
            "experiment id is {} bytes long, the limit is {MAX_EXPERIMENT_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ServiceError::InvalidArgument(format!(
            "experiment id '{}' contains {c:?}: use only letters, digits, '.', '_' and '-'",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Checks a list of action ids: each non-empty and at most 256 bytes, no two equal.
pub(crate) fn check_action_ids(field: &str, ids: &[String]) -> Result<(), ServiceError> {
    let mut seen = HashSet::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        if id.is_empty() || id.len() > MAX_EVENT_ID_LEN {
            return Err(ServiceError::InvalidArgument(format!(
                "{field}[{i}] must be 1 to {MAX_EVENT_ID_LEN} bytes long, got {}",
                id.len()
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(ServiceError::InvalidArgument(format!("{field}[{i}] '{id}' appears twice")));
        }
    }
    Ok(())
}

impl ExperimentDef {
    /// The number of fixed actions (disjoint and arms layouts).
    pub fn fixed_actions(&self) -> Option<usize> {
        match self.policy.layout {
            Layout::Shared { .. } => None,
            Layout::Disjoint { actions, .. } | Layout::Arms { actions } => Some(actions),
        }
    }

    /// Checks everything the service and the engine require of a definition.
    pub fn check(&self, limits: &Limits) -> Result<(), ServiceError> {
        check_experiment_id(&self.id)?;
        let context = format!("experiment '{}'", self.id);
        match self.policy.layout {
            Layout::Shared { dim } | Layout::Disjoint { dim, .. } if dim > limits.max_dim => {
                return Err(ServiceError::InvalidArgument(format!(
                    "{context}: layout dim {dim} is over the limit of {}",
                    limits.max_dim
                )));
            }
            Layout::Disjoint { actions, .. } | Layout::Arms { actions } if actions > limits.max_actions => {
                return Err(ServiceError::InvalidArgument(format!(
                    "{context}: layout has {actions} actions, over the limit of {}",
                    limits.max_actions
                )));
            }
            _ => {}
        }
        match self.fixed_actions() {
            None if !self.action_ids.is_empty() => {
                return Err(ServiceError::InvalidArgument(format!(
                    "{context}: action_ids are only for the disjoint and arms layouts; with the shared layout \
                     each Decide names its own actions"
                )));
            }
            Some(k) if !self.action_ids.is_empty() && self.action_ids.len() != k => {
                return Err(ServiceError::InvalidArgument(format!(
                    "{context}: {} action_ids given for {k} actions",
                    self.action_ids.len()
                )));
            }
            _ => {}
        }
        check_action_ids("action_ids", &self.action_ids)?;
        if self.reward_timeout_ms > MAX_REWARD_TIMEOUT_MS {
            return Err(ServiceError::InvalidArgument(format!(
                "{context}: reward_timeout_ms {} is over the limit of {MAX_REWARD_TIMEOUT_MS} (30 days)",
                self.reward_timeout_ms
            )));
        }
        self.policy.validate().map_err(|e| ServiceError::engine(context, e))
    }

    /// Builds a definition from the admin API's spec, filling unset fields with the engine's defaults.
    pub fn from_spec(id: String, spec: pb::ExperimentSpec) -> Result<ExperimentDef, ServiceError> {
        let bad = |m: String| Err(ServiceError::InvalidArgument(m));
        let algorithm = match pb::Algorithm::try_from(spec.algorithm) {
            Ok(pb::Algorithm::Linucb) => Algorithm::Linucb,
            Ok(pb::Algorithm::Lints) => Algorithm::Lints,
            Ok(pb::Algorithm::EpsilonGreedy) => Algorithm::EpsilonGreedy,
            Ok(pb::Algorithm::Ucb1) => Algorithm::Ucb1,
            Ok(pb::Algorithm::Clucb) => Algorithm::Clucb,
            Ok(pb::Algorithm::Clucb2) => Algorithm::Clucb2,
            Ok(pb::Algorithm::ConservativeUcb) => Algorithm::ConservativeUcb,
            Ok(pb::Algorithm::Unspecified) => return bad("spec.algorithm is required".into()),
            Err(_) => return bad(format!("spec.algorithm {} is not a known algorithm", spec.algorithm)),
        };
        let as_usize = |v: u32| v as usize;
        let (layout, action_ids) = match spec.layout.and_then(|l| l.kind) {
            Some(pb::layout::Kind::Shared(s)) => (Layout::Shared { dim: as_usize(s.dim) }, vec![]),
            Some(pb::layout::Kind::Disjoint(d)) => {
                (Layout::Disjoint { dim: as_usize(d.dim), actions: as_usize(d.actions) }, d.action_ids)
            }
            Some(pb::layout::Kind::Arms(a)) => (Layout::Arms { actions: as_usize(a.actions) }, a.action_ids),
            None => return bad("spec.layout is required: set one of shared, disjoint or arms".into()),
        };
        let mut policy = PolicyConfig::new(algorithm, layout);
        policy.alpha = spec.alpha.unwrap_or(policy.alpha);
        policy.delta = spec.delta.unwrap_or(policy.delta);
        policy.lambda = spec.lambda.unwrap_or(policy.lambda);
        policy.noise_scale = spec.noise_scale.unwrap_or(policy.noise_scale);
        policy.theta_norm_bound = spec.theta_norm_bound.unwrap_or(policy.theta_norm_bound);
        policy.feature_norm_bound = spec.feature_norm_bound.unwrap_or(policy.feature_norm_bound);
        policy.exploration_scale = spec.exploration_scale;
        policy.epsilon = spec.epsilon.unwrap_or(policy.epsilon);
        policy.seed = spec.seed.unwrap_or(policy.seed);
        policy.drift_guard = spec.drift_guard.map(|guard| {
            let defaults = DriftGuardConfig::default();
            DriftGuardConfig {
                threshold: guard.threshold.unwrap_or(defaults.threshold),
                allowance: guard.allowance.unwrap_or(defaults.allowance),
                warmup: guard.warmup.unwrap_or(defaults.warmup),
                cap: guard.cap.unwrap_or(defaults.cap),
            }
        });
        if let Some(range) = spec.reward_range {
            policy.reward_range = [range.min, range.max];
        }
        policy.baseline_reward = match pb::BaselineReward::try_from(spec.baseline_reward) {
            Ok(pb::BaselineReward::Known) => BaselineReward::Known,
            Ok(pb::BaselineReward::Unknown | pb::BaselineReward::Unspecified) => BaselineReward::Unknown,
            Err(_) => return bad(format!("spec.baseline_reward {} is not a known value", spec.baseline_reward)),
        };
        policy.constraint = match spec.checkpoint_every {
            Some(every) => Constraint::Checkpoint { every },
            None => Constraint::PerStep,
        };
        policy.on_timeout = match pb::OnTimeout::try_from(spec.on_timeout) {
            Ok(pb::OnTimeout::Drop | pb::OnTimeout::Unspecified) => {
                if spec.timeout_reward.is_some() {
                    return bad("spec.timeout_reward is only used with on_timeout = ON_TIMEOUT_DEFAULT_REWARD".into());
                }
                PendingResolution::Drop
            }
            Ok(pb::OnTimeout::DefaultReward) => match spec.timeout_reward {
                Some(reward) => PendingResolution::DefaultReward { reward },
                None => {
                    return bad("spec.timeout_reward is required with on_timeout = ON_TIMEOUT_DEFAULT_REWARD".into());
                }
            },
            Err(_) => return bad(format!("spec.on_timeout {} is not a known value", spec.on_timeout)),
        };
        let feature_precision = match pb::FeaturePrecision::try_from(spec.feature_precision) {
            Ok(pb::FeaturePrecision::F64 | pb::FeaturePrecision::Unspecified) => FeaturePrecision::F64,
            Ok(pb::FeaturePrecision::F32) => FeaturePrecision::F32,
            Err(_) => {
                return bad(format!("spec.feature_precision {} is not a known value", spec.feature_precision));
            }
        };
        if spec.on_timeout == pb::OnTimeout::DefaultReward as i32 && spec.reward_timeout_ms == 0 {
            return bad("spec.on_timeout = ON_TIMEOUT_DEFAULT_REWARD needs a reward_timeout_ms > 0".into());
        }
        Ok(ExperimentDef {
            id,
            policy,
            reward_timeout_ms: spec.reward_timeout_ms,
            action_ids,
            paused: false,
            created_unix_ms: 0,
            feature_precision,
        })
    }

    /// The effective spec, every default filled in, for the admin API.
    pub fn to_spec(&self) -> pb::ExperimentSpec {
        let p = &self.policy;
        let algorithm = match p.algorithm {
            Algorithm::Linucb => pb::Algorithm::Linucb,
            Algorithm::Lints => pb::Algorithm::Lints,
            Algorithm::EpsilonGreedy => pb::Algorithm::EpsilonGreedy,
            Algorithm::Ucb1 => pb::Algorithm::Ucb1,
            Algorithm::Clucb => pb::Algorithm::Clucb,
            Algorithm::Clucb2 => pb::Algorithm::Clucb2,
            Algorithm::ConservativeUcb => pb::Algorithm::ConservativeUcb,
        };
        let layout = match p.layout {
            Layout::Shared { dim } => pb::layout::Kind::Shared(pb::SharedLayout { dim: dim as u32 }),
            Layout::Disjoint { dim, actions } => pb::layout::Kind::Disjoint(pb::DisjointLayout {
                dim: dim as u32,
                actions: actions as u32,
                action_ids: self.action_ids.clone(),
            }),
            Layout::Arms { actions } => {
                pb::layout::Kind::Arms(pb::ArmsLayout { actions: actions as u32, action_ids: self.action_ids.clone() })
            }
        };
        let (on_timeout, timeout_reward) = match p.on_timeout {
            PendingResolution::Drop => (pb::OnTimeout::Drop, None),
            PendingResolution::DefaultReward { reward } => (pb::OnTimeout::DefaultReward, Some(reward)),
        };
        pb::ExperimentSpec {
            algorithm: algorithm as i32,
            layout: Some(pb::Layout { kind: Some(layout) }),
            alpha: Some(p.alpha),
            delta: Some(p.delta),
            lambda: Some(p.lambda),
            reward_range: Some(pb::RewardRange { min: p.reward_range[0], max: p.reward_range[1] }),
            noise_scale: Some(p.noise_scale),
            theta_norm_bound: Some(p.theta_norm_bound),
            feature_norm_bound: Some(p.feature_norm_bound),
            baseline_reward: match p.baseline_reward {
                BaselineReward::Known => pb::BaselineReward::Known,
                BaselineReward::Unknown => pb::BaselineReward::Unknown,
            } as i32,
            reward_timeout_ms: self.reward_timeout_ms,
            on_timeout: on_timeout as i32,
            timeout_reward,
            checkpoint_every: match p.constraint {
                Constraint::PerStep => None,
                Constraint::Checkpoint { every } => Some(every),
            },
            exploration_scale: p.exploration_scale,
            epsilon: Some(p.epsilon),
            seed: Some(p.seed),
            drift_guard: p.drift_guard.map(|g| pb::DriftGuard {
                threshold: Some(g.threshold),
                allowance: Some(g.allowance),
                warmup: Some(g.warmup),
                cap: Some(g.cap),
            }),
            feature_precision: match self.feature_precision {
                FeaturePrecision::F64 => pb::FeaturePrecision::F64,
                FeaturePrecision::F32 => pb::FeaturePrecision::F32,
            } as i32,
        }
    }

    /// The admin API's view of the experiment.
    pub fn to_proto(&self) -> pb::Experiment {
        pb::Experiment {
            id: self.id.clone(),
            spec: Some(self.to_spec()),
            state: if self.paused { pb::ExperimentState::Paused } else { pb::ExperimentState::Active } as i32,
            created_unix_ms: self.created_unix_ms,
        }
    }
}

/// 30 days: a longer timeout would keep decisions pending (and their memory held) for longer than any
/// product waits for a reward.
const MAX_REWARD_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_the_definition() {
        let spec = pb::ExperimentSpec {
            algorithm: pb::Algorithm::Clucb2 as i32,
            layout: Some(pb::Layout {
                kind: Some(pb::layout::Kind::Disjoint(pb::DisjointLayout {
                    dim: 4,
                    actions: 2,
                    action_ids: vec!["a".into(), "b".into()],
                })),
            }),
            alpha: Some(0.05),
            reward_timeout_ms: 1000,
            on_timeout: pb::OnTimeout::DefaultReward as i32,
            timeout_reward: Some(0.0),
            checkpoint_every: Some(100),
            feature_precision: pb::FeaturePrecision::F32 as i32,
            ..Default::default()
        };
        let def = ExperimentDef::from_spec("x".into(), spec).unwrap();
        def.check(&Limits::default()).unwrap();
        let again = ExperimentDef::from_spec("x".into(), def.to_spec()).unwrap();
        assert_eq!(def, again);
        assert_eq!(def.policy.alpha, 0.05);
        assert_eq!(def.policy.constraint, Constraint::Checkpoint { every: 100 });
        assert_eq!(def.feature_precision, FeaturePrecision::F32);
        // Stored definitions from before the field read as F64, and an F64 one is stored as before.
        let json = serde_json::to_string(&ExperimentDef { feature_precision: FeaturePrecision::F64, ..def }).unwrap();
        assert!(!json.contains("feature_precision"), "{json}");
        let old: ExperimentDef = serde_json::from_str(&json).unwrap();
        assert_eq!(old.feature_precision, FeaturePrecision::F64);
    }

    #[test]
    fn experiments_file_parses_and_rejects_duplicates() {
        let text = r#"
            [[experiment]]
            id = "homepage"
            reward_timeout_ms = 60000
            policy = { algorithm = "clucb", layout = { kind = "shared", dim = 8 }, alpha = 0.2 }

            [[experiment]]
            id = "compact"
            feature_precision = "f32"
            policy = { algorithm = "clucb", layout = { kind = "shared", dim = 8 } }

            [[experiment]]
            id = "arms"
            action_ids = ["red", "green"]
            [experiment.policy]
            algorithm = "conservative_ucb"
            layout = { kind = "arms", actions = 2 }
        "#;
        let file = ExperimentsFile::parse(text).unwrap();
        assert_eq!(file.experiment.len(), 3);
        assert_eq!(file.experiment[0].policy.alpha, 0.2);
        assert_eq!(file.experiment[0].feature_precision, FeaturePrecision::F64);
        assert_eq!(file.experiment[1].feature_precision, FeaturePrecision::F32);
        for def in &file.experiment {
            def.check(&Limits::default()).unwrap();
        }
        let twice = format!(
            "{text}\n[[experiment]]\nid = \"arms\"\npolicy = {{ algorithm = \"ucb1\", layout = {{ kind = \"arms\", actions = 2 }} }}\n"
        );
        assert!(ExperimentsFile::parse(&twice).unwrap_err().to_string().contains("declared twice"));
    }

    #[test]
    fn the_readme_experiments_file_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n[[experiment]]").expect("the README shows an experiments file") + 7;
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let file = ExperimentsFile::parse(text).unwrap();
        assert_eq!((file.experiment.len(), file.episodic.len()), (1, 1));
        file.experiment[0].check(&Limits::default()).unwrap();
        crate::check_episodic(&file.episodic[0].id, &file.episodic[0].learner).unwrap();
    }

    #[test]
    fn experiments_file_declares_episodic_experiments() {
        let river = r#"
            [[episodic]]
            id = "river"
            [episodic.learner]
            algorithm = "conservative_ucbvi"
            states = 3
            actions = 2
            horizon = 4
            start = { kind = "fixed", state = 0 }
            baseline_policy = [0, 0, 0]
            alpha = 0.2
        "#;
        let file = ExperimentsFile::parse(river).unwrap();
        let learner = &file.episodic[0].learner;
        assert_eq!((learner.states, learner.horizon, learner.alpha, learner.delta), (3, 4, 0.2, 0.05));
        learner.validate().unwrap();
        let clash = format!(
            "{river}
[[experiment]]
id = \"river\"
policy = {{ algorithm = \"ucb1\", layout = {{ kind = \"arms\", actions = 2 }} }}
"
        );
        assert!(ExperimentsFile::parse(&clash).unwrap_err().to_string().contains("'river' is declared twice"));
        let typo = river.replace("horizon", "horizn");
        assert!(ExperimentsFile::parse(&typo).unwrap_err().to_string().contains("horizn"));
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        assert!(check_experiment_id("").unwrap_err().to_string().contains("empty"));
        assert!(check_experiment_id("a b").unwrap_err().to_string().contains("' '"));
        assert!(check_experiment_id(&"x".repeat(129)).unwrap_err().to_string().contains("limit"));
        check_experiment_id("home-page_v1.2").unwrap();
    }
}
