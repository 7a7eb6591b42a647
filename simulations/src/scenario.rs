//! Scenario files: what problem to simulate, for how long, with which policies and risk budgets.
//!
//! A scenario is TOML read with `deny_unknown_fields` everywhere, so a typo is an error rather than a silently
//! ignored setting. Every error names the file, the dotted key path and what was expected (see [`SimError`]).
//! Policy tables embed any [`PolicyConfig`] field next to a `label`; the fields the simulator owns (`layout`,
//! `alpha`, `delta`, `seed`) come from the environment, the grids and the run index instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use safebet_engine::{
    BaselineReward, Constraint, EngineError, EpisodicConfig, Layout, PolicyConfig, RlAlgorithm, StartState,
};
use serde::Deserialize;

use crate::SimError;
use crate::environment::EpisodicTruth;

/// Curve points when a scenario does not say.
const DEFAULT_CURVE_POINTS: usize = 40;
/// A Gaussian reward must stay inside a policy's declared `reward_range` with overwhelming probability: the
/// range must reach this many noise standard deviations past the extreme expected rewards (P < 1.3e-15).
const GAUSSIAN_TAIL_SIGMAS: f64 = 8.0;
/// Policy keys the simulator sets itself.
const OWNED_POLICY_KEYS: [(&str, &str); 4] = [
    ("layout", "the environment decides the layout"),
    ("alpha", "use the top-level `alphas` grid"),
    ("delta", "use the top-level `deltas` grid"),
    ("seed", "each run's policy seed derives from the scenario `seed` and the run index"),
];
/// Episodic learner keys the simulator sets itself (from the MDP, the grids, or `baseline_reward`).
const OWNED_EPISODIC_KEYS: [(&str, &str); 8] = [
    ("states", "the environment decides the number of states"),
    ("actions", "the environment decides the number of actions"),
    ("horizon", "the environment's `episode_length` sets it (the scenario's `horizon` counts episodes)"),
    ("start", "the environment decides the start state"),
    ("baseline_policy", "the environment decides the baseline policy"),
    ("baseline_value", "say `baseline_reward = \"known\"` and the simulator supplies the exact value"),
    ("alpha", "use the top-level `alphas` grid"),
    ("delta", "use the top-level `deltas` grid"),
];
/// Algorithm identifiers of episodic learners.
const EPISODIC_ALGORITHMS: [&str; 2] = ["ucbvi", "conservative_ucbvi"];

/// A parsed, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name, reported as `scenario` in summary.json.
    pub name: String,
    /// Rounds per run.
    pub horizon: u64,
    /// Number of independent runs (seeds) per policy and grid point; `--seeds` overrides it.
    pub runs: u32,
    /// The scenario seed every run's random streams derive from.
    pub seed: u64,
    /// Risk budgets to sweep.
    pub alphas: Vec<f64>,
    /// Confidence levels to sweep.
    pub deltas: Vec<f64>,
    /// Number of rounds at which curves are recorded.
    pub curve_points: usize,
    /// How those rounds are spaced (and the plots' round axis scaled).
    pub curve_spacing: CurveSpacing,
    /// The problem.
    pub environment: EnvironmentSpec,
    /// Reward delays and losses; `None` means every reward arrives before the next decision.
    pub feedback: Option<FeedbackSpec>,
    /// The policies compared, in file order.
    pub policies: Vec<PolicySpec>,
    /// Where the scenario came from (its path), for messages.
    pub origin: String,
    /// Directory that relative data paths are resolved against.
    pub base_dir: PathBuf,
    /// The exact TOML text, kept so that shard results carry the scenario they were computed from.
    pub source: String,
}

/// One policy of a scenario: a label and an engine configuration (alpha, delta and seed are set per run).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Unique label used in outputs.
    pub label: String,
    /// The engine configuration, with the environment's layout (or MDP shape).
    pub config: LearnerConfig,
}

/// The engine configuration of a policy: a bandit policy, or an episodic learner for MDP environments.
#[derive(Debug, Clone, PartialEq)]
pub enum LearnerConfig {
    /// Runs `safebet_engine::Policy`, one decision per round.
    Bandit(PolicyConfig),
    /// Runs `safebet_engine::EpisodicLearner`, one policy per episode (a round is an episode).
    Episodic(EpisodicConfig),
}

impl LearnerConfig {
    /// Whether the learner runs a drift guard.
    pub fn drift_guarded(&self) -> bool {
        matches!(self, LearnerConfig::Bandit(c) if c.drift_guard.is_some())
    }

