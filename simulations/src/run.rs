//! One run: an environment instance fed to one engine `Policy` for `horizon` rounds (or one `EpisodicLearner`
//! for `horizon` episodes), measured against the truth. The loops only move data between the two; every
//! decision is the engine's.

use safebet_engine::{
    BaselineReward, Constraint, Driver, EngineError, EpisodicConfig, EpisodicLearner, Fallback, Policy, PolicyConfig,
    Round,
};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::environment::Environment;
use crate::feedback::{Delivery, FeedbackQueue};
use crate::scenario::{FeedbackSpec, LearnerConfig};
use crate::seeds::{Stream, stream_rng};

/// Rounds between two progress reports of a run.
const PROGRESS_EVERY: u64 = 4096;

/// The measurements of one run of one policy at one (alpha, delta): what summaries and merges are built from.
///
/// Every number is exact for the run: expected rewards come from the environment's truth, not from the noisy
/// rewards the policy saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Index of the policy in the scenario.
    pub policy: usize,
    /// Index into the scenario's `alphas`.
    pub alpha: usize,
    /// Index into the scenario's `deltas`.
    pub delta: usize,
    /// Run (seed) index.
    pub run: u32,
    /// sum_t (max_a mu_t(a) - mu_t(a_t)) at the horizon.
    pub final_regret: f64,
    /// The smallest margin sum_i mu_i(a_i) - (1 - alpha) sum_i mu_i(b_i) over the rounds where the policy's
    /// constraint applies (every round, or its checkpoints).
    pub min_margin: f64,
    /// The first such round with a negative margin, if any.
    pub first_violation: Option<u64>,
    /// The first such round at or after the environment's change with a negative margin, if the environment
    /// changes and the margin went negative after it (a run can violate before and after the change).
    #[serde(default)]
    pub first_violation_after_change: Option<u64>,
    /// Rounds whose action was the baseline's.
    pub baseline_plays: u64,
    /// Rounds where the safety rule replaced the learner's choice by the baseline.
    pub fallback_plays: u64,
    /// sum_t mu_t(a_t).
    pub final_reward: f64,
    /// sum_t mu_t(b_t).
    pub baseline_reward: f64,
    /// Cumulative regret at each curve round.
    pub regret: Vec<f64>,
    /// Margin at each curve round.
    pub margin: Vec<f64>,
    /// Share of the rounds since the previous curve round (inclusive of this one) that played the baseline.
    pub baseline_share: Vec<f64>,
    /// The round at which the policy's drift guard raised its alarm, if it has a guard and did.
    #[serde(default)]
    pub drift_alarm: Option<u64>,
}

/// One unit of parallel work: one run of one policy configuration, measured at one or more alphas.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub policy: usize,
    pub label: String,
    /// The engine configuration with alpha, delta and seed filled in.
    pub config: LearnerConfig,
    /// (index, value) of every alpha this run is measured at: one for a conservative policy, whose decisions
    /// depend on alpha, all of them for an unconstrained one, whose decisions do not.
    pub alphas: Vec<(usize, f64)>,
    pub delta: usize,
    pub run: u32,
}

/// What a run needs besides its job.
pub(crate) struct RunContext<'a> {
    pub environment: &'a Environment,
    pub feedback: Option<&'a FeedbackSpec>,
    pub scenario_seed: u64,
    pub horizon: u64,
    /// Rounds at which curves are recorded, increasing, ending at `horizon`.
    pub grid: &'a [u64],
    /// The round at which a non-stationary environment starts to change.
    pub change_at: Option<u64>,
}

/// The margin of one alpha over a run.
struct AlphaTrack {
    index: usize,
    keep: f64,
    min_margin: f64,
    first_violation: Option<u64>,
    first_violation_after_change: Option<u64>,
    margin: Vec<f64>,
}

/// Everything measured over a run, from the truth of each round: shared by the bandit and episodic loops.
struct Meter<'a> {
    grid: &'a [u64],
    /// The constraint applies at rounds divisible by this (1 = every round).
    checkpoint: u64,
    /// Violations from this round on are also counted apart (never, on a stationary environment).
    change_at: u64,
    tracks: Vec<AlphaTrack>,
    regret_curve: Vec<f64>,
    share_curve: Vec<f64>,
    regret: f64,
    reward: f64,
    baseline_reward: f64,
    baseline_plays: u64,
    fallback_plays: u64,
    window_start: u64,
    window_baseline: u64,
    next_point: usize,
    unreported: u64,
    drift_alarm: Option<u64>,
}

