//! The threaded matrix product: the rows of one or several matrices shared out over a
//! [`Pool`], each row multiplied by its type's kernel (AVX-512, AVX2 or scalar, as the CPU
//! allows).

#[cfg(target_arch = "x86_64")]
use super::cpu::{has_avx2, has_avx512, has_avx_vnni};
use super::kquants;
use super::legacy::{dot, quantize_rows, Q8Blocks};
use super::qtype::{dense_at, KType, QType, BLOCK, QK_K};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use crate::pool::Pool;

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (their own rows) of one buffer that outlives the job.
unsafe impl Sync for OutPtr {}

/// One matrix of a [`matmul_parts`] call: `n` rows of `row_bytes(k)` bytes of type `t`.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub t: QType,
    pub w: &'a [u8],
    pub n: usize,
}

/// `out[j * n + r] = W[r] . x[j]` for the `m` rows of `x` (each `k` long) and the `n` rows of
/// `w` (each `row_bytes(k)` bytes of type `t`).
pub fn matmul(pool: &Pool, t: QType, w: &[u8], n: usize, k: usize, x: &[f32], out: &mut [f32]) {
    matmul_parts(pool, &[Part { t, w, n }], k, x, &mut [out]);
}

/// Several matrices against the same input in one pass over the pool (e.g. Q, K and V): the
/// input is quantized once and every matrix's rows are shared out together, so the threads
/// meet once instead of once per matrix. `outs[i]` gets `parts[i]`'s result, laid out as in
/// [`matmul`].
pub fn matmul_parts(pool: &Pool, parts: &[Part<'_>], k: usize, x: &[f32], outs: &mut [&mut [f32]]) {
    let m = x.len() / k;
    assert!(x.len() == m * k && outs.len() == parts.len());
    for (p, o) in parts.iter().zip(outs.iter()) {
        assert!(o.len() == m * p.n && p.w.len() >= p.n * p.t.row_bytes(k));
    }
    let total: usize = parts.iter().map(|p| p.n).sum();
    // Enough tasks to balance, few enough that each is worth a handoff.
    let rows_per_task = (total / (pool.threads() * 8)).clamp(8, 256);
    // (part, first row) of every task; a task never spans two parts.
    let mut tasks = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        tasks.extend((0..p.n).step_by(rows_per_task).map(|r| (i, r)));
    }
    // The activations quantized once for each kind of block the parts use.
    let q = parts.iter().any(|p| p.t.is_q32()).then(|| {
        assert!(k.is_multiple_of(BLOCK));
        quantize_rows(x, k)
    });
    let qk = parts.iter().any(|p| p.t.k_type().is_some()).then(|| {
        assert!(k.is_multiple_of(QK_K));
        kquants::quantize_rows(x)
    });
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let (ptrs, q, qk, tasks) = (&ptrs, q.as_ref(), qk.as_ref(), &tasks);
    pool.run(tasks.len(), &|task| {
        let (i, r0) = tasks[task];
        let p = parts[i];
        let r1 = (r0 + rows_per_task).min(p.n);
        match (p.t.k_type(), q, qk) {
            (Some(kt), _, Some(qk)) => rows_k(p, kt, k, m, qk, r0, r1, &ptrs[i]),
            (None, Some(q), _) if p.t.is_q32() => rows_quantized(p, k, m, q, r0, r1, &ptrs[i]),
            _ => rows_dense(p, k, m, x, r0, r1, &ptrs[i]),
        }
    });
}

/// Rows `r0..r1` of a K-quant matrix against every (Q8_K) input row.
#[allow(clippy::too_many_arguments)]
fn rows_k(
    p: Part<'_>,
    kt: KType,
    k: usize,
    m: usize,
    q: &kquants::Q8K,
    r0: usize,
    r1: usize,
    o: &OutPtr,
) {
    // Input rows in groups of STEP share each block's unpacked weights (eight measured no
    // faster than four on a 7B Q4_K_M prompt).
    const STEP: usize = 4;
    let rb = p.t.row_bytes(k);
    // SAFETY (the writes below): j < m and r < n; each (j, r) is written by one task.
    let put = |j: usize, r: usize, v: f32| unsafe { *o.0.add(j * p.n + r) = v };
    for r in r0..r1 {
        let row = &p.w[r * rb..(r + 1) * rb];
        let mut j = 0;
        while j + STEP <= m {
            let xs: [_; STEP] = std::array::from_fn(|i| q.row(j + i, k));
            for (i, v) in kquants::dot_n(kt, row, xs).into_iter().enumerate() {
                put(j + i, r, v);
            }
            j += STEP;
        }
        for j in j..m {
            put(j, r, kquants::dot_n(kt, row, [q.row(j, k)])[0]);
        }
    }
}