    /// The engine's algorithm identifier.
    pub fn algorithm_name(&self) -> &'static str {
        match self {
            LearnerConfig::Bandit(c) => c.algorithm.name(),
            LearnerConfig::Episodic(c) => match c.algorithm {
                RlAlgorithm::Ucbvi => "ucbvi",
                RlAlgorithm::ConservativeUcbvi => "conservative_ucbvi",
            },
        }
    }

    /// Whether the learner enforces the baseline constraint (its decisions then depend on alpha).
    pub fn is_conservative(&self) -> bool {
        match self {
            LearnerConfig::Bandit(c) => c.algorithm.is_conservative(),
            LearnerConfig::Episodic(c) => c.algorithm == RlAlgorithm::ConservativeUcbvi,
        }
    }

    /// Whether the learner is given the baseline's expected reward (or value).
    pub fn baseline_reward_known(&self) -> bool {
        match self {
            LearnerConfig::Bandit(c) => c.baseline_reward == BaselineReward::Known,
            LearnerConfig::Episodic(c) => c.baseline_value.is_some(),
        }
    }

    /// When the constraint is checked; episodic learners check it every episode.
    pub fn constraint(&self) -> Constraint {
        match self {
            LearnerConfig::Bandit(c) => c.constraint,
            LearnerConfig::Episodic(_) => Constraint::PerStep,
        }
    }

    /// The configuration of one run.
    pub(crate) fn for_run(&self, alpha: f64, delta: f64, seed: u64) -> LearnerConfig {
        match self {
            LearnerConfig::Bandit(c) => LearnerConfig::Bandit(PolicyConfig { alpha, delta, seed, ..c.clone() }),
            // UCBVI plans deterministically: it has no random stream to seed.
            LearnerConfig::Episodic(c) => LearnerConfig::Episodic(EpisodicConfig { alpha, delta, ..c.clone() }),
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        match self {
            LearnerConfig::Bandit(c) => c.validate(),
            LearnerConfig::Episodic(c) => c.validate(),
        }
    }
}

/// The simulated problem.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EnvironmentSpec {
    /// Synthetic linear bandit with per-action features (shared layout).
    Linear(LinearSpec),
    /// K-armed bandit (arms layout).
    KArmed(KArmedSpec),
    /// Supervised-to-bandit conversion of a labelled CSV (disjoint layout).
    Supervised(SupervisedSpec),
    /// Episodic: RiverSwim (Strehl & Littman 2008), the engine's reference MDP.
    RiverSwim(RiverSwimSpec),
    /// Episodic: a grid-world with a cliff (after Sutton & Barto's cliff walking).
    CliffGridworld(CliffGridworldSpec),
    /// Episodic: inventory control.
    Inventory(InventorySpec),
}

impl EnvironmentSpec {
    /// Whether runs are episodes of an MDP (with episodic learners) rather than bandit rounds.
    pub fn is_episodic(&self) -> bool {
        matches!(
            self,
            EnvironmentSpec::RiverSwim(_) | EnvironmentSpec::CliffGridworld(_) | EnvironmentSpec::Inventory(_)
        )
    }
}

/// RiverSwim: a chain of `states` states; the baseline always swims left to a small sure reward.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiverSwimSpec {
    /// Number of states (at least 3).
    pub states: usize,
    /// Steps per episode H.
    pub episode_length: usize,
}

/// Cliff grid-world: `rows` x `cols`, moves slip with probability `slip`; the baseline walks the top row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliffGridworldSpec {
    /// Rows (at least 2).
    pub rows: usize,
    /// Columns (at least 3).
    pub cols: usize,
    /// Probability that a move goes in a uniformly random direction.
    pub slip: f64,
    /// Steps per episode H.
    pub episode_length: usize,
}

/// Inventory control: stock 0..=capacity, demand uniform on 0..=max_demand; the baseline orders up to 2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySpec {
    /// Largest stock (at least 1).
    pub capacity: usize,
    /// Largest demand per step (at least 1).
    pub max_demand: usize,
    /// Steps per episode H.
    pub episode_length: usize,
}

/// Spacing of the rounds at which curves are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurveSpacing {
    /// Log-spaced from 1 to the horizon: early rounds, where violations happen, stay visible.
    #[default]
    Log,
    /// Evenly spaced: for events late in a run, such as a change of theta*.
    Linear,
}