impl<'a> Meter<'a> {
    fn new(job: &Job, ctx: &RunContext<'a>) -> Meter<'a> {
        let grid = ctx.grid;
        let checkpoint = match job.config.constraint() {
            Constraint::PerStep => 1,
            Constraint::Checkpoint { every } => every,
        };
        let tracks = job
            .alphas
            .iter()
            .map(|&(index, alpha)| AlphaTrack {
                index,
                keep: 1.0 - alpha,
                min_margin: f64::INFINITY,
                first_violation: None,
                first_violation_after_change: None,
                margin: Vec::with_capacity(grid.len()),
            })
            .collect();
        Meter {
            grid,
            checkpoint,
            change_at: ctx.change_at.unwrap_or(u64::MAX),
            tracks,
            regret_curve: Vec::with_capacity(grid.len()),
            share_curve: Vec::with_capacity(grid.len()),
            regret: 0.0,
            reward: 0.0,
            baseline_reward: 0.0,
            baseline_plays: 0,
            fallback_plays: 0,
            window_start: 0,
            window_baseline: 0,
            next_point: 0,
            unreported: 0,
            drift_alarm: None,
        }
    }

    /// Books round `t`: the best expected reward, the played and the baseline's expected rewards, whether the
    /// baseline was played and whether the safety rule forced it.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        t: u64,
        best: f64,
        mu_action: f64,
        mu_baseline: f64,
        played_baseline: bool,
        fallback: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) {
        self.regret += best - mu_action;
        self.reward += mu_action;
        self.baseline_reward += mu_baseline;
        self.baseline_plays += u64::from(played_baseline);
        self.window_baseline += u64::from(played_baseline);
        self.fallback_plays += u64::from(fallback);
        let constrained = t.is_multiple_of(self.checkpoint);
        for track in &mut self.tracks {
            let margin = self.reward - track.keep * self.baseline_reward;
            if constrained {
                track.min_margin = track.min_margin.min(margin);
                if margin < 0.0 {
                    track.first_violation.get_or_insert(t);
                    if t >= self.change_at {
                        track.first_violation_after_change.get_or_insert(t);
                    }
                }
            }
        }
        if self.grid.get(self.next_point) == Some(&t) {
            self.regret_curve.push(self.regret);
            self.share_curve.push(self.window_baseline as f64 / (t - self.window_start) as f64);
            for track in &mut self.tracks {
                track.margin.push(self.reward - track.keep * self.baseline_reward);
            }
            self.window_start = t;
            self.window_baseline = 0;
            self.next_point += 1;
        }
        self.unreported += 1;
        if self.unreported == PROGRESS_EVERY {
            progress(self.unreported);
            self.unreported = 0;
        }
    }

    fn finish(self, job: &Job, progress: &(dyn Fn(u64) + Sync)) -> Vec<RunRecord> {
        progress(self.unreported);
        let Meter { regret, reward, baseline_reward, baseline_plays, fallback_plays, drift_alarm, .. } = self;
        let (regret_curve, share_curve) = (self.regret_curve, self.share_curve);
        self.tracks
            .into_iter()
            .map(|track| RunRecord {
                policy: job.policy,
                alpha: track.index,
                delta: job.delta,
                run: job.run,
                final_regret: regret,
                min_margin: track.min_margin,
                first_violation: track.first_violation,
                first_violation_after_change: track.first_violation_after_change,
                baseline_plays,
                fallback_plays,
                final_reward: reward,
                baseline_reward,
                regret: regret_curve.clone(),
                margin: track.margin,
                baseline_share: share_curve.clone(),
                drift_alarm,
            })
            .collect()
    }
}

/// Runs one job, calling `progress` with the number of rounds done every few thousand rounds.
pub(crate) fn run_job(
    ctx: &RunContext<'_>,
    job: &Job,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<RunRecord>, SimError> {
    // Contexts are formatted only when an error happens: formatting every round would cost more than the
    // environment itself.
    let engine_error = |context: std::fmt::Arguments<'_>, error: EngineError| SimError::Engine {
        label: job.label.clone(),
        context: format!("{context} of run {}", job.run),
        error,
    };
    match &job.config {
        LearnerConfig::Bandit(config) => run_bandit(ctx, job, config, progress, &engine_error),
        LearnerConfig::Episodic(config) => run_episodic(ctx, job, config, progress, &engine_error),
    }
}

type EngineErrorAt<'e> = dyn Fn(std::fmt::Arguments<'_>, EngineError) -> SimError + 'e;

