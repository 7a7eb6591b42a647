//! `safebet simulate`: run a scenario before an experiment goes live, or merge the shards of one.
//! Glue only: the simulator lives in `safebet-simulations`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safebet_simulations::{RunOptions, RunSet, Scenario, Shard, Summary, merge, simulate, total_rounds};

/// Simulate a scenario's policies and report regret, baseline-constraint violations and plots.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub command: Option<SimulateCommand>,
    /// Scenario file, e.g. simulations/scenarios/kazerouni2017.toml.
    #[arg(value_name = "SCENARIO.toml", required = true)]
    pub scenario: Option<PathBuf>,
    /// Output directory [default: out/<scenario name>, or out/<scenario name>/shard-I-of-N].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Runs (seeds) per policy and grid point, overriding the scenario's `seeds`.
    #[arg(long, value_name = "N")]
    pub seeds: Option<u32>,
    /// Worker threads [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Run only shard I of N (the seeds whose index % N == I); merge the shard directories afterwards.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

#[derive(Debug, Subcommand)]
pub enum SimulateCommand {
    /// Merge shard directories into exactly the results of one unsharded run.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard output directories (each written by `safebet simulate --shard I/N`).
    #[arg(value_name = "DIR", required = true, num_args = 1..)]
    pub dirs: Vec<PathBuf>,
    /// Where to write summary.json, curves.csv and the plots.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: SimulateArgs) -> Result<()> {
    if let Some(SimulateCommand::Merge(merge_args)) = args.command {
        return run_merge(merge_args);
    }
    let path = args.scenario.context("a scenario file is required")?;
    let scenario = Scenario::from_file(&path)?;
    let threads = match args.threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let options = RunOptions { runs: args.seeds, threads, shard };
    let out = args.out.unwrap_or_else(|| {
        let dir = PathBuf::from("out").join(&scenario.name);
        if shard == Shard::WHOLE { dir } else { dir.join(format!("shard-{}-of-{}", shard.index, shard.count)) }
    });

    let bar = progress_bar(total_rounds(&scenario, &options));
    let result = simulate(&scenario, &options, &|rounds| bar.inc(rounds));
    bar.finish_and_clear();
    let runs = result.with_context(|| format!("simulating {}", path.display()))?;
    report(&runs, &out)
}

fn run_merge(args: MergeArgs) -> Result<()> {
    let runs = merge(&args.dirs)?;
    report(&runs, &args.out)
}

fn report(runs: &RunSet, out: &std::path::Path) -> Result<()> {
    let summary = runs.write_all(out).with_context(|| format!("writing results to {}", out.display()))?;
    match summary {
        Some(summary) => {
            print_table(&summary);
            println!(
                "wrote {0}/summary.json, {0}/curves.csv, {0}/regret.svg, {0}/margin.svg, {0}/baseline_share.svg",
                out.display()
            );
        }
        None => println!(
            "wrote shard {}/{} ({} run records) to {}; merge all shards with `safebet simulate merge DIR... --out DIR`",
            runs.shard.index,
            runs.shard.count,
            runs.records.len(),
            out.display()
        ),
    }
    Ok(())
}

/// A bar with ETA on a terminal; nothing at all when stderr is a file or a pipe.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {percent}% {human_pos}/{human_len} rounds, ETA {eta}",
    )
    .expect("valid progress template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn print_table(summary: &Summary) {
    let width = summary.results.iter().map(|r| r.label.len()).max().unwrap_or(5).max(5);
    println!(
        "{:width$}  {:>6}  {:>6}  {:>12}  {:>12}  {:>10}  {:>8}  {:>9}",
        "label", "alpha", "delta", "regret", "regret p95", "violations", "cp95", "baseline"
    );
    for r in &summary.results {
        println!(
            "{:width$}  {:>6}  {:>6}  {:>12.2}  {:>12.2}  {:>10}  {:>8.4}  {:>9.3}",
            r.label,
            r.alpha,
            r.delta,
            r.final_regret.mean,
            r.final_regret.p95,
            format!("{}/{}", r.violation_runs, r.runs),
            r.violation_rate_upper95,
            r.baseline_fraction
        );
    }
    let drifting: Vec<_> = summary.results.iter().filter_map(|r| r.drift.map(|d| (r, d))).collect();
    if !drifting.is_empty() {
        println!();
        println!(
            "{:width$}  {:>6}  {:>17}  {:>16}  {:>8}  {:>12}  {:>12}  {:>9}",
            "drift",
            "alpha",
            "violations before",
            "violations after",
            "alarms",
            "false alarms",
            "delay median",
            "delay p90"
        );
        let of = |n: u64| format!("{n}/{}", summary.seeds);
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        for (r, d) in drifting {
            let (alarms, false_alarms, median, p90) = match d.guard {
                Some(g) => (
                    of(g.alarm_runs),
                    of(g.false_alarm_runs),
                    show(g.detection_delay_median),
                    show(g.detection_delay_p90),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:width$}  {:>6}  {:>17}  {:>16}  {alarms:>8}  {false_alarms:>12}  {median:>12}  {p90:>9}",
                r.label,
                r.alpha,
                of(d.violations_before_change),
                of(d.violations_after_change),
            );
        }
        if let Some(change) = summary.results.iter().find_map(|r| r.drift.and_then(|d| d.change_at)) {
            println!("(the environment starts to change at round {change}; delays count from there)");
        }
    }
    println!("{} runs of {} rounds each, {:.1} s", summary.seeds, summary.horizon, summary.wall_seconds);
}
