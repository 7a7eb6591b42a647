//! The decision log: every decision, reward, timeout and risk-budget change of an experiment, in the order
//! the experiment applied them (`sequence`). It is written before a call is acknowledged, and it is what an
//! experiment is rebuilt from after a restart: the latest snapshot, then the log after it.

use safebet_engine::{DecisionId, Fallback, FeatureLayout};
use serde::{Deserialize, Serialize};

/// One entry of an experiment's history. Serialisable so the store can frame it into its journal (a
/// decision's features travel beside it, not in it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The experiment.
    pub experiment_id: String,
    /// Position in the experiment's history (1, 2, ...): replay applies records in this order.
    pub sequence: u64,
    /// Wall-clock time of the call, milliseconds since the Unix epoch.
    pub unix_ms: i64,
    /// What happened.
    pub entry: LogEntry,
}

/// What a log record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// A decision: its inputs (enough to make it again) and the answer given.
    Decision(Box<DecisionRecord>),
    /// A reward joined to decision `decision_id`.
    Reward {
        /// The decision.
        decision_id: DecisionId,
        /// The event id the caller used.
        event_id: String,
        /// The reward.
        value: f64,
    },
    /// A decision whose reward timed out, resolved as the experiment's `on_timeout` says.
    Timeout {
        /// The decision.
        decision_id: DecisionId,
    },
    /// The risk budget changed.
    Alpha {
        /// The new alpha.
        alpha: f64,
    },
    /// An operator cleared the drift guard's alarm (ResumeExperiment).
    ClearDrift,
    /// An operator paused or resumed an episodic experiment (its kill switch).
    Paused {
        /// Whether episodes started from now on are driven by the baseline policy.
        paused: bool,
    },
    /// An episodic experiment started an episode.
    EpisodeStart(EpisodeStartRecord),
    /// A transition of the running episode.
    Step(StepRecord),
    /// The running episode ended.
    EpisodeEnd {
        /// The episode.
        episode: u64,
    },
}

/// An episode's start as logged: replay must start the same episode with the same driver.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeStartRecord {
    /// The episode index.
    pub episode: u64,
    /// Whether the learner (not the baseline policy) drives it.
    pub learner_drives: bool,
    /// Whether the kill switch was on, handing the episode to the baseline policy.
    #[serde(default)]
    pub paused: bool,
}

/// One transition as logged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step within the episode, from 0.
    pub step: usize,
    /// State at that step.
    pub state: usize,
    /// Action played.
    pub action: usize,
    /// Reward received.
    pub reward: f64,
    /// State reached.
    pub next_state: usize,
}

impl LogEntry {
    /// "decision", "reward", "timeout", "alpha", "clear_drift", "paused", "episode_start", "step" or
    /// "episode_end": the `kind` column of the store.
    pub fn kind(&self) -> &'static str {
        match self {
            LogEntry::Decision(_) => "decision",
            LogEntry::Reward { .. } => "reward",
            LogEntry::Timeout { .. } => "timeout",
            LogEntry::Alpha { .. } => "alpha",
            LogEntry::ClearDrift => "clear_drift",
            LogEntry::Paused { .. } => "paused",
            LogEntry::EpisodeStart(_) => "episode_start",
            LogEntry::Step(_) => "step",
            LogEntry::EpisodeEnd { .. } => "episode_end",
        }
    }
}

/// A decision as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The engine's decision id.
    pub decision_id: DecisionId,
    /// The event id the caller reports the reward with (the client's, or `#<decision id>`).
    pub event_id: String,
    /// Whether `event_id` is the client's idempotency key.
    pub client_event_id: bool,
    /// Number of actions offered.
    pub num_actions: usize,
    /// The round's features: `num_actions` rows (shared layout), the context (disjoint), empty (arms).
    #[serde(skip)]
    pub features: Vec<f64>,
    /// Whether `features` are logged as little-endian floats instead of doubles: the experiment's feature
    /// precision is `f32`, so they were rounded to `f32` before the learner saw them and lose nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub features_f32: bool,
    /// How `features` describe the actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<FeatureLayout>,
    /// The caller's ids of this round's actions (shared layout), possibly empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_action_ids: Vec<String>,
    /// The baseline action.
    pub baseline: usize,
    /// The baseline's expected reward, when the caller gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_expected_reward: Option<f64>,
    /// Whether the experiment was paused (the decision went to the baseline by the kill switch).
    pub paused: bool,
    /// The action played.
    pub action: usize,
    /// Its id, when actions have ids.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action_id: String,
    /// The learner's proposal before the safety rule.
    pub proposed_action: usize,
    /// Probability of playing `action`.
    pub propensity: f64,
    /// Whether `propensity` is a Monte-Carlo estimate.
    pub propensity_estimated: bool,
    /// Why the baseline was played, if it was.
    pub fallback: Fallback,
    /// Whether the played action is the baseline.
    pub played_baseline: bool,
    /// Number of model updates the decision was made with.
    pub model_version: u64,
}

