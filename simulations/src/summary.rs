//! From run records to the published numbers: summary.json's results and curves.csv's rows. Records are put
//! in one canonical order (policy, alpha, delta, run) before anything is added up, so the output does not
//! depend on which thread or shard produced a record.

use safebet_engine::Constraint;
use serde::Serialize;

use crate::SimError;
use crate::run::RunRecord;
use crate::scenario::{CurveSpacing, Scenario};
use crate::stats::{clopper_pearson_upper, mean, quantile_sorted, sorted, std_dev};

/// Confidence level of the reported violation-rate upper bound.
const VIOLATION_CONFIDENCE: f64 = 0.95;

/// summary.json (schema in simulations/README.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The scenario's `name`.
    pub scenario: String,
    /// Rounds per run.
    pub horizon: u64,
    /// Runs per (policy, alpha, delta).
    pub seeds: u32,
    /// The scenario seed the runs derive from.
    pub seed: u64,
    /// Wall-clock seconds spent simulating (for merged shards, the sum over shards).
    pub wall_seconds: f64,
    /// One entry per (policy, alpha, delta), in scenario order.
    pub results: Vec<PolicyResult>,
}

/// The results of one policy at one (alpha, delta).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    /// The policy's label.
    pub label: String,
    /// Engine algorithm identifier.
    pub algorithm: String,
    /// Whether the policy was given the baseline's expected rewards.
    pub baseline_reward_known: bool,
    /// When the constraint is checked (every round, or at checkpoints).
    pub constraint: Constraint,
    /// Risk budget.
    pub alpha: f64,
    /// Confidence parameter.
    pub delta: f64,
    /// Number of runs.
    pub runs: u32,
    /// Cumulative regret at the horizon.
    pub final_regret: Spread,
    /// Runs whose margin went negative at some constrained round.
    pub violation_runs: u64,
    /// violation_runs / runs.
    pub violation_rate: f64,
    /// Clopper-Pearson 95% upper bound on the violation probability.
    pub violation_rate_upper95: f64,
    /// Median over violating runs of the first violating round (null when no run violated).
    pub first_violation_median: Option<f64>,
    /// Smallest margin over a run: its mean and minimum over runs.
    pub min_margin: MarginStats,
    /// Mean share of rounds that played the baseline's action.
    pub baseline_fraction: f64,
    /// Mean share of rounds where the safety rule overrode the learner.
    pub fallback_fraction: f64,
    /// Mean of sum_t mu_t(a_t).
    pub final_reward: f64,
    /// Mean of sum_t mu_t(b_t).
    pub baseline_reward: f64,
    /// Violations before and after the environment's change and the drift guard's record: for every policy
    /// on a non-stationary environment, and for guarded policies on any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStats>,
}

/// A policy's record around the environment's change, across runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftStats {
    /// The round at which theta* starts to change (null on stationary environments).
    pub change_at: Option<u64>,
    /// Runs whose margin went negative at a constrained round before the change (every violating run, on a
    /// stationary environment).
    pub violations_before_change: u64,
    /// violations_before_change / runs.
    pub violation_rate_before_change: f64,
    /// Runs whose margin went negative at a constrained round at or after the change, whether or not they
    /// had violated before it.
    pub violations_after_change: u64,
    /// violations_after_change / runs.
    pub violation_rate_after_change: f64,
    /// The drift guard's alarms (null for a policy without a guard).
    pub guard: Option<GuardStats>,
}

/// How a policy's drift guard did across runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GuardStats {
    /// Runs whose guard raised an alarm.
    pub alarm_runs: u64,
    /// Runs whose alarm came before the change (every alarm, on a stationary environment).
    pub false_alarm_runs: u64,
    /// false_alarm_runs / runs.
    pub false_alarm_rate: f64,
    /// Runs whose alarm came at or after the change.
    pub detected_runs: u64,
    /// Rounds from the change to the alarm, over runs that detected it: median and 90th percentile.
    pub detection_delay_median: Option<f64>,
    /// See `detection_delay_median`.
    pub detection_delay_p90: Option<f64>,
}

/// Mean, standard deviation and 5th/95th percentiles over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean over runs.
    pub mean: f64,
    /// Sample standard deviation over runs.
    pub std: f64,
    /// 5th percentile (linear interpolation).
    pub p05: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// Mean and minimum over runs of each run's smallest margin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MarginStats {
    /// Mean over runs.
    pub mean: f64,
    /// Minimum over runs.
    pub min: f64,
}

