//! Tests across the kernels: each product's paths (threads, AVX2, AVX-VNNI, scalar) against
//! one another and against f32 math on the dequantized weights.

use half::f16;

use super::legacy::{dot_scalar, quantize_rows};
use super::testutil::{activations, bytes};
use super::*;
#[cfg(target_arch = "x86_64")]
use super::{avx2, cpu::has_avx_vnni};
use crate::pool::Pool;

/// Rows of random blocks with sane f16 scales (and mins).
fn weights(t: QType, n: usize, k: usize) -> Vec<u8> {
    let mut w = bytes(n * t.row_bytes(k), 7);
    for blk in w.chunks_exact_mut(t.block_bytes()) {
        let d = f16::from_f32(0.01 + f32::from(blk[0] % 50) * 0.001)
            .to_bits()
            .to_le_bytes();
        blk[..2].copy_from_slice(&d);
        if t == QType::Q4_1 {
            let m = f16::from_f32(-0.1 + f32::from(blk[2] % 20) * 0.01)
                .to_bits()
                .to_le_bytes();
            blk[2..4].copy_from_slice(&m);
        }
    }
    w
}

#[test]
fn simd_and_scalar_and_dequantized_products_agree() {
    let (m, n, k) = (3, 37, 96);
    let x = activations(m, k);
    for t in [QType::Q4_0, QType::Q4_1, QType::Q8_0] {
        let w = weights(t, n, k);
        let mut fast = vec![0f32; m * n];
        matmul(&Pool::new(2), t, &w, n, k, &x, &mut fast);
        let mut one = vec![0f32; m * n];
        matmul(&Pool::new(1), t, &w, n, k, &x, &mut one);
        assert_eq!(fast, one, "{t:?}: results depend on the thread count");
        let q = quantize_rows(&x, k);
        #[cfg(target_arch = "x86_64")]
        if has_avx_vnni() {
            // Both x86 paths: the same integer sums, so the same floats.
            let rb = t.row_bytes(k);
            for r in 0..n - 1 {
                let (xd, xs, xq, xm) = q.row(0, k);
                // SAFETY: features detected; rows r, r+1 < n lie in w.
                let (a, b) = unsafe {
                    let p = w.as_ptr();
                    (
                        avx2::dot2(t, p.add(r * rb), p.add((r + 1) * rb), xd, xs, xq, xm),
                        avx2::dot2_vnni(t, p.add(r * rb), p.add((r + 1) * rb), xd, xs, xq, xm),
                    )
                };
                assert_eq!(a, b, "{t:?} row {r}: AVX2 and AVX-VNNI differ");
            }
        }
        let mut row = vec![0f32; k];
        for r in 0..n {
            dequantize_row(t, &w, k, r, &mut row);
            for j in 0..m {
                let scalar = dot_scalar(
                    t,
                    &w[r * t.row_bytes(k)..(r + 1) * t.row_bytes(k)],
                    q.row(j, k),
                );
                let got = fast[j * n + r];
                let tol = 1e-4 * (1.0 + scalar.abs());
                assert!(
                    (got - scalar).abs() <= tol,
                    "{t:?} r{r} j{j}: simd {got} scalar {scalar}"
                );
                // Against exact f32 math: only the 8-bit activations differ.
                let xs_row = &x[j * k..(j + 1) * k];
                let exact: f32 = row.iter().zip(xs_row).map(|(a, b)| a * b).sum();
                let scale: f32 = row.iter().zip(xs_row).map(|(a, b)| (a * b).abs()).sum();
                assert!(
                    (got - exact).abs() <= 0.02 * scale + 1e-4,
                    "{t:?} r{r} j{j}: {got} vs exact {exact} (scale {scale})"
                );
            }
        }
    }
}

#[test]
fn dense_products_are_f32_math_on_the_stored_values() {
    let (m, n, k) = (2, 19, 70); // k not a multiple of 8 or 32: the tails run too
    let x = activations(m, k);
    let vals: Vec<f32> = bytes(n * k, 5)
        .iter()
        .map(|&b| (f32::from(b) - 128.0) / 64.0)
        .collect();
    for t in [QType::F32, QType::F16, QType::BF16] {
        let w: Vec<u8> = vals
            .iter()
            .flat_map(|&v| match t {
                QType::F32 => v.to_le_bytes().to_vec(),
                QType::F16 => f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                _ => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            })
            .collect();
        let mut out = vec![0f32; m * n];
        matmul(&Pool::new(2), t, &w, n, k, &x, &mut out);
        let mut row = vec![0f32; k];
        for r in 0..n {
            dequantize_row(t, &w, k, r, &mut row);
            for j in 0..m {
                let xs = &x[j * k..(j + 1) * k];
                let exact: f64 = row
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let got = f64::from(out[j * n + r]);
                assert!(
                    (got - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                    "{t:?} r{r} j{j}: {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn the_pool_runs_every_index_once_and_survives_a_panicking_task() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = Pool::new(3);
    for n in [1, 2, 7, 100] {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        pool.run(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(8, &|i| assert!(i != 5, "task 5 fails"))
    }));
    assert!(r.is_err(), "a task's panic reaches the caller");
    let count = AtomicUsize::new(0);
    pool.run(10, &|_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(count.load(Ordering::Relaxed), 10, "the pool still works");
}
