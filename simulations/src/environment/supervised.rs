//! Supervised-to-bandit environment (Dudik et al. 2011; Bietti, Agarwal, Langford 2021): each round shows one
//! labelled example, each class is an action, and the reward is 1 for the true class and 0 otherwise. The
//! expected reward of every action is therefore known exactly: 1 for the label, 0 for the rest.

use std::path::Path;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Actions, RoundView, clamp_norm};
use crate::SimError;
use crate::scenario::SupervisedSpec;

/// A labelled dataset turned into bandit contexts, with the baseline classifier's prediction for each row.
#[derive(Debug)]
pub(crate) struct Dataset {
    dim: usize,
    classes: usize,
    contexts: Vec<f64>,
    labels: Vec<usize>,
    baseline: Vec<usize>,
}

impl Dataset {
    /// Reads the CSV, scales and projects the features, and fits the nearest-centroid baseline.
    pub(crate) fn load(spec: &SupervisedSpec, base_dir: &Path) -> Result<Dataset, SimError> {
        let path = base_dir.join(&spec.path);
        let text = std::fs::read_to_string(&path).map_err(SimError::io(&path))?;
        let data_error = |line: usize, message: String| SimError::Data { path: path.clone(), line, message };
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| data_error(0, "the file is empty".into()))?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let label_at = columns
            .iter()
            .position(|c| *c == spec.label_column)
            .ok_or_else(|| data_error(1, format!("no column named `{}` in the header", spec.label_column)))?;
        if columns.len() - 1 != spec.features {
            return Err(data_error(
                1,
                format!(
                    "the scenario declares {} feature columns, the header has {}",
                    spec.features,
                    columns.len() - 1
                ),
            ));
        }
        let mut raw = Vec::new();
        let mut labels = Vec::new();
        for (index, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != columns.len() {
                return Err(data_error(index + 1, format!("expected {} fields, got {}", columns.len(), fields.len())));
            }
            for (c, field) in fields.iter().enumerate() {
                if c == label_at {
                    let label: usize = field.parse().ok().filter(|&l| l < spec.classes).ok_or_else(|| {
                        data_error(index + 1, format!("label `{field}` is not a class in 0..{}", spec.classes))
                    })?;
                    labels.push(label);
                } else {
                    let value: f64 = field.parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| {
                        data_error(index + 1, format!("column `{}`: `{field}` is not a finite number", columns[c]))
                    })?;
                    raw.push(value / spec.feature_scale);
                }
            }
        }
        if labels.is_empty() {
            return Err(data_error(0, "the file has a header but no rows".into()));
        }
        let baseline = nearest_centroid(&raw, &labels, spec, &data_error)?;
        let (contexts, dim) = contexts(&raw, spec);
        Ok(Dataset { dim, classes: spec.classes, contexts, labels, baseline })
    }

    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Share of rows the baseline classifies correctly: its expected reward per round.
    #[cfg(test)]
    pub(crate) fn baseline_accuracy(&self) -> f64 {
        let correct = self.labels.iter().zip(&self.baseline).filter(|(l, b)| l == b).count();
        correct as f64 / self.rows() as f64
    }
}

/// The baseline: class centroids from the first `baseline_rows_per_class` rows of each class, in file order,
/// and each row assigned to the nearest centroid (ties to the lowest class). Few rows make it weak on purpose.
fn nearest_centroid(
    raw: &[f64],
    labels: &[usize],
    spec: &SupervisedSpec,
    data_error: &dyn Fn(usize, String) -> SimError,
) -> Result<Vec<usize>, SimError> {
    let f = spec.features;
    let mut centroids = vec![0.0; spec.classes * f];
    let mut counts = vec![0usize; spec.classes];
    for (row, &label) in labels.iter().enumerate() {
        if counts[label] < spec.baseline_rows_per_class {
            counts[label] += 1;
            let x = &raw[row * f..][..f];
            centroids[label * f..][..f].iter_mut().zip(x).for_each(|(c, v)| *c += v);
        }
    }
    if let Some(class) = counts.iter().position(|&c| c < spec.baseline_rows_per_class) {
        return Err(data_error(
            0,
            format!(
                "class {class} has {} rows, fewer than baseline_rows_per_class = {}",
                counts[class], spec.baseline_rows_per_class
            ),
        ));
    }
    for (class, centroid) in centroids.chunks_mut(f).enumerate() {
        centroid.iter_mut().for_each(|c| *c /= counts[class] as f64);
    }
    let predict = |x: &[f64]| {
        let distance = |c: &[f64]| c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        (0..spec.classes)
            .min_by(|&a, &b| distance(&centroids[a * f..][..f]).total_cmp(&distance(&centroids[b * f..][..f])))
            .expect("at least two classes")
    };
    Ok(raw.chunks(f).map(predict).collect())
}

