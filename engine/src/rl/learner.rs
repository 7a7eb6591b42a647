//! UCBVI and conservative UCBVI: episode planning, the episodic budget ledger, and per-step learning.

use serde::{Deserialize, Serialize};

use crate::EngineError;
use crate::error::finite;

/// Which episodic learner runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlAlgorithm {
    /// UCBVI with a Chernoff-Hoeffding bonus (Azar et al. 2017): optimistic, unconstrained.
    Ucbvi,
    /// UCBVI behind the episodic budget check (Garcelon et al. 2020).
    ConservativeUcbvi,
}

/// Where episodes start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StartState {
    /// Always this state.
    Fixed {
        /// The start state.
        state: usize,
    },
    /// Drawn from this known distribution over states.
    Distribution {
        /// P(s_1 = s), one entry per state.
        probabilities: Vec<f64>,
    },
}

/// Everything that defines an episodic learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodicConfig {
    /// The learner.
    pub algorithm: RlAlgorithm,
    /// Number of states S.
    pub states: usize,
    /// Number of actions A.
    pub actions: usize,
    /// Episode length H.
    pub horizon: usize,
    /// Where episodes start.
    pub start: StartState,
    /// The baseline policy: one action per (step, state), step-major (H * S entries), or one per state
    /// (S entries) for a stationary baseline.
    pub baseline_policy: Vec<usize>,
    /// The baseline's expected return from the start, when known; otherwise it is bounded from data.
    #[serde(default)]
    pub baseline_value: Option<f64>,
    /// Risk budget in [0, 1).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Confidence in (0, 1).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Declared range of per-step rewards, with min >= 0.
    #[serde(default = "default_range")]
    pub reward_range: [f64; 2],
    /// Multiplies UCBVI's optimism bonus (1 = the theoretical bonus); the pessimistic bounds the budget
    /// check uses are never scaled.
    #[serde(default = "default_one")]
    pub bonus_scale: f64,
}

fn default_alpha() -> f64 {
    0.1
}
fn default_delta() -> f64 {
    0.05
}
fn default_range() -> [f64; 2] {
    [0.0, 1.0]
}
fn default_one() -> f64 {
    1.0
}

/// Largest state and action counts accepted: planning costs H * S^2 * A.
const MAX_STATES: usize = 10_000;
const MAX_ACTIONS: usize = 1_000;
const MAX_HORIZON: usize = 10_000;