/// One row of curves.csv.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveRow {
    /// Policy label.
    pub label: String,
    /// Risk budget.
    pub alpha: f64,
    /// Confidence parameter.
    pub delta: f64,
    /// Round.
    pub t: u64,
    /// `regret`, `margin` or `baseline_share`.
    pub metric: &'static str,
    /// Mean over runs.
    pub mean: f64,
    /// 5th percentile over runs.
    pub p05: f64,
    /// 95th percentile over runs.
    pub p95: f64,
}

/// The curve metrics, in output order.
pub const CURVE_METRICS: [&str; 3] = ["regret", "margin", "baseline_share"];

/// Rounds 1 = t_0 < t_1 < ... = horizon, at most `points` of them, log- or evenly spaced.
pub fn curve_rounds(horizon: u64, points: usize, spacing: CurveSpacing) -> Vec<u64> {
    let mut rounds: Vec<u64> = (0..points)
        .map(|k| {
            let share = k as f64 / (points - 1).max(1) as f64;
            let t = match spacing {
                CurveSpacing::Log => (horizon as f64).powf(share),
                CurveSpacing::Linear => horizon as f64 * share,
            };
            (t.round() as u64).clamp(1, horizon)
        })
        .collect();
    rounds.push(horizon);
    rounds.dedup();
    rounds
}

/// Sorts records into the canonical order and checks that each (policy, alpha, delta) has exactly runs
/// 0..runs with curves of the right length.
pub(crate) fn canonicalise(scenario: &Scenario, runs: u32, records: &mut [RunRecord]) -> Result<(), SimError> {
    records.sort_by_key(|r| (r.policy, r.alpha, r.delta, r.run));
    let points = scenario.curve_rounds().len();
    let mut expected = Vec::new();
    for p in 0..scenario.policies.len() {
        for a in 0..scenario.alphas.len() {
            for d in 0..scenario.deltas.len() {
                expected.extend((0..runs).map(|r| (p, a, d, r)));
            }
        }
    }
    if records.len() != expected.len() {
        return Err(SimError::Merge(format!(
            "expected {} run records ({} policies x {} alphas x {} deltas x {runs} seeds), got {}",
            expected.len(),
            scenario.policies.len(),
            scenario.alphas.len(),
            scenario.deltas.len(),
            records.len()
        )));
    }
    for (record, want) in records.iter().zip(expected) {
        let got = (record.policy, record.alpha, record.delta, record.run);
        if got != want {
            return Err(SimError::Merge(format!(
                "run record (policy {}, alpha {}, delta {}, run {}) is missing or repeated",
                want.0, want.1, want.2, want.3
            )));
        }
        if [record.regret.len(), record.margin.len(), record.baseline_share.len()] != [points; 3] {
            return Err(SimError::Merge(format!(
                "run record (policy {}, alpha {}, delta {}, run {}) has curves of the wrong length (expected {points})",
                got.0, got.1, got.2, got.3
            )));
        }
    }
    Ok(())
}

fn drift_stats(change_at: Option<u64>, guarded: bool, runs: u32, group: &[RunRecord]) -> DriftStats {
    let before = |t: u64| change_at.is_none_or(|c| t < c);
    let violations_before_change = group.iter().filter(|r| r.first_violation.is_some_and(before)).count() as u64;
    let violations_after_change = group.iter().filter(|r| r.first_violation_after_change.is_some()).count() as u64;
    let guard = guarded.then(|| {
        let alarms: Vec<u64> = group.iter().filter_map(|r| r.drift_alarm).collect();
        let false_alarm_runs = alarms.iter().filter(|&&t| before(t)).count() as u64;
        let delays: Vec<f64> = match change_at {
            Some(c) => alarms.iter().filter(|&&t| t >= c).map(|&t| (t - c) as f64).collect(),
            None => Vec::new(),
        };
        let delays = sorted(&delays);
        GuardStats {
            alarm_runs: alarms.len() as u64,
            false_alarm_runs,
            false_alarm_rate: false_alarm_runs as f64 / f64::from(runs),
            detected_runs: delays.len() as u64,
            detection_delay_median: (!delays.is_empty()).then(|| quantile_sorted(&delays, 0.5)),
            detection_delay_p90: (!delays.is_empty()).then(|| quantile_sorted(&delays, 0.9)),
        }
    });
    DriftStats {
        change_at,
        violations_before_change,
        violation_rate_before_change: violations_before_change as f64 / f64::from(runs),
        violations_after_change,
        violation_rate_after_change: violations_after_change as f64 / f64::from(runs),
        guard,
    }
}