fn run_bandit(
    ctx: &RunContext<'_>,
    job: &Job,
    config: &PolicyConfig,
    progress: &(dyn Fn(u64) + Sync),
    engine_error: &EngineErrorAt<'_>,
) -> Result<Vec<RunRecord>, SimError> {
    let mut policy = Policy::new(config.clone()).map_err(|e| engine_error(format_args!("configuration"), e))?;
    let mut env = ctx.environment.instance(ctx.scenario_seed, job.run).expect("a bandit environment");
    let mut feedback =
        ctx.feedback.map(|spec| FeedbackQueue::new(spec, stream_rng(ctx.scenario_seed, job.run, Stream::Feedback)));
    let known_baseline = config.baseline_reward == BaselineReward::Known;
    let guarded = config.drift_guard.is_some();
    let mut meter = Meter::new(job, ctx);
    let mut deliveries = Vec::new();

    for t in 1..=ctx.horizon {
        if let Some(queue) = feedback.as_mut() {
            queue.due(t, &mut deliveries);
            for delivery in &deliveries {
                match *delivery {
                    Delivery::Reward(id, r) => policy.observe_reward(id, r).map_err(|e| {
                        engine_error(format_args!("observe_reward {r} of decision {id} at round {t}"), e)
                    })?,
                    Delivery::Expire(id) => policy
                        .expire(id)
                        .map_err(|e| engine_error(format_args!("expire of decision {id} at round {t}"), e))?,
                }
            }
        }
        let view = env.round(t);
        let mu_baseline = view.mu[view.baseline];
        let round = Round {
            actions: view.action_set(),
            baseline: view.baseline,
            baseline_expected_reward: known_baseline.then_some(mu_baseline),
        };
        let decision = policy.decide(&round).map_err(|e| engine_error(format_args!("decide at round {t}"), e))?;
        let mu_action = view.mu[decision.action];
        let best = view.best;
        let played_baseline = decision.action == view.baseline;
        let observed = env.reward(mu_action);
        match feedback.as_mut() {
            Some(queue) => queue.schedule(t, decision.id, observed),
            None => policy.observe_reward(decision.id, observed).map_err(|e| {
                engine_error(format_args!("observe_reward {observed} of decision {} at round {t}", decision.id), e)
            })?,
        }
        let fallback = decision.fallback == Fallback::Budget;
        meter.record(t, best, mu_action, mu_baseline, played_baseline, fallback, progress);
        if guarded && meter.drift_alarm.is_none() && policy.drift_alarm().is_some() {
            meter.drift_alarm = Some(t);
        }
    }
    Ok(meter.finish(job, progress))
}

/// An episodic run: each round is an episode, whose expected reward is the exact value V^pi(s_1) of the
/// policy that drove it (Garcelon et al. 2020, AISTATS: the constraint is on these values).
fn run_episodic(
    ctx: &RunContext<'_>,
    job: &Job,
    config: &EpisodicConfig,
    progress: &(dyn Fn(u64) + Sync),
    engine_error: &EngineErrorAt<'_>,
) -> Result<Vec<RunRecord>, SimError> {
    let truth = ctx.environment.episodic().expect("an episodic environment");
    let mut learner =
        EpisodicLearner::new(config.clone()).map_err(|e| engine_error(format_args!("configuration"), e))?;
    // One uniform draw per step, whatever the policy: runs of different learners share their randomness.
    let mut moves = stream_rng(ctx.scenario_seed, job.run, Stream::Noise);
    let conservative = job.config.is_conservative();
    let mut meter = Meter::new(job, ctx);
    for k in 1..=ctx.horizon {
        let plan = learner.start_episode().map_err(|e| engine_error(format_args!("start_episode {k}"), e))?;
        let played_baseline = plan.driver == Driver::Baseline;
        let value = match plan.driver {
            Driver::Baseline => truth.baseline_value,
            Driver::Learner => truth.value(learner.active_policy().expect("an episode is running")),
        };
        let mut state = truth.env.start;
        for step in 0..truth.env.mdp.horizon {
            let action = learner
                .action(step, state)
                .map_err(|e| engine_error(format_args!("action at step {step} of episode {k}"), e))?;
            let next = truth.next_state(state, action, &mut moves);
            learner
                .observe(step, state, action, truth.reward(state, action), next)
                .map_err(|e| engine_error(format_args!("observe at step {step} of episode {k}"), e))?;
            state = next;
        }
        learner.end_episode().map_err(|e| engine_error(format_args!("end_episode {k}"), e))?;
        let (best, baseline) = (truth.optimal_value, truth.baseline_value);
        meter.record(k, best, value, baseline, played_baseline, played_baseline && conservative, progress);
    }
    Ok(meter.finish(job, progress))
}
