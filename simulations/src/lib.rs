//! `safebet-simulations`: before an experiment goes live, run its policies against simulated traffic and
//! measure what learning costs (regret) and whether the baseline is ever undercut (the safety margin
//! sum_i mu_i(a_i) - (1 - alpha) sum_i mu_i(b_i), Kazerouni et al. 2017, eq. 3), exactly, from the truth.
//!
//! The principal types:
//! - [`Scenario`]: a TOML scenario file (environment, horizon, policies, alpha and delta grids), validated
//!   with errors that name the file and the key.
//! - [`simulate`] with [`RunOptions`] (threads, seeds, [`Shard`]) gives a [`RunSet`] of [`RunRecord`]s;
//!   [`merge`] puts shards back together.
//! - [`RunSet::summary`] gives the [`Summary`] (summary.json) and the [`CurveRow`]s (curves.csv);
//!   [`RunSet::write_all`] writes them with the SVG plots.
//!
//! Every decision is made by `safebet_engine::Policy` (or, on episodic MDPs, `safebet_engine::EpisodicLearner`),
//! the code the service runs: this crate only builds environments, feeds rounds and rewards to the policy, and
//! measures. Each run's random streams derive from
//! (scenario seed, run index), so the output is byte-identical with any thread count and with or without
//! sharding.
//!
//! ```
//! use safebet_simulations::{RunOptions, Scenario, simulate};
//!
//! let text = r#"
//! name = "doc"
//! horizon = 300
//! seeds = 2
//! seed = 1
//! alphas = [0.1]
//! deltas = [0.05]
//!
//! [environment.k_armed]
//! means = [0.5, 0.6, 0.4]
//! noise = "bernoulli"
//!
//! [[policies]]
//! label = "conservative"
//! algorithm = "conservative_ucb"
//! baseline_reward = "known"
//! "#;
//! let scenario = Scenario::from_toml_str(text, "doc.toml", std::path::Path::new("."))?;
//! let runs = simulate(&scenario, &RunOptions::default(), &|_| {})?;
//! let (summary, curves) = runs.summary()?;
//! assert_eq!(summary.results.len(), 1);
//! assert_eq!(summary.results[0].runs, 2);
//! assert!(!curves.is_empty());
//! # Ok::<(), safebet_simulations::SimError>(())
//! ```
#![deny(missing_docs)]

mod environment;
mod error;
mod feedback;
mod output;
mod plot;
mod run;
mod scenario;
mod seeds;
mod simulate;
mod stats;
mod summary;

pub use environment::{Actions, EnvRun, Environment, RoundView};
pub use error::SimError;
pub use output::merge;
pub use run::RunRecord;
pub use scenario::{
    ChangeKind, CliffGridworldSpec, CurveSpacing, DelayKind, EnvironmentSpec, FeedbackSpec, InventorySpec, KArmedSpec,
    LearnerConfig, LinearSpec, NoiseKind, PolicySpec, RiverSwimSpec, Scenario, SupervisedSpec,
};
pub use seeds::policy_seed;
pub use simulate::{RunOptions, RunSet, Shard, simulate, total_rounds};
pub use summary::{
    CURVE_METRICS, CurveRow, DriftStats, GuardStats, MarginStats, PolicyResult, Spread, Summary, curve_rounds,
};
