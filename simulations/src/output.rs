//! Files in an output directory: runs.jsonl and manifest.json (everything a merge needs), and for a complete
//! set of runs summary.json, curves.csv and the SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::plot::write_plots;
use crate::run::RunRecord;
use crate::scenario::Scenario;
use crate::simulate::{RunSet, Shard};
use crate::summary::{CurveRow, Summary, canonicalise, summarise};

/// Version of the runs.jsonl / manifest.json format.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const RUNS: &str = "runs.jsonl";

/// What a shard directory says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    scenario: String,
    scenario_origin: String,
    /// The scenario's full text, so that a merge needs neither the file nor its data.
    scenario_toml: String,
    seeds: u32,
    shard_index: u32,
    shard_count: u32,
    wall_seconds: f64,
    records: usize,
}

impl RunSet {
    /// Summary and curve rows of a complete run set (an unsharded run or a merge).
    pub fn summary(&self) -> Result<(Summary, Vec<CurveRow>), SimError> {
        if self.shard.count != 1 {
            return Err(SimError::Merge(format!(
                "shard {}/{} holds only part of the runs: merge all shards first",
                self.shard.index, self.shard.count
            )));
        }
        let mut records = self.records.clone();
        canonicalise(&self.scenario, self.runs, &mut records)?;
        Ok(summarise(&self.scenario, self.runs, self.wall_seconds, &records))
    }

    /// Writes runs.jsonl and manifest.json into `dir` (created if needed): the raw material of a merge.
    pub fn write_runs(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(SimError::io(dir))?;
        let mut lines = String::new();
        for record in &self.records {
            let line = serde_json::to_string(record).expect("run records serialise");
            lines.push_str(&line);
            lines.push('\n');
        }
        write(&dir.join(RUNS), &lines)?;
        let manifest = Manifest {
            format: FORMAT,
            scenario: self.scenario.name.clone(),
            scenario_origin: self.scenario.origin.clone(),
            scenario_toml: self.scenario.source.clone(),
            seeds: self.runs,
            shard_index: self.shard.index,
            shard_count: self.shard.count,
            wall_seconds: self.wall_seconds,
            records: self.records.len(),
        };
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        write(&dir.join(MANIFEST), &(text + "\n"))
    }

    /// Writes everything: runs.jsonl, manifest.json, and, for a complete run set, summary.json, curves.csv
    /// and the plots. Returns the summary when there is one.
    pub fn write_all(&self, dir: &Path) -> Result<Option<Summary>, SimError> {
        self.write_runs(dir)?;
        if self.shard.count != 1 {
            return Ok(None);
        }
        let (summary, curves) = self.summary()?;
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        write(&dir.join("summary.json"), &(json + "\n"))?;
        write(&dir.join("curves.csv"), &curves_csv(&curves))?;
        write_plots(dir, &self.scenario, &summary, &curves)?;
        Ok(Some(summary))
    }
}

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(SimError::io(path))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// curves.csv in long form. Floats print in Rust's shortest round-trip form, which is deterministic.
pub(crate) fn curves_csv(rows: &[CurveRow]) -> String {
    let mut out = String::from("label,alpha,delta,t,metric,mean,p05,p95\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&r.label),
            r.alpha,
            r.delta,
            r.t,
            r.metric,
            r.mean,
            r.p05,
            r.p95
        );
    }
    out
}

fn read_shard(dir: &Path) -> Result<(Manifest, Vec<RunRecord>), SimError> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(SimError::io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| SimError::Results {
        path: manifest_path.clone(),
        line: e.line(),
        message: e.to_string(),
    })?;
    if manifest.format != FORMAT {
        return Err(SimError::Results {
            path: manifest_path,
            line: 0,
            message: format!("format {} is not the supported format {FORMAT}", manifest.format),
        });
    }
    let runs_path = dir.join(RUNS);
    let text = std::fs::read_to_string(&runs_path).map_err(SimError::io(&runs_path))?;
    let mut records = Vec::with_capacity(manifest.records);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: RunRecord = serde_json::from_str(line).map_err(|e| SimError::Results {
            path: runs_path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        records.push(record);
    }
    if records.len() != manifest.records {
        return Err(SimError::Results {
            path: runs_path,
            line: 0,
            message: format!("the manifest announces {} records, the file has {}", manifest.records, records.len()),
        });
    }
    Ok((manifest, records))
}

/// Merges shard directories (each written by a `--shard I/N` run) into the complete run set of an unsharded
/// run: same scenario text, same seeds, every shard exactly once.
pub fn merge(dirs: &[PathBuf]) -> Result<RunSet, SimError> {
    let Some(first_dir) = dirs.first() else {
        return Err(SimError::Merge("no shard directory given".into()));
    };
    let (first, mut records) = read_shard(first_dir)?;
    let mut seen = vec![false; first.shard_count as usize];
    let mut wall_seconds = 0.0;
    let mut mark = |dir: &Path, m: &Manifest| -> Result<(), SimError> {
        if m.scenario_toml != first.scenario_toml || m.seeds != first.seeds || m.shard_count != first.shard_count {
            return Err(SimError::Merge(format!(
                "{} holds a different scenario, seed count or shard count than {}",
                dir.display(),
                first_dir.display()
            )));
        }
        let slot = seen.get_mut(m.shard_index as usize).ok_or_else(|| {
            SimError::Merge(format!("{}: shard index {} >= count {}", dir.display(), m.shard_index, m.shard_count))
        })?;
        if std::mem::replace(slot, true) {
            return Err(SimError::Merge(format!("shard {}/{} is given twice", m.shard_index, m.shard_count)));
        }
        wall_seconds += m.wall_seconds;
        Ok(())
    };
    mark(first_dir, &first)?;
    for dir in &dirs[1..] {
        let (manifest, more) = read_shard(dir)?;
        mark(dir, &manifest)?;
        records.extend(more);
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(SimError::Merge(format!("shard {missing}/{} is missing", first.shard_count)));
    }
    // The scenario is re-read from the text the shards carry; its data files are not needed to summarise.
    let scenario = Scenario::from_toml_str(&first.scenario_toml, &first.scenario_origin, Path::new("."))?;
    let mut set = RunSet { scenario, runs: first.seeds, shard: Shard::WHOLE, wall_seconds, records };
    canonicalise(&set.scenario, set.runs, &mut set.records)?;
    Ok(set)
}
