//! AVX-512 (F, BW, VNNI): two blocks of a row per step. Each step unpacks both blocks' weights
//! into one 512-bit register (as u8; Q8_0 shifted by 128 to make them unsigned), multiplies by
//! the 64 activation bytes with one `vpdpbusd`, and scales the 16 lane sums with a vector built
//! from the two blocks' scales. The per-block offset terms (Q4_1's min, Q4_0's -8, Q8_0's -128,
//! each times the activation block's sum) gather in a small vector and are added once at the
//! end. About half the instructions of the AVX2 path per weight.

use super::qtype::{QType, BLOCK};
use std::arch::x86_64::*;

/// How far ahead (bytes) the AVX-512 kernel asks for weights: about two rows of a typical
/// matrix; measured faster than no prefetch on Q4_1 matrices read from memory (the figures
/// are in bench/results).
const PREFETCH_BYTES: usize = 2048;

/// Two blocks' weights as 64 unsigned bytes in activation order (block `a` then `b`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn weights(t: QType, a: *const u8, b: *const u8) -> __m512i {
    match t {
        QType::Q8_0 => {
            let w = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(a.add(2) as *const __m256i)),
                _mm256_loadu_si256(b.add(2) as *const __m256i),
                1,
            );
            _mm512_xor_si512(w, _mm512_set1_epi8(-128))
        }
        _ => {
            let off = if t == QType::Q4_0 { 2 } else { 4 };
            let n = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(a.add(off) as *const __m128i)),
                _mm_loadu_si128(b.add(off) as *const __m128i),
                1,
            );
            // Low nibbles are a block's weights 0..16, high nibbles 16..32:
            // [a lo | a hi | b lo | b hi] from the quadwords of n and n >> 4.
            let idx = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
            let w = _mm512_permutex2var_epi64(
                _mm512_castsi256_si512(n),
                idx,
                _mm512_castsi256_si512(_mm256_srli_epi16(n, 4)),
            );
            _mm512_and_si512(w, _mm512_set1_epi8(0x0F))
        }
    }
}

/// The two blocks' [scale, offset scale, scale, offset scale] (offset scale: Q4_1's min;
/// the block scale for Q4_0 and Q8_0, whose offsets are constants).
#[inline]
#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn scales(t: QType, a: *const u8, b: *const u8) -> __m128 {
    let pair = |p: *const u8| -> i32 {
        let v = std::ptr::read_unaligned(p as *const u32);
        if t == QType::Q4_1 {
            v as i32
        } else {
            let d = v & 0xFFFF;
            (d | (d << 16)) as i32
        }
    };
    _mm_cvtph_ps(_mm_set_epi32(0, 0, pair(b), pair(a)))
}

/// Two weight rows against one activation row.
///
/// # Safety
/// AVX-512 F/BW/VNNI, AVX2, FMA, F16C; `a` and `b` point at rows of `xd.len()` blocks of
/// `t`; `xq` has 32 per block, `info` two per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot2(
    t: QType,
    a: *const u8,
    b: *const u8,
    (xd, xs, xq, xm): super::legacy::XRow<'_>,
    info: &[f32],
) -> (f32, f32) {
    let nb = xd.len();
    let bb = t.block_bytes();
    let (mut acc_a, mut acc_b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let (mut off_a, mut off_b) = (_mm_setzero_ps(), _mm_setzero_ps());
    // Lanes 0..8 hold block i's sums, 8..16 block i+1's: take scale lanes 0 and 2.
    let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let zero = _mm512_setzero_si512();
    let dist = PREFETCH_BYTES;
    let mut i = 0;
    while i + 2 <= nb {
        // Rows are small (a few hundred bytes) and matrices a few hundred KB: the hardware
        // prefetcher barely ramps up before a task's rows end, so ask for what comes next.
        _mm_prefetch::<_MM_HINT_T0>(a.add(i * bb).wrapping_add(dist) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.add(i * bb).wrapping_add(dist) as *const i8);
        let x = _mm512_loadu_si512(xq.as_ptr().add(i * BLOCK) as *const __m512i);
        let xi = _mm_loadu_ps(info.as_ptr().add(2 * i));
        let (pa, pb) = (a.add(i * bb), b.add(i * bb));
        let sa = _mm_mul_ps(scales(t, pa, pa.add(bb)), xi);
        let sb = _mm_mul_ps(scales(t, pb, pb.add(bb)), xi);
        off_a = _mm_add_ps(off_a, sa);
        off_b = _mm_add_ps(off_b, sb);
        let da = _mm512_dpbusd_epi32(zero, weights(t, pa, pa.add(bb)), x);
        let db = _mm512_dpbusd_epi32(zero, weights(t, pb, pb.add(bb)), x);
        acc_a = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(da),
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sa)),
            acc_a,
        );
        acc_b = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(db),
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sb)),
            acc_b,
        );
        i += 2;
    }
    // Offsets: lanes 1 and 3 hold scale * (d_x * sum_x) per block.
    let coef = match t {
        QType::Q4_1 => 1.0,
        QType::Q4_0 => -8.0,
        _ => -128.0,
    };
    let odd = |v: __m128| {
        let mut l = [0f32; 4];
        _mm_storeu_ps(l.as_mut_ptr(), v);
        coef * (l[1] + l[3])
    };
    let mut ra = _mm512_reduce_add_ps(acc_a) + odd(off_a);
    let mut rb = _mm512_reduce_add_ps(acc_b) + odd(off_b);
    if i < nb {
        // An odd last block: the AVX2 kernel on that block alone.
        let last = (&xd[i..], &xs[i..], &xq[i * BLOCK..], &xm[i..]);
        ra += super::avx2::dot(t, std::slice::from_raw_parts(a.add(i * bb), bb), last);
        rb += super::avx2::dot(t, std::slice::from_raw_parts(b.add(i * bb), bb), last);
    }
    (ra, rb)
}