/// How observed rewards scatter around their expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// reward = mu + N(0, noise_std^2).
    Gaussian,
    /// reward ~ Bernoulli(mu), so expected rewards must lie in [0, 1].
    Bernoulli,
}

/// How theta* changes in a non-stationary linear environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// theta* is redrawn at round `change_at`.
    Jump,
    /// theta* turns along a great circle to a new draw between `change_at` and `change_at + drift_rounds`.
    Drift,
}

/// Synthetic linear environment. Per run, theta* and `context_pool` action sets of `actions` feature vectors
/// are drawn; each round offers one of the action sets, uniformly at random. Features and theta* are built so
/// that ||x|| = ||theta*|| = 1 and every expected reward lies in [0, 1].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    /// Feature dimension d (at least 2: one coordinate carries the constant part of the reward).
    pub dim: usize,
    /// Actions per round K (at least 2).
    pub actions: usize,
    /// Reward noise.
    pub noise: NoiseKind,
    /// Standard deviation of Gaussian noise (required for `noise = "gaussian"`, refused otherwise).
    #[serde(default)]
    pub noise_std: Option<f64>,
    /// Which action the baseline plays: the action at this quantile of the round's expected rewards (0 = the
    /// worst, 1 = the best, 0.5 = the median).
    pub baseline_quantile: f64,
    /// Number of distinct action sets drawn per run; 1 means a fixed action set.
    #[serde(default = "one_usize")]
    pub context_pool: usize,
    /// Non-stationarity: theta* jumps or drifts at `change_at`.
    #[serde(default)]
    pub change: Option<ChangeKind>,
    /// Round at which the change starts (required with `change`).
    #[serde(default)]
    pub change_at: Option<u64>,
    /// Length of a drift in rounds (required with `change = "drift"`).
    #[serde(default)]
    pub drift_rounds: Option<u64>,
}

/// K-armed environment with fixed arm means.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KArmedSpec {
    /// Expected reward of each arm.
    pub means: Vec<f64>,
    /// Reward noise.
    pub noise: NoiseKind,
    /// Standard deviation of Gaussian noise (required for `noise = "gaussian"`, refused otherwise).
    #[serde(default)]
    pub noise_std: Option<f64>,
    /// The baseline (default) arm.
    #[serde(default)]
    pub baseline: usize,
}

/// Supervised-to-bandit environment (Dudik et al. 2011; Bietti et al. 2021): each round draws a row of a
/// labelled CSV uniformly at random, each class is an action, and the reward is 1 for the true class, 0
/// otherwise. The baseline is a nearest-centroid classifier fit on the first `baseline_rows_per_class` rows of
/// each class: a weak, fixed rule, like a product's hand-made heuristic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisedSpec {
    /// CSV file, relative to the scenario file's directory: a header, numeric feature columns, one label
    /// column with integer classes 0..classes.
    pub path: String,
    /// Name of the label column.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Number of feature columns (checked against the file).
    pub features: usize,
    /// Number of classes, i.e. actions (checked against the file).
    pub classes: usize,
    /// Features are divided by this so that they lie in [0, 1] (16 for the digits' pixel intensities).
    pub feature_scale: f64,
    /// If set, features pass through a fixed Gaussian random projection to this many dimensions.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Seed of the fixed projection (the same for every run).
    #[serde(default)]
    pub projection_seed: u64,
    /// Rows per class the baseline's centroids are computed from.
    pub baseline_rows_per_class: usize,
}

/// Delayed and lost rewards (ALGORITHMS.md section 8), applied to any environment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSpec {
    /// Distribution of the delay, in rounds.
    pub delay: DelayKind,
    /// Mean delay in rounds (0 = the reward arrives before the next decision).
    pub mean_delay: f64,
    /// Probability that a reward never arrives.
    #[serde(default)]
    pub loss: f64,
    /// Rounds after which a decision whose reward has not arrived is expired with `Policy::expire` (the
    /// policy's `on_timeout` then drops it or records its default reward). Without it, lost rewards stay
    /// pending forever. A reward delayed by `timeout` rounds or more counts as lost.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// Delay distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayKind {
    /// Always `mean_delay` rounds (rounded).
    Fixed,
    /// Geometric on {0, 1, 2, ...} with mean `mean_delay`: memoryless, a long tail.
    Geometric,
    /// Uniform on {0, ..., 2 * mean_delay} (rounded).
    Uniform,
}

fn one_usize() -> usize {
    1
}