/// Contexts: features (optionally through a fixed Gaussian random projection, Johnson-Lindenstrauss style)
/// plus a constant 1, scaled to unit norm so the engine's default feature bound L = 1 holds.
fn contexts(raw: &[f64], spec: &SupervisedSpec) -> (Vec<f64>, usize) {
    let f = spec.features;
    let projection = spec.projection_dim.map(|p| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.projection_seed);
        let scale = 1.0 / (p as f64).sqrt();
        let matrix: Vec<f64> = (0..p * f).map(|_| rng.sample::<f64, _>(StandardNormal) * scale).collect();
        (p, matrix)
    });
    let dim = spec.projection_dim.unwrap_or(f) + 1;
    let mut out = Vec::with_capacity(raw.len() / f * dim);
    for x in raw.chunks(f) {
        let start = out.len();
        match &projection {
            Some((p, matrix)) => {
                out.extend((0..*p).map(|i| matrix[i * f..][..f].iter().zip(x).map(|(m, v)| m * v).sum::<f64>()));
            }
            None => out.extend_from_slice(x),
        }
        out.push(1.0);
        clamp_norm(&mut out[start..], 1.0);
    }
    (out, dim)
}

/// One run: rows drawn uniformly with replacement from the run's context stream.
pub(crate) struct SupervisedRun {
    data: Arc<Dataset>,
    rng: Xoshiro256PlusPlus,
    mu: Vec<f64>,
    last_label: usize,
}

impl SupervisedRun {
    pub(crate) fn new(data: Arc<Dataset>, rng: Xoshiro256PlusPlus) -> SupervisedRun {
        let mu = vec![0.0; data.classes];
        SupervisedRun { data, rng, mu, last_label: 0 }
    }

    pub(crate) fn round(&mut self) -> RoundView<'_> {
        let row = self.rng.random_range(0..self.data.rows());
        let label = self.data.labels[row];
        self.mu[self.last_label] = 0.0;
        self.mu[label] = 1.0;
        self.last_label = label;
        RoundView {
            actions: Actions::Context(&self.data.contexts[row * self.data.dim..][..self.data.dim]),
            mu: &self.mu,
            baseline: self.data.baseline[row],
            best: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(projection_dim: Option<usize>) -> Dataset {
        let spec = SupervisedSpec {
            path: "data/digits.csv".into(),
            label_column: "label".into(),
            features: 64,
            classes: 10,
            feature_scale: 16.0,
            projection_dim,
            projection_seed: 7,
            baseline_rows_per_class: 2,
        };
        Dataset::load(&spec, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn digits_load_with_unit_contexts_and_a_weak_baseline() {
        for projection in [None, Some(16)] {
            let data = digits(projection);
            assert_eq!(data.rows(), 1797);
            assert_eq!(data.dim, projection.unwrap_or(64) + 1);
            for c in data.contexts.chunks(data.dim) {
                let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!(norm <= 1.0 && norm > 0.99, "context norm {norm}");
            }
            let accuracy = data.baseline_accuracy();
            assert!((0.5..0.95).contains(&accuracy), "baseline accuracy {accuracy}");
        }
    }

    #[test]
    fn rewards_are_one_for_the_true_class_only() {
        let data = Arc::new(digits(None));
        let mut run = SupervisedRun::new(data.clone(), Xoshiro256PlusPlus::seed_from_u64(1));
        for _ in 0..50 {
            let view = run.round();
            assert_eq!(view.mu.iter().sum::<f64>(), 1.0);
            let Actions::Context(context) = view.actions else { panic!("disjoint layout") };
            let row = data.contexts.chunks(data.dim).position(|c| c == context).unwrap();
            assert_eq!(view.mu[data.labels[row]], 1.0);
            assert_eq!(view.baseline, data.baseline[row]);
        }
    }
}