/// Rows `r0..r1` of a dense matrix against every input row.
fn rows_dense(p: Part<'_>, k: usize, m: usize, x: &[f32], r0: usize, r1: usize, o: &OutPtr) {
    let rb = p.t.row_bytes(k);
    for r in r0..r1 {
        let row = &p.w[r * rb..(r + 1) * rb];
        for j in 0..m {
            let v = dot_dense(p.t, row, &x[j * k..(j + 1) * k]);
            // SAFETY: j < m and r < n; each (j, r) is written by one task.
            unsafe { *o.0.add(j * p.n + r) = v };
        }
    }
}

fn dot_dense(t: QType, row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA/F16C detected; `row` holds x.len() weights of type t.
        return unsafe { avx2::dot_dense(t, row.as_ptr(), x) };
    }
    x.iter()
        .enumerate()
        .map(|(i, v)| dense_at(t, row, i) * v)
        .sum()
}

/// Rows `r0..r1` of a quantized matrix against every (quantized) input row.
fn rows_quantized(p: Part<'_>, k: usize, m: usize, q: &Q8Blocks, r0: usize, r1: usize, o: &OutPtr) {
    let (t, w, n, rb) = (p.t, p.w, p.n, p.t.row_bytes(k));
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let mut r = r0;
        while r < r1 {
            // An odd last row pairs with itself.
            let r2 = if r + 1 < r1 { r + 1 } else { r };
            for j in 0..m {
                let (xd, xs, xq, xm) = q.row(j, k);
                let info = q.info_row(t, j, k);
                // SAFETY: AVX-512 F/BW/VNNI with AVX2/FMA/F16C detected; rows r, r2 < n lie
                // inside `w` (checked by matmul_parts); each (j, r) has one writer.
                unsafe {
                    let base = w.as_ptr();
                    let (va, vb) = avx512::dot2(
                        t,
                        base.add(r * rb),
                        base.add(r2 * rb),
                        (xd, xs, xq, xm),
                        info,
                    );
                    *o.0.add(j * n + r) = va;
                    *o.0.add(j * n + r2) = vb;
                }
            }
            r += 2;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let vnni = has_avx_vnni();
        let mut r = r0;
        while r + 1 < r1 {
            for j in 0..m {
                let (xd, xs, xq, xm) = q.row(j, k);
                // SAFETY: AVX2/FMA detected; rows r and r+1 < n lie inside `w` (checked by
                // matmul_parts), the activation row has k/32 blocks; each (j, r) has one writer.
                unsafe {
                    let base = w.as_ptr();
                    let (ra, rb2) = (base.add(r * rb), base.add((r + 1) * rb));
                    let (va, vb) = if vnni {
                        avx2::dot2_vnni(t, ra, rb2, xd, xs, xq, xm)
                    } else {
                        avx2::dot2(t, ra, rb2, xd, xs, xq, xm)
                    };
                    *o.0.add(j * n + r) = va;
                    *o.0.add(j * n + r + 1) = vb;
                }
            }
            r += 2;
        }
        if r < r1 {
            for j in 0..m {
                let v = dot(t, &w[r * rb..(r + 1) * rb], q.row(j, k));
                // SAFETY: as above.
                unsafe { *o.0.add(j * n + r) = v };
            }
        }
        return;
    }
    for r in r0..r1 {
        let row = &w[r * rb..(r + 1) * rb];
        for j in 0..m {
            let v = dot(t, row, q.row(j, k));
            // SAFETY: j < m and r < n, so the index is inside the output; each (j, r) is
            // written by exactly one task.
            unsafe { *o.0.add(j * n + r) = v };
        }
    }
}