fn default_label_column() -> String {
    "label".into()
}

fn default_curve_points() -> usize {
    DEFAULT_CURVE_POINTS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioToml {
    name: String,
    horizon: u64,
    seeds: u32,
    seed: u64,
    alphas: Vec<f64>,
    deltas: Vec<f64>,
    #[serde(default = "default_curve_points")]
    curve_points: usize,
    #[serde(default)]
    curve_spacing: CurveSpacing,
    environment: EnvironmentSpec,
    #[serde(default)]
    feedback: Option<FeedbackSpec>,
    policies: Vec<toml::Spanned<toml::Table>>,
}

impl Scenario {
    /// The round at which theta* starts to change, on a non-stationary environment.
    pub fn change_round(&self) -> Option<u64> {
        match &self.environment {
            EnvironmentSpec::Linear(s) => s.change.and(s.change_at),
            _ => None,
        }
    }

    /// Reads and validates a scenario file; relative data paths resolve against its directory.
    pub fn from_file(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(SimError::io(path))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Scenario::from_toml_str(&text, &path.display().to_string(), &base_dir)
    }

    /// Parses and validates scenario text. `origin` names the file in messages; `base_dir` is where relative
    /// data paths resolve.
    pub fn from_toml_str(text: &str, origin: &str, base_dir: &Path) -> Result<Scenario, SimError> {
        let mut raw: ScenarioToml = parse_toml(text, origin)?;
        let at = ErrorSite { file: origin, text };
        validate_environment(&raw.environment, &at)?;
        let problem = match EpisodicTruth::from_spec(&raw.environment) {
            Some(truth) => Problem::Episodic(truth),
            None => Problem::Bandit(environment_layout(&raw.environment).expect("a bandit environment has a layout")),
        };
        if let Some(feedback) = &raw.feedback {
            if matches!(problem, Problem::Episodic(_)) {
                return Err(at.key("feedback", "expected no [feedback] table with an episodic environment"));
            }
            validate_feedback(feedback, &at)?;
        }
        if raw.name.trim().is_empty() {
            return Err(at.key("name", "expected a non-empty name"));
        }
        if raw.horizon == 0 {
            return Err(at.key("horizon", "expected at least 1 round"));
        }
        if raw.seeds == 0 {
            return Err(at.key("seeds", "expected at least 1 run"));
        }
        if !(2..=10_000).contains(&raw.curve_points) {
            return Err(at.key("curve_points", format!("expected 2..=10000, got {}", raw.curve_points)));
        }
        check_grid(&at, "alphas", &raw.alphas, |a| (0.0..1.0).contains(&a), "in [0, 1)")?;
        check_grid(&at, "deltas", &raw.deltas, |d| d > 0.0 && d < 1.0, "in (0, 1)")?;
        if raw.policies.is_empty() {
            return Err(at.key("policies", "expected at least one [[policies]] table"));
        }
        let mut labels = BTreeSet::new();
        let mut policies = Vec::with_capacity(raw.policies.len());
        let tables = std::mem::take(&mut raw.policies);
        for (index, table) in tables.into_iter().enumerate() {
            let policy = parse_policy(index, table, &problem, &raw, &at)?;
            if !labels.insert(policy.label.clone()) {
                return Err(at.key(
                    &format!("policies[{index}].label"),
                    format!("expected a unique label, `{}` is used twice", policy.label),
                ));
            }
            policies.push(policy);
        }
        Ok(Scenario {
            name: raw.name,
            horizon: raw.horizon,
            runs: raw.seeds,
            seed: raw.seed,
            alphas: raw.alphas,
            deltas: raw.deltas,
            curve_points: raw.curve_points,
            curve_spacing: raw.curve_spacing,
            environment: raw.environment,
            feedback: raw.feedback,
            policies,
            origin: origin.to_string(),
            base_dir: base_dir.to_path_buf(),
            source: text.to_string(),
        })
    }

    /// The rounds at which curves are recorded: increasing, from 1 to the horizon.
    pub fn curve_rounds(&self) -> Vec<u64> {
        crate::summary::curve_rounds(self.horizon, self.curve_points, self.curve_spacing)
    }

    /// The engine layout every policy of this scenario uses (`None` for episodic environments).
    pub fn layout(&self) -> Option<Layout> {
        environment_layout(&self.environment)
    }
}

/// Where an error was found: the file and its text (to turn byte spans into line and column).
struct ErrorSite<'a> {
    file: &'a str,
    text: &'a str,
}