fn spread(values: &[f64]) -> Spread {
    let s = sorted(values);
    Spread { mean: mean(values), std: std_dev(values), p05: quantile_sorted(&s, 0.05), p95: quantile_sorted(&s, 0.95) }
}

/// Builds the summary and the curve rows from canonicalised records.
pub(crate) fn summarise(
    scenario: &Scenario,
    runs: u32,
    wall_seconds: f64,
    records: &[RunRecord],
) -> (Summary, Vec<CurveRow>) {
    let grid = scenario.curve_rounds();
    let horizon = scenario.horizon as f64;
    let change_at = scenario.change_round();
    let mut results = Vec::new();
    let mut curves = Vec::new();
    for group in records.chunks(runs as usize) {
        let first = &group[0];
        let policy = &scenario.policies[first.policy];
        let (alpha, delta) = (scenario.alphas[first.alpha], scenario.deltas[first.delta]);
        let collect = |f: &dyn Fn(&RunRecord) -> f64| group.iter().map(f).collect::<Vec<f64>>();
        let violations: Vec<f64> = group.iter().filter_map(|r| r.first_violation.map(|t| t as f64)).collect();
        let violation_runs = violations.len() as u64;
        let min_margins = collect(&|r| r.min_margin);
        results.push(PolicyResult {
            label: policy.label.clone(),
            algorithm: policy.config.algorithm_name().to_string(),
            baseline_reward_known: policy.config.baseline_reward_known(),
            constraint: policy.config.constraint(),
            alpha,
            delta,
            runs,
            final_regret: spread(&collect(&|r| r.final_regret)),
            violation_runs,
            violation_rate: violation_runs as f64 / runs as f64,
            violation_rate_upper95: clopper_pearson_upper(violation_runs, u64::from(runs), VIOLATION_CONFIDENCE),
            first_violation_median: (!violations.is_empty()).then(|| quantile_sorted(&sorted(&violations), 0.5)),
            min_margin: MarginStats {
                mean: mean(&min_margins),
                min: min_margins.iter().copied().fold(f64::INFINITY, f64::min),
            },
            baseline_fraction: mean(&collect(&|r| r.baseline_plays as f64 / horizon)),
            fallback_fraction: mean(&collect(&|r| r.fallback_plays as f64 / horizon)),
            final_reward: mean(&collect(&|r| r.final_reward)),
            baseline_reward: mean(&collect(&|r| r.baseline_reward)),
            drift: (change_at.is_some() || policy.config.drift_guarded())
                .then(|| drift_stats(change_at, policy.config.drift_guarded(), runs, group)),
        });
        for metric in CURVE_METRICS {
            for (i, &t) in grid.iter().enumerate() {
                let values = collect(&|r| match metric {
                    "regret" => r.regret[i],
                    "margin" => r.margin[i],
                    _ => r.baseline_share[i],
                });
                let s = sorted(&values);
                curves.push(CurveRow {
                    label: policy.label.clone(),
                    alpha,
                    delta,
                    t,
                    metric,
                    mean: mean(&values),
                    p05: quantile_sorted(&s, 0.05),
                    p95: quantile_sorted(&s, 0.95),
                });
            }
        }
    }
    let summary = Summary {
        scenario: scenario.name.clone(),
        horizon: scenario.horizon,
        seeds: runs,
        seed: scenario.seed,
        wall_seconds,
        results,
    };
    (summary, curves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_rounds_are_spaced_as_asked_and_end_at_the_horizon() {
        let r = curve_rounds(10_000, 5, CurveSpacing::Log);
        assert_eq!(r, vec![1, 10, 100, 1000, 10_000]);
        let r = curve_rounds(7, 40, CurveSpacing::Log);
        assert_eq!(r, (1..=7).collect::<Vec<_>>());
        assert_eq!(curve_rounds(1, 10, CurveSpacing::Log), vec![1]);
        assert_eq!(curve_rounds(100, 5, CurveSpacing::Linear), vec![1, 25, 50, 75, 100]);
    }
}
