//! Running a scenario: jobs (policy x alpha x delta x run) spread over a rayon pool of the requested size.
//! Jobs are independent and their random streams derive from (scenario seed, run), so neither the thread
//! count nor sharding changes any number.

use std::str::FromStr;
use std::time::Instant;

use rayon::prelude::*;
use safebet_engine::Constraint;

use crate::SimError;
use crate::environment::Environment;
use crate::run::{Job, RunContext, RunRecord, run_job};
use crate::scenario::Scenario;
use crate::seeds::policy_seed;
use crate::summary::canonicalise;

/// A slice of the runs: shard `index` of `count` runs the seeds with `run % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// All runs in one piece.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Whether run `run` belongs to this shard.
    pub fn contains(self, run: u32) -> bool {
        run % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = SimError;

    /// Parses `I/N` with 0 <= I < N, e.g. `3/8`.
    fn from_str(s: &str) -> Result<Shard, SimError> {
        let bad = || SimError::InvalidOption(format!("--shard expects I/N with 0 <= I < N (e.g. 0/4), got `{s}`"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// How to run a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Runs per (policy, alpha, delta); `None` takes the scenario's `seeds`.
    pub runs: Option<u32>,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Which runs to do.
    pub shard: Shard,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { runs: None, threads: 1, shard: Shard::WHOLE }
    }
}

/// The records of a run (complete, or one shard's part) and what produced them.
#[derive(Debug, Clone)]
pub struct RunSet {
    /// The scenario.
    pub scenario: Scenario,
    /// Runs per (policy, alpha, delta) in the complete experiment.
    pub runs: u32,
    /// Which part of the runs `records` holds.
    pub shard: Shard,
    /// Wall-clock seconds spent simulating.
    pub wall_seconds: f64,
    /// One record per (policy, alpha, delta, run) of the shard, in canonical order.
    pub records: Vec<RunRecord>,
}

/// The jobs of a scenario's shard, in a fixed order.
fn jobs(scenario: &Scenario, runs: u32, shard: Shard) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (p, policy) in scenario.policies.iter().enumerate() {
        // An unconstrained policy ignores alpha: one run is measured at every alpha instead of repeating it.
        let alpha_groups: Vec<Vec<(usize, f64)>> = if policy.config.is_conservative() {
            scenario.alphas.iter().copied().enumerate().map(|a| vec![a]).collect()
        } else {
            vec![scenario.alphas.iter().copied().enumerate().collect()]
        };
        for alphas in alpha_groups {
            for (d, &delta) in scenario.deltas.iter().enumerate() {
                for run in (0..runs).filter(|&r| shard.contains(r)) {
                    let config = policy.config.for_run(alphas[0].1, delta, policy_seed(scenario.seed, run));
                    jobs.push(Job {
                        policy: p,
                        label: policy.label.clone(),
                        config,
                        alphas: alphas.clone(),
                        delta: d,
                        run,
                    });
                }
            }
        }
    }
    jobs
}

/// Rounds the options will simulate (for a progress bar).
pub fn total_rounds(scenario: &Scenario, options: &RunOptions) -> u64 {
    let runs = options.runs.unwrap_or(scenario.runs);
    jobs(scenario, runs, options.shard).len() as u64 * scenario.horizon
}

/// Runs a scenario (or one shard of it) on `options.threads` threads. `progress` receives the number of
/// rounds done since its previous call, from any worker thread.
pub fn simulate(
    scenario: &Scenario,
    options: &RunOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RunSet, SimError> {
    let runs = options.runs.unwrap_or(scenario.runs);
    if runs == 0 {
        return Err(SimError::InvalidOption("--seeds must be at least 1".into()));
    }
    if options.threads == 0 {
        return Err(SimError::InvalidOption("--threads must be at least 1".into()));
    }
    for policy in &scenario.policies {
        // Checked when a file is parsed; checked again because a Scenario's fields can be changed in code.
        if let Constraint::Checkpoint { every } = policy.config.constraint()
            && every > scenario.horizon
        {
            return Err(SimError::InvalidOption(format!(
                "policy `{}`: checkpoint interval {every} exceeds the horizon {}: the constraint would never be \
                 checked",
                policy.label, scenario.horizon
            )));
        }
    }
    let environment = Environment::load(scenario)?;
    let grid = scenario.curve_rounds();
    let ctx = RunContext {
        environment: &environment,
        feedback: scenario.feedback.as_ref(),
        scenario_seed: scenario.seed,
        horizon: scenario.horizon,
        grid: &grid,
        change_at: scenario.change_round(),
    };
    let jobs = jobs(scenario, runs, options.shard);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .thread_name(|i| format!("safebet-sim-{i}"))
        .build()
        .map_err(|e| SimError::ThreadPool { threads: options.threads, message: e.to_string() })?;
    let started = Instant::now();
    // Collecting an indexed parallel iterator keeps job order, whatever thread ran each job.
    let results: Vec<Result<Vec<RunRecord>, SimError>> =
        pool.install(|| jobs.par_iter().with_max_len(1).map(|job| run_job(&ctx, job, progress)).collect());
    let wall_seconds = started.elapsed().as_secs_f64();
    let mut records = Vec::with_capacity(jobs.len() * scenario.alphas.len());
    for result in results {
        records.extend(result?);
    }
    if options.shard == Shard::WHOLE {
        canonicalise(scenario, runs, &mut records)?;
    } else {
        records.sort_by_key(|r| (r.policy, r.alpha, r.delta, r.run));
    }
    Ok(RunSet { scenario: scenario.clone(), runs, shard: options.shard, wall_seconds, records })
}