impl ErrorSite<'_> {
    fn key(&self, key: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            file: self.file.to_string(),
            key: key.to_string(),
            message: message.into(),
            location: None,
        }
    }

    fn key_at(&self, key: &str, message: impl Into<String>, offset: Option<usize>) -> SimError {
        let location = offset.map(|offset| line_column(self.text, offset));
        SimError::Scenario { file: self.file.to_string(), key: key.to_string(), message: message.into(), location }
    }
}

fn line_column(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// Deserialises TOML, reporting the key path (serde_path_to_error) and the line (toml's span).
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, SimError> {
    let at = ErrorSite { file: origin, text };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| at.key_at("(syntax)", e.message().to_string(), e.span().map(|s| s.start)))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { "(top level)".to_string() } else { path };
        let inner = e.into_inner();
        at.key_at(&key, inner.message().to_string(), inner.span().map(|s| s.start))
    })
}

fn check_grid(
    at: &ErrorSite<'_>,
    key: &str,
    values: &[f64],
    ok: impl Fn(f64) -> bool,
    domain: &str,
) -> Result<(), SimError> {
    if values.is_empty() {
        return Err(at.key(key, format!("expected at least one value {domain}")));
    }
    for (i, &v) in values.iter().enumerate() {
        if !ok(v) {
            return Err(at.key(&format!("{key}[{i}]"), format!("expected a value {domain}, got {v}")));
        }
        if values[..i].contains(&v) {
            return Err(at.key(&format!("{key}[{i}]"), format!("expected distinct values, {v} repeats")));
        }
    }
    Ok(())
}

fn environment_layout(env: &EnvironmentSpec) -> Option<Layout> {
    match env {
        EnvironmentSpec::Linear(s) => Some(Layout::Shared { dim: s.dim }),
        EnvironmentSpec::KArmed(s) => Some(Layout::Arms { actions: s.means.len() }),
        EnvironmentSpec::Supervised(s) => {
            Some(Layout::Disjoint { dim: s.projection_dim.unwrap_or(s.features) + 1, actions: s.classes })
        }
        EnvironmentSpec::RiverSwim(_) | EnvironmentSpec::CliffGridworld(_) | EnvironmentSpec::Inventory(_) => None,
    }
}

/// What the policies of a scenario run on: a bandit layout, or a known MDP.
enum Problem {
    Bandit(Layout),
    Episodic(EpisodicTruth),
}

/// Largest episode length the engine's episodic learner accepts.
const MAX_EPISODE_LENGTH: usize = 10_000;

fn check_episode_length(at: &ErrorSite<'_>, prefix: &str, length: usize) -> Result<(), SimError> {
    if !(1..=MAX_EPISODE_LENGTH).contains(&length) {
        return Err(at.key(
            &format!("{prefix}.episode_length"),
            format!("expected 1..={MAX_EPISODE_LENGTH} steps, got {length}"),
        ));
    }
    Ok(())
}

fn validate_noise(at: &ErrorSite<'_>, prefix: &str, noise: NoiseKind, noise_std: Option<f64>) -> Result<(), SimError> {
    match (noise, noise_std) {
        (NoiseKind::Gaussian, None) => {
            Err(at.key(&format!("{prefix}.noise_std"), "expected a standard deviation > 0 with noise = \"gaussian\""))
        }
        (NoiseKind::Gaussian, Some(s)) if !(s.is_finite() && s > 0.0) => {
            Err(at.key(&format!("{prefix}.noise_std"), format!("expected a finite value > 0, got {s}")))
        }
        (NoiseKind::Bernoulli, Some(_)) => Err(at.key(
            &format!("{prefix}.noise_std"),
            "expected no noise_std with noise = \"bernoulli\" (its variance follows from the mean)",
        )),
        _ => Ok(()),
    }
}

