//! Attention's two vector loops for one query (its scores against the cached keys, and the
//! weighted sum of the cached values): AVX-512 where the CPU has it, plain loops elsewhere.

#[cfg(target_arch = "x86_64")]
use super::cpu::has_avx512;

/// Attention's two vector loops for one query, on AVX-512 where the CPU has it.
#[cfg(target_arch = "x86_64")]
mod attn512 {
    use std::arch::x86_64::*;

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// See [`super::scores`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(q: &[f32], kt: &[f32], stride: usize, start: usize, out: &mut [f32]) {
        let n = out.len();
        let mut c = 0;
        while c < n {
            let (m0, m1) = (mask(n - c), mask((n - c).saturating_sub(16)));
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for (d, &qd) in q.iter().enumerate() {
                let p = kt.as_ptr().add(d * stride + start + c);
                let qv = _mm512_set1_ps(qd);
                a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m0, p), a0);
                a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m1, p.add(16)), a1);
            }
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), m0, a0);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c + 16), m1, a1);
            c += 32;
        }
    }

    /// See [`super::weighted_sum`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum(
        p: &[f32],
        v: &[f32],
        stride: usize,
        offset: usize,
        out: &mut [f32],
    ) {
        let hd = out.len();
        let mut c = 0;
        while c < hd {
            let m = mask(hd - c);
            let mut acc = _mm512_setzero_ps();
            for (j, &w) in p.iter().enumerate() {
                let src = v.as_ptr().add(j * stride + offset + c);
                acc = _mm512_fmadd_ps(_mm512_set1_ps(w), _mm512_maskz_loadu_ps(m, src), acc);
            }
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), m, acc);
            c += 16;
        }
    }
}

/// One query's attention scores at `out.len()` consecutive positions from keys stored
/// transposed: `out[i] = sum_d q[d] * kt[d * stride + start + i]`.
pub fn scores(q: &[f32], kt: &[f32], stride: usize, start: usize, out: &mut [f32]) {
    let n = out.len();
    assert!(q.is_empty() || (q.len() - 1) * stride + start + n <= kt.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F detected; every (d, i) read lies inside `kt` (asserted above), and
        // masked loads and stores touch only the lanes below n.
        return unsafe { attn512::scores(q, kt, stride, start, out) };
    }
    out.fill(0.0);
    for (d, &qd) in q.iter().enumerate() {
        let row = &kt[d * stride + start..][..n];
        for (o, k) in out.iter_mut().zip(row) {
            *o += qd * k;
        }
    }
}

/// `out = sum_j p[j] * v[j * stride + offset..][..out.len()]`: attention's weighted sum of
/// values stored token-major.
pub fn weighted_sum(p: &[f32], v: &[f32], stride: usize, offset: usize, out: &mut [f32]) {
    let hd = out.len();
    assert!(p.is_empty() || (p.len() - 1) * stride + offset + hd <= v.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F detected; every read lies inside `v` (asserted above); masked
        // loads and stores touch only lanes below hd.
        return unsafe { attn512::weighted_sum(p, v, stride, offset, out) };
    }
    out.fill(0.0);
    for (j, &w) in p.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&v[j * stride + offset..][..hd]) {
            *o += w * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::activations;

    #[test]
    fn attention_loops_match_plain_sums() {
        // Sizes off the vector widths, so the masked tails run.
        let (hd, n, stride, start) = (24, 45, 70, 3);
        let x = activations(1, (hd + n) * stride + 64);
        let q = &x[..hd];
        let kt = &x[hd..hd + hd * stride];
        let mut got = vec![0f32; n];
        scores(q, kt, stride, start, &mut got);
        for (i, g) in got.iter().enumerate() {
            let want: f32 = (0..hd).map(|d| q[d] * kt[d * stride + start + i]).sum();
            assert!(
                (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "score {i}: {g} vs {want}"
            );
        }
        let p: Vec<f32> = (0..n).map(|j| 1.0 / (1.0 + j as f32)).collect();
        let v = &x[..n * stride];
        let mut sum = vec![0f32; hd];
        weighted_sum(&p, v, stride, 5, &mut sum);
        for (d, s) in sum.iter().enumerate() {
            let want: f32 = (0..n).map(|j| p[j] * v[j * stride + 5 + d]).sum();
            assert!(
                (s - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "dim {d}: {s} vs {want}"
            );
        }
    }
}