impl DecisionRecord {
    /// A copy without the features, for a row whose features are kept elsewhere (the journal): a clone would
    /// copy their kilobytes only to drop them.
    pub fn without_features(&self) -> DecisionRecord {
        DecisionRecord {
            decision_id: self.decision_id,
            event_id: self.event_id.clone(),
            client_event_id: self.client_event_id,
            num_actions: self.num_actions,
            features: Vec::new(),
            features_f32: self.features_f32,
            layout: self.layout,
            round_action_ids: self.round_action_ids.clone(),
            baseline: self.baseline,
            baseline_expected_reward: self.baseline_expected_reward,
            paused: self.paused,
            action: self.action,
            action_id: self.action_id.clone(),
            proposed_action: self.proposed_action,
            propensity: self.propensity,
            propensity_estimated: self.propensity_estimated,
            fallback: self.fallback,
            played_baseline: self.played_baseline,
            model_version: self.model_version,
        }
    }
}

/// Encodes doubles as little-endian bytes (the store's `features` column; numpy reads it with
/// `np.frombuffer(blob, "<f8")`).
pub fn encode_features(values: &[f64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * 8);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// The store's bytes of `values` ([`encode_features`]), borrowed without a copy where doubles are already
/// little-endian in memory (every target safebet is built for), so logging 512 doubles copies nothing.
pub fn feature_bytes(values: &[f64]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(encode_features(values))
    }
}

/// Appends `values` to `bytes` as little-endian floats (the journal's form of `f32` features: `<f4` in numpy).
/// Each value must already be an `f32` (see [`round_to_f32`]), or it would be rounded here.
pub fn encode_features_f32(values: &[f64], bytes: &mut Vec<u8>) {
    let start = bytes.len();
    bytes.resize(start + values.len() * 4, 0);
    // Fixed-size chunks, so the narrowing and the stores vectorise.
    for (out, v) in bytes[start..].chunks_exact_mut(4).zip(values) {
        out.copy_from_slice(&(*v as f32).to_le_bytes());
    }
}

/// Rounds every value to the nearest `f32` in place; `Err(index)` of the first finite value beyond `f32`'s
/// range (it would become infinite), leaving the values partly rounded.
pub fn round_to_f32(values: &mut [f64]) -> Result<(), usize> {
    for (i, v) in values.iter_mut().enumerate() {
        let rounded = *v as f32;
        if rounded.is_infinite() && v.is_finite() {
            return Err(i);
        }
        *v = f64::from(rounded);
    }
    Ok(())
}

/// Decodes a decision's logged features: doubles ([`encode_features`]) or, for `f32`, floats
/// ([`encode_features_f32`]); `None` if the length is not a multiple of the value's size.
pub fn decode_logged_features(bytes: &[u8], f32: bool) -> Option<Vec<f64>> {
    if !f32 {
        return decode_features(bytes);
    }
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))).collect())
}

/// Decodes [`encode_features`]; `None` if the length is not a multiple of 8.
pub fn decode_features(bytes: &[u8]) -> Option<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_bit_for_bit() {
        let values = [0.1, -0.0, f64::MIN_POSITIVE, 1e300, -3.5];
        let decoded = decode_features(&encode_features(&values)).unwrap();
        assert_eq!(values.map(f64::to_bits).to_vec(), decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(decode_features(&[0; 7]), None);
        assert_eq!(&*feature_bytes(&values), encode_features(&values).as_slice());
    }

    #[test]
    fn f32_features_round_once_and_round_trip_bit_for_bit() {
        let mut values = vec![0.1, -0.0, 1e-40, -3.5, 1e38, f64::NAN];
        round_to_f32(&mut values).unwrap();
        assert_eq!(values[0], f64::from(0.1_f32));
        assert!(values[5].is_nan(), "NaN stays NaN (the engine rejects it)");
        let mut bytes = Vec::new();
        encode_features_f32(&values, &mut bytes);
        assert_eq!(bytes.len(), 4 * values.len());
        let decoded = decode_logged_features(&bytes, true).unwrap();
        let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&decoded[..5]), bits(&values[..5]));
        let mut again = decoded.clone();
        round_to_f32(&mut again).unwrap();
        assert_eq!(bits(&again[..5]), bits(&decoded[..5]), "rounding twice changes nothing");
        assert_eq!(decode_logged_features(&[0; 6], true), None);
        assert_eq!(decode_logged_features(&encode_features(&[1.5]), false), Some(vec![1.5]));
        let mut too_big = vec![1.0, -1e39, 1e39];
        assert_eq!(round_to_f32(&mut too_big), Err(1));
        let mut infinite = vec![f64::INFINITY];
        assert_eq!(round_to_f32(&mut infinite), Ok(()), "infinities are the engine's to reject");
    }
}
