//! K-armed environment with fixed arm means (Wu et al. 2016, section 6 of ALGORITHMS.md).

use super::{Actions, RoundView};
use crate::scenario::KArmedSpec;

/// One run of a K-armed environment: nothing is random but the noise, which `EnvRun` draws.
pub(crate) struct KArmedRun {
    means: Vec<f64>,
    baseline: usize,
    best: f64,
}

impl KArmedRun {
    pub(crate) fn new(spec: &KArmedSpec) -> KArmedRun {
        let best = spec.means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        KArmedRun { means: spec.means.clone(), baseline: spec.baseline, best }
    }

    pub(crate) fn round(&mut self) -> RoundView<'_> {
        RoundView { actions: Actions::Arms, mu: &self.means, baseline: self.baseline, best: self.best }
    }
}
