//! Small dense kernels on slices, written so the compiler vectorises them. nalgebra's generic `gemv`/`ger`
//! on dynamic matrices run element by element; these run at several FMAs per cycle (see BENCHMARKS.md).
//! Matrices are column-major d x d slices, as nalgebra stores them.
//!
//! The O(d^2) kernels are compiled twice, for baseline x86-64 and for AVX, and pick one at run time
//! (`multiversion`). Only vector width changes, never the order of operations, so both give the same bits.
//!
//! No fused multiply-add: without a compile-time FMA target `f64::mul_add` is a libm call, and plain
//! multiply-then-add gives the same bits on every x86-64 machine, which snapshot replay relies on.

use multiversion::multiversion;

/// <a, b>, with four independent partial sums so the loop vectorises; the summation order is fixed, so the
/// result is the same on every run.
#[inline(always)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 4];
    let (a4, a_rest) = a.split_at(a.len() - a.len() % 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

/// y += alpha * x.
#[inline(always)]
pub(crate) fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// out = A x for a column-major d x d matrix A.
#[multiversion(targets("x86_64+avx"))]
pub(crate) fn gemv(a: &[f64], x: &[f64], out: &mut [f64]) {
    let d = x.len();
    out.fill(0.0);
    for (column, &xj) in a.chunks_exact(d).zip(x) {
        axpy(xj, column, out);
    }
}

/// A += alpha * u u^T over the whole column-major matrix (A stays exactly symmetric: both triangles get the
/// same products).
#[multiversion(targets("x86_64+avx"))]
pub(crate) fn rank_one_update(a: &mut [f64], alpha: f64, u: &[f64]) {
    let d = u.len();
    for (column, &uj) in a.chunks_exact_mut(d).zip(u) {
        axpy(alpha * uj, u, column);
    }
}

/// The lower triangle (diagonal included) of A += alpha * u u^T; the upper triangle is left stale. Used for
/// V, which is only ever read through a Cholesky factorisation that reads the lower triangle.
#[multiversion(targets("x86_64+avx"))]
pub(crate) fn rank_one_update_lower(a: &mut [f64], alpha: f64, u: &[f64]) {
    let d = u.len();
    for (j, column) in a.chunks_exact_mut(d).enumerate() {
        axpy(alpha * u[j], &u[j..], &mut column[j..]);
    }
}

/// For each row-major d-vector x_a of `features` (and column u_a of `images`): <x_a, theta> and <x_a, u_a>.
#[multiversion(targets("x86_64+avx"))]
pub(crate) fn means_and_quads(features: &[f64], images: &[f64], theta: &[f64], means: &mut [f64], quads: &mut [f64]) {
    let d = theta.len();
    for (a, (xa, ua)) in features.chunks_exact(d).zip(images.chunks_exact(d)).enumerate() {
        means[a] = dot(xa, theta);
        quads[a] = dot(xa, ua);
    }
}

/// For each row-major d-vector x_a of `features`: <x_a, v> and <x_a, w>.
#[multiversion(targets("x86_64+avx"))]
pub(crate) fn dots_against(features: &[f64], v: &[f64], w: &[f64], out_v: &mut [f64], out_w: &mut [f64]) {
    let d = v.len();
    for (a, xa) in features.chunks_exact(d).enumerate() {
        out_v[a] = dot(xa, v);
        out_w[a] = dot(xa, w);
    }
}

/// Whether every value is finite: a branch-free OR over the exponent bits, which vectorises (NaN and the
/// infinities are exactly the values whose exponent bits are all ones).
#[inline]
pub(crate) fn all_finite(values: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    !values.iter().fold(false, |bad, v| bad | (v.to_bits() & EXPONENT == EXPONENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kernels_match_naive_loops(d in 1usize..12, seed in any::<u64>()) {
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % 2000) as f64 / 1000.0 - 1.0 };
            let a: Vec<f64> = (0..d * d).map(|_| next()).collect();
            let x: Vec<f64> = (0..d).map(|_| next()).collect();
            let naive_dot: f64 = a[..d].iter().zip(&x).map(|(p, q)| p * q).sum();
            prop_assert!((dot(&a[..d], &x) - naive_dot).abs() < 1e-12);
            let mut out = vec![0.0; d];
            gemv(&a, &x, &mut out);
            for i in 0..d {
                let naive: f64 = (0..d).map(|j| a[j * d + i] * x[j]).sum();
                prop_assert!((out[i] - naive).abs() < 1e-12);
            }
            let mut full = a.clone();
            let mut lower = a.clone();
            rank_one_update(&mut full, 0.5, &x);
            rank_one_update_lower(&mut lower, 0.5, &x);
            for j in 0..d {
                for i in 0..d {
                    let expected = a[j * d + i] + 0.5 * x[i] * x[j];
                    prop_assert!((full[j * d + i] - expected).abs() < 1e-12);
                    if i >= j {
                        prop_assert!((lower[j * d + i] - expected).abs() < 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn finiteness_check_catches_nan_and_infinities() {
        assert!(all_finite(&[0.0, -1.5, f64::MAX, f64::MIN_POSITIVE]));
        assert!(!all_finite(&[0.0, f64::NAN]));
        assert!(!all_finite(&[f64::INFINITY, 1.0]));
        assert!(!all_finite(&[1.0, f64::NEG_INFINITY]));
    }
}