fn validate_environment(env: &EnvironmentSpec, at: &ErrorSite<'_>) -> Result<(), SimError> {
    match env {
        EnvironmentSpec::Linear(s) => {
            let p = "environment.linear";
            if s.dim < 2 {
                return Err(at.key(&format!("{p}.dim"), format!("expected at least 2, got {}", s.dim)));
            }
            if s.actions < 2 {
                return Err(at.key(&format!("{p}.actions"), format!("expected at least 2, got {}", s.actions)));
            }
            validate_noise(at, p, s.noise, s.noise_std)?;
            if !(0.0..=1.0).contains(&s.baseline_quantile) {
                return Err(at.key(
                    &format!("{p}.baseline_quantile"),
                    format!("expected a value in [0, 1], got {}", s.baseline_quantile),
                ));
            }
            if s.context_pool == 0 {
                return Err(at.key(&format!("{p}.context_pool"), "expected at least 1 action set"));
            }
            match (s.change, s.change_at, s.drift_rounds) {
                (None, None, None) => {}
                (None, _, _) => {
                    return Err(at.key(
                        &format!("{p}.change"),
                        "expected `change = \"jump\"` or `\"drift\"` when change_at or drift_rounds is set",
                    ));
                }
                (Some(_), None, _) => {
                    return Err(at.key(&format!("{p}.change_at"), "expected the round at which theta* changes"));
                }
                (Some(_), Some(0), _) => {
                    return Err(at.key(&format!("{p}.change_at"), "expected a round >= 1"));
                }
                (Some(ChangeKind::Jump), Some(_), Some(_)) => {
                    return Err(at.key(&format!("{p}.drift_rounds"), "expected no drift_rounds with change = \"jump\""));
                }
                (Some(ChangeKind::Drift), Some(_), None | Some(0)) => {
                    return Err(at.key(&format!("{p}.drift_rounds"), "expected a drift length >= 1 round"));
                }
                _ => {}
            }
        }
        EnvironmentSpec::KArmed(s) => {
            let p = "environment.k_armed";
            if s.means.len() < 2 {
                return Err(at.key(&format!("{p}.means"), "expected at least 2 arms"));
            }
            validate_noise(at, p, s.noise, s.noise_std)?;
            for (i, &m) in s.means.iter().enumerate() {
                let ok = m.is_finite() && (s.noise == NoiseKind::Gaussian || (0.0..=1.0).contains(&m));
                if !ok {
                    let domain =
                        if s.noise == NoiseKind::Bernoulli { "in [0, 1] for Bernoulli rewards" } else { "finite" };
                    return Err(at.key(&format!("{p}.means[{i}]"), format!("expected a mean {domain}, got {m}")));
                }
            }
            if s.baseline >= s.means.len() {
                return Err(at.key(
                    &format!("{p}.baseline"),
                    format!("expected an arm index below {}, got {}", s.means.len(), s.baseline),
                ));
            }
        }
        EnvironmentSpec::Supervised(s) => {
            let p = "environment.supervised";
            if s.features == 0 {
                return Err(at.key(&format!("{p}.features"), "expected at least 1 feature column"));
            }
            if s.classes < 2 {
                return Err(at.key(&format!("{p}.classes"), format!("expected at least 2, got {}", s.classes)));
            }
            if !(s.feature_scale.is_finite() && s.feature_scale > 0.0) {
                return Err(at.key(
                    &format!("{p}.feature_scale"),
                    format!("expected a finite value > 0, got {}", s.feature_scale),
                ));
            }
            if s.projection_dim == Some(0) {
                return Err(at.key(&format!("{p}.projection_dim"), "expected at least 1 dimension"));
            }
            if s.baseline_rows_per_class == 0 {
                return Err(at.key(&format!("{p}.baseline_rows_per_class"), "expected at least 1 row"));
            }
        }
        // The engine's MDP constructors assert their parameters: everything is checked here first.
        EnvironmentSpec::RiverSwim(s) => {
            let p = "environment.river_swim";
            if !(3..=1000).contains(&s.states) {
                return Err(at.key(&format!("{p}.states"), format!("expected 3..=1000, got {}", s.states)));
            }
            check_episode_length(at, p, s.episode_length)?;
        }
        EnvironmentSpec::CliffGridworld(s) => {
            let p = "environment.cliff_gridworld";
            if !(2..=100).contains(&s.rows) {
                return Err(at.key(&format!("{p}.rows"), format!("expected 2..=100, got {}", s.rows)));
            }
            if !(3..=100).contains(&s.cols) {
                return Err(at.key(&format!("{p}.cols"), format!("expected 3..=100, got {}", s.cols)));
            }
            if !(0.0..=1.0).contains(&s.slip) {
                return Err(at.key(&format!("{p}.slip"), format!("expected a probability in [0, 1], got {}", s.slip)));
            }
            check_episode_length(at, p, s.episode_length)?;
        }
        EnvironmentSpec::Inventory(s) => {
            let p = "environment.inventory";
            if !(1..=100).contains(&s.capacity) {
                return Err(at.key(&format!("{p}.capacity"), format!("expected 1..=100, got {}", s.capacity)));
            }
            if !(1..=1000).contains(&s.max_demand) {
                return Err(at.key(&format!("{p}.max_demand"), format!("expected 1..=1000, got {}", s.max_demand)));
            }
            check_episode_length(at, p, s.episode_length)?;
        }
    }
    Ok(())
}