impl EpisodicConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, reason: String| Err(EngineError::InvalidConfig { field, reason });
        for (field, value, max) in [
            ("states", self.states, MAX_STATES),
            ("actions", self.actions, MAX_ACTIONS),
            ("horizon", self.horizon, MAX_HORIZON),
        ] {
            if value == 0 || value > max {
                return bad(field, format!("must be in 1..={max}, got {value}"));
            }
        }
        if !(0.0..1.0).contains(&self.alpha) {
            return bad("alpha", format!("must be in [0, 1), got {}", self.alpha));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", format!("must be in (0, 1), got {}", self.delta));
        }
        let [lo, hi] = self.reward_range;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi) {
            return bad("reward_range", format!("must be finite with 0 <= min < max, got [{lo}, {hi}]"));
        }
        if !(self.bonus_scale.is_finite() && self.bonus_scale >= 0.0) {
            return bad("bonus_scale", format!("must be finite and >= 0, got {}", self.bonus_scale));
        }
        let (s, h) = (self.states, self.horizon);
        if self.baseline_policy.len() != s && self.baseline_policy.len() != s * h {
            return bad(
                "baseline_policy",
                format!("needs {s} (stationary) or {} (per step) entries, got {}", s * h, self.baseline_policy.len()),
            );
        }
        if let Some(&a) = self.baseline_policy.iter().find(|&&a| a >= self.actions) {
            return bad("baseline_policy", format!("action {a} is out of range: there are {} actions", self.actions));
        }
        if let Some(v) = self.baseline_value {
            let max = h as f64 * hi;
            if !(v.is_finite() && (h as f64 * lo..=max).contains(&v)) {
                return bad("baseline_value", format!("must lie in [{}, {max}], got {v}", h as f64 * lo));
            }
        }
        match &self.start {
            StartState::Fixed { state } if *state >= s => {
                return bad("start.state", format!("must be < {s}, got {state}"));
            }
            StartState::Distribution { probabilities } => {
                let total: f64 = probabilities.iter().sum();
                if probabilities.len() != s
                    || probabilities.iter().any(|p| !(p.is_finite() && *p >= 0.0))
                    || (total - 1.0).abs() > 1e-9
                {
                    return bad("start.probabilities", format!("must be {s} non-negative numbers summing to 1"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Which policy drives an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Driver {
    /// The learner's optimistic policy.
    Learner,
    /// The baseline policy, because the learner's could break the budget.
    Baseline,
}

/// What `start_episode` decided, and why.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodePlan {
    /// Index of the episode, from 0.
    pub episode: u64,
    /// Who drives it.
    pub driver: Driver,
    /// Lower confidence bound of the optimistic policy's value from the start.
    pub learner_value_lower_bound: f64,
    /// Left side minus right side of the budget check (conservative learner only); >= 0 lets the learner drive.
    pub margin: Option<f64>,
}

/// How an episode went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSummary {
    /// Index of the episode.
    pub episode: u64,
    /// Who drove it.
    pub driver: Driver,
    /// Steps observed.
    pub steps: usize,
    /// Sum of the rewards observed.
    pub episode_return: f64,
}

/// Counters for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodicStats {
    /// Episodes started.
    pub episodes: u64,
    /// Episodes the learner drove.
    pub learner_episodes: u64,
    /// Episodes the baseline drove.
    pub baseline_episodes: u64,
    /// Transitions learned from: the model version.
    pub steps: u64,
    /// Margin of the latest budget check.
    pub last_margin: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActiveEpisode {
    episode: u64,
    driver: Driver,
    step: usize,
    episode_return: f64,
}

/// A tabular episodic learner (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpisodicLearner {
    config: EpisodicConfig,
    /// The baseline policy, expanded to H * S entries.
    baseline: Vec<usize>,
    visits: Vec<u64>,
    reward_sums: Vec<f64>,
    transition_counts: Vec<u64>,
    /// The optimistic policy of the current (or latest) episode, H * S entries.
    learner_policy: Vec<usize>,
    /// Sum over learner-driven episodes of their value lower bound when they were played.
    learner_lower_sum: f64,
    /// Returns of the finished baseline-driven episodes: samples of V^b when it is not known.
    #[serde(default)]
    baseline_returns: ReturnStats,
    active: Option<ActiveEpisode>,
    stats: EpisodicStats,
    #[serde(skip)]
    values: Vec<f64>,
}

/// Running mean and variance (Welford) of episode returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct ReturnStats {
    count: u64,
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

impl ReturnStats {
    fn add(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    /// A two-sided empirical-Bernstein interval (Maurer & Pontil 2009, Theorem 4) for the mean of returns
    /// that lie in a range of width `range`, valid with probability 1 - `delta` at every count at once
    /// (a union bound over counts: delta / (n (n + 1)) for count n). `None` before two samples.
    fn interval(&self, range: f64, delta: f64) -> Option<(f64, f64)> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let log = (4.0 * n * (n + 1.0) / delta).ln();
        let variance = (self.m2 / (n - 1.0)).max(0.0);
        let half_width = (2.0 * variance * log / n).sqrt() + 7.0 * range * log / (3.0 * (n - 1.0));
        Some((self.mean - half_width, self.mean + half_width))
    }
}

/// Which way a policy evaluation leans.
#[derive(Clone, Copy, PartialEq)]
enum Bound {
    Lower,
    Upper,
}

impl EpisodicLearner {
    /// Validates the configuration and builds a learner that knows nothing yet.
    pub fn new(config: EpisodicConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let (s, a, h) = (config.states, config.actions, config.horizon);
        let baseline = if config.baseline_policy.len() == s * h {
            config.baseline_policy.clone()
        } else {
            config.baseline_policy.iter().copied().cycle().take(s * h).collect()
        };
        Ok(EpisodicLearner {
            baseline,
            visits: vec![0; s * a],
            reward_sums: vec![0.0; s * a],
            transition_counts: vec![0; s * a * s],
            learner_policy: vec![0; s * h],
            learner_lower_sum: 0.0,
            baseline_returns: ReturnStats::default(),
            active: None,
            stats: EpisodicStats::default(),
            values: vec![0.0; (h + 1) * s],
            config,
        })
    }

    /// Checks a learner that was deserialised rather than built (an imported state): its configuration, and
    /// that every table has the size and every entry the range the configuration implies, so that no later
    /// call can index out of bounds.
    pub fn check_consistent(&self) -> Result<(), EngineError> {
        self.config.validate()?;
        let (s, a, h) = (self.config.states, self.config.actions, self.config.horizon);
        let bad = |field: &'static str, reason: String| Err(EngineError::InvalidConfig { field, reason });
        for (field, len, expected) in [
            ("baseline", self.baseline.len(), s * h),
            ("visits", self.visits.len(), s * a),
            ("reward_sums", self.reward_sums.len(), s * a),
            ("transition_counts", self.transition_counts.len(), s * a * s),
            ("learner_policy", self.learner_policy.len(), s * h),
        ] {
            if len != expected {
                return bad(field, format!("has {len} entries, expected {expected}"));
            }
        }
        for (field, policy) in [("baseline", &self.baseline), ("learner_policy", &self.learner_policy)] {
            if let Some(&action) = policy.iter().find(|&&action| action >= a) {
                return bad(field, format!("holds action {action}, but there are {a} actions"));
            }
        }
        if !self.reward_sums.iter().all(|v| v.is_finite()) || !self.learner_lower_sum.is_finite() {
            return bad("reward_sums", "holds a value that is not finite".into());
        }
        let returns = &self.baseline_returns;
        // Returns lie in [0, H max]: rewards are at least 0, and an episode may end before H steps.
        let (lowest, highest) = (0.0, h as f64 * self.config.reward_range[1]);
        if returns.count > 0
            && !(returns.m2 >= 0.0 && returns.m2.is_finite() && (lowest..=highest).contains(&returns.mean))
        {
            return bad("baseline_returns", format!("mean {} or spread {} is impossible", returns.mean, returns.m2));
        }
        if let Some(active) = &self.active
            && (active.step > h || !active.episode_return.is_finite() || active.episode >= self.stats.episodes)
        {
            return bad(
                "active",
                format!("episode {} at step {} is not a running episode", active.episode, active.step),
            );
        }
        Ok(())
    }

    /// The validated configuration.
    pub fn config(&self) -> &EpisodicConfig {
        &self.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> EpisodicStats {
        self.stats
    }

    /// The policy driving the current episode (H * S entries, step-major), if one is running.
    pub fn active_policy(&self) -> Option<&[usize]> {
        self.active.as_ref().map(|e| self.policy_of(e.driver))
    }

    /// The baseline policy, H * S entries, step-major.
    pub fn baseline_policy(&self) -> &[usize] {
        &self.baseline
    }

    fn policy_of(&self, driver: Driver) -> &[usize] {
        match driver {
            Driver::Learner => &self.learner_policy,
            Driver::Baseline => &self.baseline,
        }
    }

    /// Changes the risk budget for the episodes started from now on.
    pub fn set_alpha(&mut self, alpha: f64) -> Result<(), EngineError> {
        let mut config = self.config.clone();
        config.alpha = alpha;
        config.validate()?;
        self.config.alpha = alpha;
        Ok(())
    }

    /// Plans the optimistic policy and decides, by the budget check, who drives the new episode.
    pub fn start_episode(&mut self) -> Result<EpisodePlan, EngineError> {
        self.start_episode_with(false)
    }

    /// [`EpisodicLearner::start_episode`]; with `baseline_only` (an operator's kill switch) the baseline policy
    /// drives whatever the budget check says. The plan still reports the check's margin.
    pub fn start_episode_with(&mut self, baseline_only: bool) -> Result<EpisodePlan, EngineError> {
        if let Some(active) = &self.active {
            return Err(EngineError::EpisodeInProgress(active.episode));
        }
        self.plan_optimistic();
        let learner_lower = self.start_value(Bound::Lower, Driver::Learner);
        let episode = self.stats.episodes;
        let (driver, margin) = match self.config.algorithm {
            RlAlgorithm::Ucbvi => (Driver::Learner, None),
            RlAlgorithm::ConservativeUcbvi => {
                let (baseline_low, baseline_high) = match self.config.baseline_value {
                    Some(v) => (v, v),
                    None => self.baseline_value_interval(),
                };
                let k = (episode + 1) as f64;
                let left = self.learner_lower_sum + learner_lower + self.stats.baseline_episodes as f64 * baseline_low;
                let margin = left - (1.0 - self.config.alpha) * k * baseline_high;
                (if margin >= 0.0 { Driver::Learner } else { Driver::Baseline }, Some(margin))
            }
        };
        let driver = if baseline_only { Driver::Baseline } else { driver };
        match driver {
            Driver::Learner => {
                self.learner_lower_sum += learner_lower;
                self.stats.learner_episodes += 1;
            }
            Driver::Baseline => self.stats.baseline_episodes += 1,
        }
        self.stats.episodes += 1;
        self.stats.last_margin = margin.or(self.stats.last_margin);
        self.active = Some(ActiveEpisode { episode, driver, step: 0, episode_return: 0.0 });
        Ok(EpisodePlan { episode, driver, learner_value_lower_bound: learner_lower, margin })
    }

    /// Bounds on the baseline's unknown value V^b, the tighter of two, each valid with probability
    /// 1 - delta / 2 (the model's union bound runs at delta / 2 when V^b is unknown, see `log_term`):
    /// - the baseline policy evaluated pessimistically and optimistically on the empirical model, which
    ///   learns from every episode but pays a deviation term that grows with H at each step;
    /// - an empirical-Bernstein interval around the mean return of the baseline's own episodes, which are
    ///   samples of V^b: tight when the baseline's returns vary little, whatever H.
    fn baseline_value_interval(&mut self) -> (f64, f64) {
        let model =
            (self.start_value(Bound::Lower, Driver::Baseline), self.start_value(Bound::Upper, Driver::Baseline));
        // Returns lie in [0, H max]: rewards are at least 0, and an episode may end before H steps.
        let range = self.config.horizon as f64 * self.config.reward_range[1];
        match self.baseline_returns.interval(range, self.config.delta / 2.0) {
            Some((low, high)) => (model.0.max(low), model.1.min(high)),
            None => model,
        }
    }

    /// The action to play at (step, state) in the running episode.
    pub fn action(&self, step: usize, state: usize) -> Result<usize, EngineError> {
        let active = self.active.as_ref().ok_or(EngineError::EpisodeNotStarted)?;
        self.check_position(active, step, state)?;
        Ok(self.policy_of(active.driver)[step * self.config.states + state])
    }

    fn check_position(&self, active: &ActiveEpisode, step: usize, state: usize) -> Result<(), EngineError> {
        if step != active.step || step >= self.config.horizon {
            return Err(EngineError::StepOutOfOrder { expected: active.step, got: step, horizon: self.config.horizon });
        }
        check_index("state", state, self.config.states)?;
        if step == 0
            && let StartState::Fixed { state: start } = self.config.start
            && state != start
        {
            return Err(EngineError::UnexpectedStartState { expected: start, got: state });
        }
        Ok(())
    }

    /// Learns from one transition of the running episode. The action must be the one `action` gave: the
    /// budget accounted for that policy, not another. Allocation-free.
    pub fn observe(
        &mut self,
        step: usize,
        state: usize,
        action: usize,
        reward: f64,
        next_state: usize,
    ) -> Result<(), EngineError> {
        let active = self.active.as_ref().ok_or(EngineError::EpisodeNotStarted)?;
        self.check_position(active, step, state)?;
        check_index("action", action, self.config.actions)?;
        check_index("next state", next_state, self.config.states)?;
        finite("reward", reward)?;
        let [lo, hi] = self.config.reward_range;
        if !(lo..=hi).contains(&reward) {
            return Err(EngineError::OutOfRange { what: "reward", value: reward, min: lo, max: hi });
        }
        let expected = self.policy_of(active.driver)[step * self.config.states + state];
        if action != expected {
            return Err(EngineError::ActionMismatch { expected, got: action });
        }
        let (s_count, a_count) = (self.config.states, self.config.actions);
        let sa = state * a_count + action;
        self.visits[sa] += 1;
        self.reward_sums[sa] += reward;
        self.transition_counts[sa * s_count + next_state] += 1;
        self.stats.steps += 1;
        let active = self.active.as_mut().expect("checked above");
        active.step += 1;
        active.episode_return += reward;
        Ok(())
    }

    /// Ends the running episode (at the horizon or earlier, at a terminal state).
    pub fn end_episode(&mut self) -> Result<EpisodeSummary, EngineError> {
        let active = self.active.take().ok_or(EngineError::EpisodeNotStarted)?;
        if active.driver == Driver::Baseline {
            self.baseline_returns.add(active.episode_return);
        }
        Ok(EpisodeSummary {
            episode: active.episode,
            driver: active.driver,
            steps: active.step,
            episode_return: active.episode_return,
        })
    }

    /// ln(4 S A n (n + 1) / delta'): the union bound over state-action pairs and counts, with delta' = delta,
    /// or delta / 2 when the baseline's value is unknown and the other half goes to the bound on its returns.
    fn log_term(&self, n: u64) -> f64 {
        let (s, a) = (self.config.states as f64, self.config.actions as f64);
        let n = n as f64;
        let delta = match (self.config.algorithm, self.config.baseline_value) {
            (RlAlgorithm::ConservativeUcbvi, None) => self.config.delta / 2.0,
            _ => self.config.delta,
        };
        (4.0 * s * a * n * (n + 1.0) / delta).ln()
    }

    fn ensure_values(&mut self) {
        let len = (self.config.horizon + 1) * self.config.states;
        if self.values.len() != len {
            self.values = vec![0.0; len];
        }
    }

    /// UCBVI planning: Q(s, a) = r_hat + P_hat V_{h+1} + bonus, clipped to the largest achievable value.
    /// The Chernoff-Hoeffding bonus is (1 + remaining steps) * range * sqrt(L / (2n)) (Azar et al. 2017).
    fn plan_optimistic(&mut self) {
        self.ensure_values();
        let (s_count, a_count, h_count) = (self.config.states, self.config.actions, self.config.horizon);
        let [lo, hi] = self.config.reward_range;
        let width = hi - lo;
        self.values[h_count * s_count..].fill(0.0);
        for h in (0..h_count).rev() {
            let remaining = (h_count - h) as f64;
            for s in 0..s_count {
                let mut best = (f64::NEG_INFINITY, 0);
                for a in 0..a_count {
                    let sa = s * a_count + a;
                    let n = self.visits[sa];
                    let q = if n == 0 {
                        remaining * hi
                    } else {
                        let bonus =
                            self.config.bonus_scale * remaining * width * (self.log_term(n) / (2.0 * n as f64)).sqrt();
                        (self.empirical_backup(sa, h) + bonus).min(remaining * hi)
                    };
                    if q > best.0 {
                        best = (q, a);
                    }
                }
                self.values[h * s_count + s] = best.0;
                self.learner_policy[h * s_count + s] = best.1;
            }
        }
    }

    /// r_hat(s, a) + sum_s' P_hat(s' | s, a) V_{h+1}(s') for a visited pair.
    fn empirical_backup(&self, sa: usize, h: usize) -> f64 {
        let s_count = self.config.states;
        let n = self.visits[sa] as f64;
        let next = &self.values[(h + 1) * s_count..(h + 2) * s_count];
        let counts = &self.transition_counts[sa * s_count..(sa + 1) * s_count];
        let expected: f64 = counts.iter().zip(next).map(|(&c, v)| c as f64 * v).sum::<f64>() / n;
        self.reward_sums[sa] / n + expected
    }

    /// A confidence bound on a policy's value from the start state(s) [derived, see module docs].
    fn start_value(&mut self, bound: Bound, driver: Driver) -> f64 {
        self.ensure_values();
        let (s_count, a_count, h_count) = (self.config.states, self.config.actions, self.config.horizon);
        let [lo, hi] = self.config.reward_range;
        let width = hi - lo;
        let ln2_s = s_count as f64 * std::f64::consts::LN_2;
        self.values[h_count * s_count..].fill(0.0);
        for h in (0..h_count).rev() {
            let remaining = (h_count - h) as f64;
            // (P_hat - P) . V = (P_hat - P) . (V - c) for any constant c, so the deviation costs
            // ||P_hat - P||_1 * span(V) / 2, with the span of the values actually computed for step h + 1.
            let next = &self.values[(h + 1) * s_count..(h + 2) * s_count];
            let (min, max) = next.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let half_span = (max - min) / 2.0;
            for s in 0..s_count {
                let a = self.policy_of(driver)[h * s_count + s];
                let sa = s * a_count + a;
                let n = self.visits[sa];
                let v = if n == 0 {
                    if bound == Bound::Lower { remaining * lo } else { remaining * hi }
                } else {
                    let log = self.log_term(n);
                    let nf = n as f64;
                    let reward_bonus = width * (log / (2.0 * nf)).sqrt();
                    let l1 = (2.0 * (ln2_s + log) / nf).sqrt();
                    let bonus = reward_bonus + l1 * half_span;
                    let backup = self.empirical_backup(sa, h);
                    let v = if bound == Bound::Lower { backup - bonus } else { backup + bonus };
                    v.clamp(remaining * lo, remaining * hi)
                };
                self.values[h * s_count + s] = v;
            }
        }
        match &self.config.start {
            StartState::Fixed { state } => self.values[*state],
            StartState::Distribution { probabilities } => {
                probabilities.iter().zip(&self.values[..s_count]).map(|(p, v)| p * v).sum()
            }
        }
    }
}

fn check_index(what: &'static str, value: usize, count: usize) -> Result<(), EngineError> {
    if value < count {
        Ok(())
    } else {
        Err(EngineError::OutOfRange { what, value: value as f64, min: 0.0, max: (count - 1) as f64 })
    }
}
