//! Summary statistics, each computed in one fixed order so that the same inputs give the same bits.

/// Arithmetic mean (sum in input order).
pub(crate) fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1 in the denominator); 0 for fewer than two values.
pub(crate) fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    (ss / (values.len() - 1) as f64).sqrt()
}

/// Quantile `q` of values already sorted ascending, by linear interpolation between order statistics
/// (Hyndman & Fan 1996 type 7, numpy's default).
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

/// Sorts a copy ascending (total order, so NaN cannot make the order depend on the input order).
pub(crate) fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// ln(n!) for n = 0..=max, by summing logarithms.
fn ln_factorials(max: u64) -> Vec<f64> {
    let mut out = Vec::with_capacity(max as usize + 1);
    let mut acc = 0.0;
    out.push(0.0);
    for i in 1..=max {
        acc += (i as f64).ln();
        out.push(acc);
    }
    out
}

/// P(Binomial(n, p) <= k), summed in log space so large n cannot underflow.
fn binomial_cdf(k: u64, n: u64, p: f64, ln_fact: &[f64]) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if k >= n { 1.0 } else { 0.0 };
    }
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    let terms: Vec<f64> = (0..=k.min(n))
        .map(|i| {
            let i_us = i as usize;
            ln_fact[n as usize] - ln_fact[i_us] - ln_fact[(n - i) as usize] + i as f64 * lp + (n - i) as f64 * lq
        })
        .collect();
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()).exp().min(1.0)
}

/// Upper end of the two-sided Clopper-Pearson (1934) interval at confidence `level` for `k` successes in `n`
/// trials: the p with P(Binomial(n, p) <= k) = (1 - level) / 2, i.e. the (1 + level) / 2 quantile of
/// Beta(k + 1, n - k). Found by bisection, which is deterministic and exact to the last bits that matter.
pub(crate) fn clopper_pearson_upper(k: u64, n: u64, level: f64) -> f64 {
    if n == 0 || k >= n {
        return 1.0;
    }
    let tail = (1.0 - level) / 2.0;
    let ln_fact = ln_factorials(n);
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if binomial_cdf(k, n, mid, &ln_fact) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = sorted(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert!((quantile_sorted(&v, 0.05) - 1.2).abs() < 1e-12);
        assert!((quantile_sorted(&v, 0.95) - 4.8).abs() < 1e-12);
    }

    #[test]
    fn std_dev_is_the_sample_one() {
        assert!((std_dev(&[1.0, 2.0, 3.0, 4.0]) - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(std_dev(&[7.0]), 0.0);
    }

    #[test]
    fn clopper_pearson_matches_closed_forms_and_tables() {
        // k = 0: the upper bound is 1 - (0.025)^(1/n).
        for n in [1u64, 10, 100, 1000] {
            let exact = 1.0 - 0.025f64.powf(1.0 / n as f64);
            assert!((clopper_pearson_upper(0, n, 0.95) - exact).abs() < 1e-9, "n = {n}");
        }
        // k = n - 1: the upper bound is (0.975)^(1/n).
        assert!((clopper_pearson_upper(9, 10, 0.95) - 0.975f64.powf(0.1)).abs() < 1e-9);
        // Tabulated: 5 of 10 gives [0.187, 0.813]; 1 of 20 gives upper 0.2487 (R's binom.test).
        assert!((clopper_pearson_upper(5, 10, 0.95) - 0.812_914).abs() < 1e-5);
        assert!((clopper_pearson_upper(1, 20, 0.95) - 0.248_726).abs() < 1e-5);
        assert_eq!(clopper_pearson_upper(3, 3, 0.95), 1.0);
    }
}