fn validate_feedback(f: &FeedbackSpec, at: &ErrorSite<'_>) -> Result<(), SimError> {
    if !(f.mean_delay.is_finite() && f.mean_delay >= 0.0 && f.mean_delay <= 1e9) {
        return Err(at.key("feedback.mean_delay", format!("expected a value in [0, 1e9] rounds, got {}", f.mean_delay)));
    }
    if !(0.0..=1.0).contains(&f.loss) {
        return Err(at.key("feedback.loss", format!("expected a probability in [0, 1], got {}", f.loss)));
    }
    if f.timeout == Some(0) {
        return Err(at.key("feedback.timeout", "expected at least 1 round"));
    }
    Ok(())
}

/// The range of expected rewards and the Gaussian noise level of an environment, for the reward-range check.
fn reward_envelope(env: &EnvironmentSpec) -> Option<(f64, f64, f64)> {
    match env {
        EnvironmentSpec::Linear(s) if s.noise == NoiseKind::Gaussian => Some((0.0, 1.0, s.noise_std?)),
        EnvironmentSpec::KArmed(s) if s.noise == NoiseKind::Gaussian => {
            let lo = s.means.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = s.means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((lo, hi, s.noise_std?))
        }
        _ => None,
    }
}

fn parse_policy(
    index: usize,
    table: toml::Spanned<toml::Table>,
    problem: &Problem,
    raw: &ScenarioToml,
    at: &ErrorSite<'_>,
) -> Result<PolicySpec, SimError> {
    let prefix = format!("policies[{index}]");
    let offset = Some(table.span().start);
    let mut table = table.into_inner();
    let label = match table.remove("label") {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s,
        Some(other) => {
            return Err(at.key_at(
                &format!("{prefix}.label"),
                format!("expected a non-empty string, got {}", other.type_str()),
                offset,
            ));
        }
        None => return Err(at.key_at(&format!("{prefix}.label"), "missing field `label`", offset)),
    };
    let episodic_algorithm =
        table.get("algorithm").and_then(toml::Value::as_str).is_some_and(|a| EPISODIC_ALGORITHMS.contains(&a));
    let config = match problem {
        Problem::Bandit(_) if episodic_algorithm => {
            return Err(at.key_at(
                &format!("{prefix}.algorithm"),
                "expected a bandit algorithm: ucbvi and conservative_ucbvi need an episodic environment \
                 ([environment.river_swim], [environment.cliff_gridworld] or [environment.inventory])",
                offset,
            ));
        }
        Problem::Episodic(_) if !episodic_algorithm => {
            return Err(at.key_at(
                &format!("{prefix}.algorithm"),
                "expected `ucbvi` or `conservative_ucbvi` with an episodic environment",
                offset,
            ));
        }
        Problem::Bandit(layout) => LearnerConfig::Bandit(bandit_config(&prefix, offset, table, *layout, raw, at)?),
        Problem::Episodic(truth) => LearnerConfig::Episodic(episodic_config(&prefix, offset, table, truth, raw, at)?),
    };
    config.validate().map_err(|e| match e {
        EngineError::InvalidConfig { field, reason } => at.key_at(&format!("{prefix}.{field}"), reason, offset),
        other => at.key_at(&prefix, other.to_string(), offset),
    })?;
    // alpha and delta are swept, so every grid value must be valid for this policy too.
    for (i, &alpha) in raw.alphas.iter().enumerate() {
        config
            .for_run(alpha, raw.deltas[0], 0)
            .validate()
            .map_err(|e| at.key(&format!("alphas[{i}]"), format!("policy `{label}` refuses it: {e}")))?;
    }
    for (i, &delta) in raw.deltas.iter().enumerate() {
        config
            .for_run(raw.alphas[0], delta, 0)
            .validate()
            .map_err(|e| at.key(&format!("deltas[{i}]"), format!("policy `{label}` refuses it: {e}")))?;
    }
    Ok(PolicySpec { label, config })
}

