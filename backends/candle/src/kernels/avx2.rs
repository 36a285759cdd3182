//! AVX2 (with FMA and F16C; AVX-VNNI where the CPU has it) dot products for the 32-weight
//! block types and for dense rows, and [`hsum`], which the K-quant kernels share.

use super::legacy::XRow;
use super::qtype::{dense_at, f16_at, QType, BLOCK};
use std::arch::x86_64::*;

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must have AVX2 and FMA; `row` holds `xd.len()` blocks of `t`, `xq` 32 per block.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot(t: QType, row: &[u8], (xd, xs, xq, xm): XRow<'_>) -> f32 {
    let bb = t.block_bytes();
    let nb = xd.len();
    debug_assert!(row.len() >= nb * bb && xq.len() >= nb * BLOCK);
    let mut acc = _mm256_setzero_ps();
    let mut extra = 0f32;
    let rp = row.as_ptr();
    let qp = xq.as_ptr();
    for b in 0..nb {
        let blk = rp.add(b * bb);
        let x = _mm256_loadu_si256(qp.add(b * BLOCK) as *const __m256i);
        let d = f16_at(std::slice::from_raw_parts(blk, 4), 0) * xd[b];
        acc = _mm256_fmadd_ps(block(t, blk, x), _mm256_set1_ps(d), acc);
        match t {
            QType::Q4_0 => extra -= 8.0 * d * xs[b] as f32,
            QType::Q4_1 => {
                let m = f16_at(std::slice::from_raw_parts(blk, 4), 2);
                extra += m * xm[b];
            }
            _ => {}
        }
    }
    hsum(acc) + extra
}

/// A block's two operands for an unsigned-by-signed byte product: the weights as u8 and the
/// activations as i8 (Q8_0: |w| and x with w's sign).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn operands(t: QType, blk: *const u8, x: __m256i) -> (__m256i, __m256i) {
    match t {
        QType::Q8_0 => {
            let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        }
        QType::F32 | QType::F16 | QType::BF16 => unreachable!("dense rows have no blocks"),
        QType::Q4K | QType::Q5K | QType::Q6K => unreachable!("K-quants: see kquants"),
        QType::Q4_0 | QType::Q4_1 => {
            let off = if t == QType::Q4_0 { 2 } else { 4 };
            let n = _mm_loadu_si128(blk.add(off) as *const __m128i);
            let w = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(n, 4), n),
                _mm256_set1_epi8(0x0F),
            );
            (w, x)
        }
    }
}

/// One block's integer dot product, as 8 i32 lanes summed to floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block(t: QType, blk: *const u8, x: __m256i) -> __m256 {
    let (w, x) = operands(t, blk, x);
    let prod = _mm256_maddubs_epi16(w, x);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale(blk: *const u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([*blk, *blk.add(1)])).to_f32()
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn min(blk: *const u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([*blk.add(2), *blk.add(3)])).to_f32()
}

/// Eight weights of a dense row, widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(t: QType, row: *const u8, i: usize) -> __m256 {
    match t {
        QType::F32 => _mm256_loadu_ps(row.add(i * 4) as *const f32),
        QType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(i * 2) as *const __m128i)),
        _ => {
            // bf16 is the top half of an f32.
            let h = _mm_loadu_si128(row.add(i * 2) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
}

/// A dense row (f32, f16 or bf16) against an f32 row, in f32.
///
/// # Safety
/// AVX2, FMA and F16C; `row` holds `x.len()` weights of type `t`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_dense(t: QType, row: *const u8, x: &[f32]) -> f32 {
    let k = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= k {
        for (u, a) in acc.iter_mut().enumerate() {
            let j = i + u * 8;
            *a = _mm256_fmadd_ps(load8(t, row, j), _mm256_loadu_ps(xp.add(j)), *a);
        }
        i += 32;
    }
    while i + 8 <= k {
        acc[0] = _mm256_fmadd_ps(load8(t, row, i), _mm256_loadu_ps(xp.add(i)), acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    let row = std::slice::from_raw_parts(row, t.row_bytes(k));
    while i < k {
        s += dense_at(t, row, i) * x[i];
        i += 1;
    }
    s
}

/// One block's integer dot product with AVX-VNNI (one instruction instead of three).
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn block_vnni(t: QType, blk: *const u8, x: __m256i) -> __m256 {
    let (w, x) = operands(t, blk, x);
    _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x))
}

/// Two weight rows against one activation row, sharing the activation loads: `dot2` with
/// AVX2's multiply-adds, `dot2_vnni` with AVX-VNNI's.
///
/// # Safety
/// The CPU has the features named; `a` and `b` point at rows of `xd.len()` blocks; `xq`
/// has 32 per block.
macro_rules! dot2_with {
    ($name:ident, $block:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(
            t: QType,
            a: *const u8,
            b: *const u8,
            xd: &[f32],
            xs: &[i32],
            xq: &[i8],
            xm: &[f32],
        ) -> (f32, f32) {
            let bb = t.block_bytes();
            let (mut acc_a, mut acc_b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut ex_a, mut ex_b) = (0f32, 0f32);
            let qp = xq.as_ptr();
            for i in 0..xd.len() {
                let x = _mm256_loadu_si256(qp.add(i * BLOCK) as *const __m256i);
                let (ba, bbk) = (a.add(i * bb), b.add(i * bb));
                let dx = *xd.get_unchecked(i);
                let (da, db) = (scale(ba) * dx, scale(bbk) * dx);
                acc_a = _mm256_fmadd_ps($block(t, ba, x), _mm256_set1_ps(da), acc_a);
                acc_b = _mm256_fmadd_ps($block(t, bbk, x), _mm256_set1_ps(db), acc_b);
                let s = *xs.get_unchecked(i) as f32;
                match t {
                    QType::Q4_0 => {
                        ex_a -= 8.0 * da * s;
                        ex_b -= 8.0 * db * s;
                    }
                    QType::Q4_1 => {
                        ex_a += min(ba) * *xm.get_unchecked(i);
                        ex_b += min(bbk) * *xm.get_unchecked(i);
                    }
                    _ => {}
                }
            }
            (hsum(acc_a) + ex_a, hsum(acc_b) + ex_b)
        }
    };
}
dot2_with!(dot2, block, "avx2,fma");
dot2_with!(dot2_vnni, block_vnni, "avx2,fma,avxvnni");
