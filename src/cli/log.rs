//! `safebet log`: exports the decision log from the store as CSV or JSON lines, one line per decision with
//! its reward joined (empty when none arrived), ready for pandas or for `safebet ope log`; with
//! `--transitions`, the episodic experiments' transitions instead, one line per step.

use std::collections::HashMap;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use safebet_engine::FeatureLayout;
use safebet_service::{DATABASE_FILE, LogEntry, SqliteStore, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line, with the round's features.
    Jsonl,
    /// Comma-separated, with a header; without features.
    Csv,
}

/// Export the decision log (one line per decision, its reward joined) from a service's data directory.
///
/// Reads the store directly, so it works while the service runs (SQLite WAL readers do not block writers)
/// and after it stopped. The output feeds `safebet ope log FILE`. With `--transitions`, exports the episodic
/// experiments' transitions (episode, step, state, action, reward, next state, who drove) instead.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The service's data directory (`safebet serve --data-dir`).
    #[arg(long, default_value = "safebet-data")]
    data_dir: PathBuf,
    /// Only this experiment (default: all, ordered by experiment then sequence).
    #[arg(long)]
    experiment: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Export the episodic experiments' transitions, one line per step, instead of the bandits' decisions.
    #[arg(long)]
    transitions: bool,
}

/// One exported transition of an episodic experiment.
#[derive(Debug, Serialize)]
struct ExportedTransition {
    experiment_id: String,
    sequence: u64,
    unix_ms: i64,
    episode: u64,
    /// "learner" or "baseline": whose policy chose the action.
    driver: &'static str,
    /// Whether the kill switch handed the episode to the baseline.
    paused: bool,
    step: usize,
    state: usize,
    action: usize,
    reward: f64,
    next_state: usize,
}

/// One exported decision. Field names match what `safebet ope log` reads.
#[derive(Debug, Serialize)]
struct ExportedDecision {
    experiment_id: String,
    sequence: u64,
    unix_ms: i64,
    decision_id: u64,
    event_id: String,
    num_actions: usize,
    action: usize,
    action_id: String,
    baseline: usize,
    propensity: f64,
    propensity_estimated: bool,
    played_baseline: bool,
    fallback: String,
    paused: bool,
    model_version: u64,
    /// The reward, or empty/null when none arrived.
    reward: Option<f64>,
    /// Whether the reward timed out.
    timed_out: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Vec<f64>>,
    /// How `features` describe the actions: shared, disjoint or arms.
    #[serde(skip_serializing_if = "Option::is_none")]
    layout: Option<FeatureLayout>,
}

pub fn run(args: LogArgs) -> Result<()> {
    if !args.data_dir.join(DATABASE_FILE).exists() {
        bail!("{} holds no safebet store ({DATABASE_FILE} is missing)", args.data_dir.display());
    }
    // Read-only: a running server may be writing the journal's tail and committing rows meanwhile (the
    // store merges the tail's intact records in, without replaying them).
    let store = SqliteStore::open_read_only(&args.data_dir)
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    if args.transitions {
        return export_transitions(&store, &args);
    }
    let with_features = args.format == Format::Jsonl;
    let mut decisions: Vec<ExportedDecision> = Vec::new();
    let mut index: HashMap<(String, u64), usize> = HashMap::new();
    store
        .read_log(args.experiment.as_deref(), &mut |record| {
            match record.entry {
                LogEntry::Decision(d) => {
                    index.insert((record.experiment_id.clone(), d.decision_id), decisions.len());
                    decisions.push(ExportedDecision {
                        experiment_id: record.experiment_id,
                        sequence: record.sequence,
                        unix_ms: record.unix_ms,
                        decision_id: d.decision_id,
                        event_id: d.event_id,
                        num_actions: d.num_actions,
                        action: d.action,
                        action_id: d.action_id,
                        baseline: d.baseline,
                        propensity: d.propensity,
                        propensity_estimated: d.propensity_estimated,
                        played_baseline: d.played_baseline,
                        fallback: format!("{:?}", d.fallback).to_lowercase(),
                        paused: d.paused,
                        model_version: d.model_version,
                        reward: None,
                        timed_out: false,
                        features: with_features.then_some(d.features),
                        layout: d.layout,
                    });
                }
                LogEntry::Reward { decision_id, value, .. } => {
                    if let Some(&i) = index.get(&(record.experiment_id, decision_id)) {
                        decisions[i].reward = Some(value);
                    }
                }
                LogEntry::Timeout { decision_id } => {
                    if let Some(&i) = index.get(&(record.experiment_id, decision_id)) {
                        decisions[i].timed_out = true;
                    }
                }
                _ => {}
            }
            Ok::<(), StoreError>(())
        })
        .context("reading the decision log")?;

    write_rows(&decisions, &args, "decisions")
}

/// Writes `rows` as the arguments say (JSON lines or CSV, to a file or standard output).
fn write_rows<T: Serialize>(rows: &[T], args: &LogArgs, what: &str) -> Result<()> {
    let sink: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    match args.format {
        Format::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut sink, row)?;
                sink.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(&mut sink);
            for row in rows {
                writer.serialize(row)?;
            }
            writer.flush()?;
        }
    }
    sink.flush()?;
    if let Some(path) = &args.output {
        eprintln!("wrote {} {what} to {}", rows.len(), path.display());
    }
    Ok(())
}

fn export_transitions(store: &SqliteStore, args: &LogArgs) -> Result<()> {
    let mut transitions = Vec::new();
    // The latest episode start of each experiment: its steps follow it in the log.
    let mut running: HashMap<String, (u64, bool, bool)> = HashMap::new();
    store
        .read_log(args.experiment.as_deref(), &mut |record| {
            match record.entry {
                LogEntry::EpisodeStart(start) => {
                    running.insert(record.experiment_id, (start.episode, start.learner_drives, start.paused));
                }
                LogEntry::Step(step) => {
                    let Some(&(episode, learner_drives, paused)) = running.get(&record.experiment_id) else {
                        // A step whose episode start was compacted away: nothing says who drove it.
                        return Ok(());
                    };
                    transitions.push(ExportedTransition {
                        experiment_id: record.experiment_id,
                        sequence: record.sequence,
                        unix_ms: record.unix_ms,
                        episode,
                        driver: if learner_drives { "learner" } else { "baseline" },
                        paused,
                        step: step.step,
                        state: step.state,
                        action: step.action,
                        reward: step.reward,
                        next_state: step.next_state,
                    });
                }
                _ => {}
            }
            Ok::<(), StoreError>(())
        })
        .context("reading the decision log")?;
    write_rows(&transitions, args, "transitions")
}