fn refuse_owned_keys(
    table: &toml::Table,
    owned: &[(&str, &str)],
    prefix: &str,
    offset: Option<usize>,
    at: &ErrorSite<'_>,
) -> Result<(), SimError> {
    for (key, why) in owned {
        if table.contains_key(*key) {
            return Err(at.key_at(&format!("{prefix}.{key}"), format!("is set by the simulator: {why}"), offset));
        }
    }
    Ok(())
}

/// Deserialises an engine configuration from a policy table, naming the key path on error.
fn deserialize_config<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    prefix: &str,
    offset: Option<usize>,
    at: &ErrorSite<'_>,
) -> Result<T, SimError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { prefix.to_string() } else { format!("{prefix}.{path}") };
        at.key_at(&key, e.into_inner().message().to_string(), offset)
    })
}

fn bandit_config(
    prefix: &str,
    offset: Option<usize>,
    mut table: toml::Table,
    layout: Layout,
    raw: &ScenarioToml,
    at: &ErrorSite<'_>,
) -> Result<PolicyConfig, SimError> {
    refuse_owned_keys(&table, &OWNED_POLICY_KEYS, prefix, offset, at)?;
    let layout_value = toml::Value::try_from(layout)
        .map_err(|e| at.key(&format!("{prefix}.layout"), format!("cannot represent the layout: {e}")))?;
    table.insert("layout".into(), layout_value);
    table.insert("alpha".into(), toml::Value::Float(raw.alphas[0]));
    table.insert("delta".into(), toml::Value::Float(raw.deltas[0]));
    let config: PolicyConfig = deserialize_config(table, prefix, offset, at)?;
    if let Constraint::Checkpoint { every } = config.constraint
        && every > raw.horizon
    {
        return Err(at.key_at(
            &format!("{prefix}.constraint.every"),
            format!("expected a checkpoint interval <= horizon ({}), got {every}", raw.horizon),
            offset,
        ));
    }
    if let Some((lo, hi, std)) = reward_envelope(&raw.environment) {
        let [min, max] = config.reward_range;
        let need = [lo - GAUSSIAN_TAIL_SIGMAS * std, hi + GAUSSIAN_TAIL_SIGMAS * std];
        if min > need[0] || max < need[1] {
            return Err(at.key_at(
                &format!("{prefix}.reward_range"),
                format!(
                    "expected a range covering [{}, {}] (expected rewards in [{lo}, {hi}] plus {GAUSSIAN_TAIL_SIGMAS} \
                     noise standard deviations): Gaussian rewards would fall outside [{min}, {max}] and the engine \
                     would reject them",
                    need[0], need[1]
                ),
                offset,
            ));
        }
    }
    Ok(config)
}

fn episodic_config(
    prefix: &str,
    offset: Option<usize>,
    mut table: toml::Table,
    truth: &EpisodicTruth,
    raw: &ScenarioToml,
    at: &ErrorSite<'_>,
) -> Result<EpisodicConfig, SimError> {
    refuse_owned_keys(&table, &OWNED_EPISODIC_KEYS, prefix, offset, at)?;
    // The bandit policies' `baseline_reward` keeps its meaning: "known" hands the learner the exact V^b.
    let known = match table.remove("baseline_reward") {
        None => false,
        Some(toml::Value::String(s)) if s == "unknown" => false,
        Some(toml::Value::String(s)) if s == "known" => true,
        Some(other) => {
            return Err(at.key_at(
                &format!("{prefix}.baseline_reward"),
                format!("expected \"known\" or \"unknown\", got {other}"),
                offset,
            ));
        }
    };
    let mdp = &truth.env.mdp;
    let start = toml::Value::try_from(StartState::Fixed { state: truth.env.start })
        .map_err(|e| at.key(&format!("{prefix}.start"), format!("cannot represent the start state: {e}")))?;
    let count = |n: usize| toml::Value::Integer(n as i64);
    table.insert("states".into(), count(mdp.states));
    table.insert("actions".into(), count(mdp.actions));
    table.insert("horizon".into(), count(mdp.horizon));
    table.insert("start".into(), start);
    table.insert("baseline_policy".into(), toml::Value::Array(truth.env.baseline.iter().map(|&a| count(a)).collect()));
    table.insert("alpha".into(), toml::Value::Float(raw.alphas[0]));
    table.insert("delta".into(), toml::Value::Float(raw.deltas[0]));
    if known {
        table.insert("baseline_value".into(), toml::Value::Float(truth.baseline_value));
    }
    deserialize_config(table, prefix, offset, at)
}
