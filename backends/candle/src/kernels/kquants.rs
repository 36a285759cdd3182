//! GGUF's K-quants (Q4_K, Q5_K, Q6_K: the types of a Q4_K_M / Q5_K_M / Q6_K file) read in
//! place from the mapped file, as [`super::legacy`] does for Q4_0/Q4_1/Q8_0.
//!
//! A K-quant row is made of super-blocks of 256 weights. Activations are quantized to match,
//! as llama.cpp's Q8_K: per 256 values one f32 scale, 256 integers and the sums of each group of
//! 16 (which fold the weights' offsets, Q4_K/Q5_K's mins and Q6_K's -32, into 16 products per
//! super-block instead of 256). Each super-block's dot product is exact integer arithmetic,
//! scaled once in f32: AVX2 where the CPU has it (chosen at run time), a portable loop
//! elsewhere, and the two give the same integers.
//!
//! Layouts (llama.cpp's `block_q4_K`, `block_q5_K`, `block_q6_K`, all little-endian):
//! - Q4_K, 144 bytes: f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and eight 6-bit mins,
//!   128 bytes of 4-bit weights. Chunk `c` (0..4) of 64 weights takes bytes `32c..32c+32`: low
//!   nibbles are weights `64c..64c+32` (scale/min `2c`), high nibbles the next 32 (`2c+1`).
//!   A weight is `d * scale * q - dmin * min`.
//! - Q5_K, 176 bytes: as Q4_K, with 32 bytes of fifth bits (`qh`) before the 128 nibble bytes:
//!   bit `2c` of `qh[l]` tops weight `64c + l`, bit `2c+1` weight `64c + 32 + l`.
//! - Q6_K, 210 bytes: 128 bytes of low nibbles (`ql`), 64 of high 2-bit pairs (`qh`), sixteen
//!   i8 scales (one per 16 weights), f16 `d`. Half `n` (0..2) of 128 weights uses `ql[64n..]`
//!   and `qh[32n..]`; for `l` in 0..32 its weights `l`, `32+l`, `64+l`, `96+l` are `ql[l]`'s low
//!   nibble, `ql[32+l]`'s low, `ql[l]`'s high and `ql[32+l]`'s high, each with bits
//!   `0-1`, `2-3`, `4-5`, `6-7` of `qh[l]` on top. A weight is `d * scale * (q - 32)`.

use super::qtype::{f16_at, KType, QK_K};

/// Activations quantized per 256 (llama.cpp's Q8_K): rows of `k` values.
pub(crate) struct Q8K {
    pub d: Vec<f32>,
    pub qs: Vec<i8>,
    /// Sum of each group of 16 integers, 16 per super-block.
    pub bsums: Vec<i16>,
}

impl Q8K {
    /// Row `j`'s scales, integers and group sums.
    pub(crate) fn row(&self, j: usize, k: usize) -> (&[f32], &[i8], &[i16]) {
        let nb = k / QK_K;
        (
            &self.d[j * nb..(j + 1) * nb],
            &self.qs[j * k..(j + 1) * k],
            &self.bsums[j * nb * 16..(j + 1) * nb * 16],
        )
    }
}

/// Quantizes rows of floats (length a multiple of 256) as llama.cpp's `quantize_row_q8_K_ref`:
/// the value of largest magnitude maps to -127 exactly, the rest round half to even.
pub(crate) fn quantize_rows(x: &[f32]) -> Q8K {
    let nb = x.len() / QK_K;
    let mut out = Q8K {
        d: Vec::with_capacity(nb),
        qs: vec![0i8; x.len()],
        bsums: vec![0i16; nb * 16],
    };
    for (b, chunk) in x.chunks_exact(QK_K).enumerate() {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in chunk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.d.push(0.0);
            continue;
        }
        let iscale = -127.0 / max;
        let qs = &mut out.qs[b * QK_K..(b + 1) * QK_K];
        for (q, &v) in qs.iter_mut().zip(chunk) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (g, s) in out.bsums[b * 16..(b + 1) * 16].iter_mut().enumerate() {
            *s = qs[g * 16..(g + 1) * 16].iter().map(|&q| i16::from(q)).sum();
        }
        out.d.push(1.0 / iscale);
    }
    out
}

/// Q4_K/Q5_K's eight 6-bit scales and eight 6-bit mins from their 12 packed bytes.
#[inline]
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// The 256 unsigned integers of a Q4_K/Q5_K super-block (0..16 or 0..32), in weight order.
fn unpack_4_5(t: KType, blk: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    let (qh, qs) = match t {
        KType::Q4K => (None, &blk[16..144]),
        _ => (Some(&blk[16..48]), &blk[48..176]),
    };
    for c in 0..4 {
        for l in 0..32 {
            let b = qs[32 * c + l];
            let (mut lo, mut hi) = (b & 0x0F, b >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            q[64 * c + l] = lo;
            q[64 * c + 32 + l] = hi;
        }
    }
    q
}

/// The 256 integers of a Q6_K super-block (0..64, before the -32), in weight order.
fn unpack_6(blk: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for n in 0..2 {
        let ql = &blk[64 * n..64 * n + 64];
        let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
        let o = &mut q[128 * n..128 * n + 128];
        for l in 0..32 {
            o[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            o[32 + l] = (ql[32 + l] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            o[64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

/// Dequantizes one row of `k` weights.
pub(crate) fn dequantize_row(t: KType, row: &[u8], out: &mut [f32]) {
    for (blk, o) in row
        .chunks_exact(t.block_bytes())
        .zip(out.chunks_exact_mut(QK_K))
    {
        match t {
            KType::Q4K | KType::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (sc, m) = scales_mins(&blk[4..16]);
                let q = unpack_4_5(t, blk);
                for (i, v) in o.iter_mut().enumerate() {
                    let g = i / 32;
                    *v = d * f32::from(sc[g]) * f32::from(q[i]) - dmin * f32::from(m[g]);
                }
            }
            KType::Q6K => {
                let d = f16_at(blk, 208);
                let q = unpack_6(blk);
                for (i, v) in o.iter_mut().enumerate() {
                    let sc = f32::from(blk[192 + i / 16] as i8);
                    *v = d * sc * f32::from(i32::from(q[i]) as i16 - 32);
                }
            }
        }
    }
}

/// One row against one quantized activation row, without SIMD.
pub(crate) fn dot_scalar(t: KType, row: &[u8], xd: &[f32], xq: &[i8], xb: &[i16]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(t.block_bytes()).enumerate() {
        let y = &xq[b * QK_K..(b + 1) * QK_K];
        let bs = &xb[b * 16..(b + 1) * 16];
        match t {
            KType::Q4K | KType::Q5K => {
                let (sc, m) = scales_mins(&blk[4..16]);
                let q = unpack_4_5(t, blk);
                let mut sumi = 0i32;
                for (g, &scale) in sc.iter().enumerate() {
                    let s: i32 = (32 * g..32 * g + 32)
                        .map(|i| i32::from(q[i]) * i32::from(y[i]))
                        .sum();
                    sumi += i32::from(scale) * s;
                }
                let mins: i32 = (0..8)
                    .map(|g| i32::from(m[g]) * (i32::from(bs[2 * g]) + i32::from(bs[2 * g + 1])))
                    .sum();
                acc += f16_at(blk, 0) * xd[b] * sumi as f32 - f16_at(blk, 2) * xd[b] * mins as f32;
            }
            KType::Q6K => {
                let q = unpack_6(blk);
                let mut sumi = 0i32;
                for g in 0..16 {
                    let s: i32 = (16 * g..16 * g + 16)
                        .map(|i| i32::from(q[i]) * i32::from(y[i]))
                        .sum();
                    let sc = i32::from(blk[192 + g] as i8);
                    sumi += sc * (s - 32 * i32::from(bs[g]));
                }
                acc += f16_at(blk, 208) * xd[b] * sumi as f32;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{f16_at, scales_mins, KType, XRow, QK_K};
    use crate::kernels::avx2::hsum;
    use std::arch::x86_64::*;

    /// `sum(w * y)` of 32 unsigned weights (< 64) and 32 activations, times `scale`, as 8 i32
    /// lanes (all products exact: at most 2 * 63 * 127 per i16 lane before the scale).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scaled(w: __m256i, y: *const i8, scale: __m256i) -> __m256i {
        let y = _mm256_loadu_si256(y as *const __m256i);
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), scale)
    }

    /// Two groups' i8 scales as i16 lanes: 8 of `a`, then 8 of `b`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair_scales(a: i8, b: i8) -> __m256i {
        _mm256_set_m128i(_mm_set1_epi16(i16::from(b)), _mm_set1_epi16(i16::from(a)))
    }

    /// One row (`nb` super-blocks of `t`) against `N` Q8_K activation rows: each super-block's
    /// weights and scales are unpacked once and multiplied into all `N` rows (a prompt's
    /// tokens share them; decoding is `N` = 1).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `row` points at `nb` blocks of `t`; each of `xs` is a whole
    /// Q8_K row of `nb` blocks (256 integers and 16 sums per block).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_n<const N: usize>(
        t: KType,
        row: *const u8,
        nb: usize,
        xs: [XRow<'_>; N],
    ) -> [f32; N] {
        let bb = t.block_bytes();
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        // Offset terms (mins, Q6_K's -32) per row, in 8 f32 lanes.
        let mut off = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * bb);
            let bytes = std::slice::from_raw_parts(blk, bb);
            let mut sumi = [_mm256_setzero_si256(); N];
            match t {
                KType::Q4K | KType::Q5K => {
                    let (sc, m) = scales_mins(&bytes[4..16]);
                    let (qh, qs) = if t == KType::Q4K {
                        (_mm256_setzero_si256(), blk.add(16))
                    } else {
                        (
                            _mm256_loadu_si256(blk.add(16) as *const __m256i),
                            blk.add(48),
                        )
                    };
                    let one = _mm256_set1_epi8(1);
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                        let mut lo = _mm256_and_si256(q, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                        if t == KType::Q5K {
                            // Bit 2c (2c+1) of each qh byte, moved to bit 4. The 16-bit shifts
                            // are by less than 8, so bit 0 of each byte comes from that byte.
                            let sh = _mm_cvtsi32_si128(2 * c as i32);
                            let bl = _mm256_and_si256(_mm256_srl_epi16(qh, sh), one);
                            let sh1 = _mm_cvtsi32_si128(2 * c as i32 + 1);
                            let bh = _mm256_and_si256(_mm256_srl_epi16(qh, sh1), one);
                            lo = _mm256_or_si256(lo, _mm256_slli_epi16(bl, 4));
                            hi = _mm256_or_si256(hi, _mm256_slli_epi16(bh, 4));
                        }
                        let s0 = _mm256_set1_epi16(i16::from(sc[2 * c]));
                        let s1 = _mm256_set1_epi16(i16::from(sc[2 * c + 1]));
                        for (j, x) in xs.iter().enumerate() {
                            let y = x.1.as_ptr().add(b * QK_K + 64 * c);
                            let p = _mm256_add_epi32(scaled(lo, y, s0), scaled(hi, y.add(32), s1));
                            sumi[j] = _mm256_add_epi32(sumi[j], p);
                        }
                    }
                    // min g times the sum of its 32 activations: the 16 group sums against
                    // each min repeated twice, as 8 i32 lanes.
                    let mins = _mm256_cvtepu8_epi16(_mm_set_epi8(
                        m[7] as i8, m[7] as i8, m[6] as i8, m[6] as i8, m[5] as i8, m[5] as i8,
                        m[4] as i8, m[4] as i8, m[3] as i8, m[3] as i8, m[2] as i8, m[2] as i8,
                        m[1] as i8, m[1] as i8, m[0] as i8, m[0] as i8,
                    ));
                    let (d, dmin) = (f16_at(bytes, 0), f16_at(bytes, 2));
                    for (j, x) in xs.iter().enumerate() {
                        let bs = _mm256_loadu_si256(x.2.as_ptr().add(16 * b) as *const __m256i);
                        let mi = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins));
                        let dy = *x.0.get_unchecked(b);
                        let sumf = _mm256_cvtepi32_ps(sumi[j]);
                        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), sumf, acc[j]);
                        off[j] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * dy), mi, off[j]);
                    }
                }
                KType::Q6K => {
                    let m2 = _mm256_set1_epi8(3);
                    let sc = &bytes[192..208];
                    for n in 0..2 {
                        let ql0 = _mm256_loadu_si256(blk.add(64 * n) as *const __m256i);
                        let ql1 = _mm256_loadu_si256(blk.add(64 * n + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
                        // Bits s, s+1 of each qh byte, moved to bits 4-5.
                        let high = |s: i32| {
                            let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
                            _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
                        };
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                high(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                high(6),
                            ),
                        ];
                        for (i, &qi) in q.iter().enumerate() {
                            let g = 8 * n + 2 * i;
                            let scv = pair_scales(sc[g] as i8, sc[g + 1] as i8);
                            for (j, x) in xs.iter().enumerate() {
                                let y = x.1.as_ptr().add(b * QK_K + 128 * n + 32 * i);
                                sumi[j] = _mm256_add_epi32(sumi[j], scaled(qi, y, scv));
                            }
                        }
                    }
                    // -32 times each group's scale times its activation sum, as 8 i32 lanes.
                    let scales =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
                    let d = f16_at(bytes, 208);
                    for (j, x) in xs.iter().enumerate() {
                        let bs = _mm256_loadu_si256(x.2.as_ptr().add(16 * b) as *const __m256i);
                        let o = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, scales));
                        let dy = d * *x.0.get_unchecked(b);
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dy),
                            _mm256_cvtepi32_ps(sumi[j]),
                            acc[j],
                        );
                        off[j] = _mm256_fmadd_ps(_mm256_set1_ps(-32.0 * dy), o, off[j]);
                    }
                }
            }
        }
        let mut out = [0f32; N];
        for j in 0..N {
            out[j] = hsum(_mm256_add_ps(acc[j], off[j]));
        }
        out
    }
}

/// One Q8_K activation row: scales, integers, group sums.
pub(crate) type XRow<'a> = (&'a [f32], &'a [i8], &'a [i16]);

/// One row against one Q8_K activation row (AVX2 when the CPU has it); the tests' one-row form
/// of [`dot_n`].
#[cfg(test)]
pub(crate) fn dot(t: KType, row: &[u8], xd: &[f32], xq: &[i8], xb: &[i16]) -> f32 {
    dot_n(t, row, [(xd, xq, xb)])[0]
}

/// One row against `N` Q8_K activation rows of as many blocks as the row (AVX2 when the CPU
/// has it).
pub(crate) fn dot_n<const N: usize>(t: KType, row: &[u8], xs: [XRow<'_>; N]) -> [f32; N] {
    let nb = row.len() / t.block_bytes();
    for x in &xs {
        assert!(x.0.len() >= nb && x.1.len() >= nb * QK_K && x.2.len() >= nb * 16);
    }
    #[cfg(target_arch = "x86_64")]
    if super::cpu::has_avx2() {
        // SAFETY: AVX2 and FMA were detected; `row` holds nb blocks and every activation row
        // at least nb (asserted above).
        return unsafe { avx2::dot_n(t, row.as_ptr(), nb, xs) };
    }
    xs.map(|(xd, xq, xb)| dot_scalar(t, row, xd, xq, xb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::bytes;
    use candle_core::quantized::{ggml_file, GgmlDType};
    use candle_core::Device;
    use half::f16;

    /// `n` rows of `k` random weights of type `t`, with sane f16 scales.
    fn weights(t: KType, n: usize, k: usize) -> Vec<u8> {
        let mut w = bytes(n * k / QK_K * t.block_bytes(), 11);
        for blk in w.chunks_exact_mut(t.block_bytes()) {
            let h = |v: f32| f16::from_f32(v).to_bits().to_le_bytes();
            let (a, b) = (f32::from(blk[0]), f32::from(blk[2]));
            match t {
                KType::Q6K => blk[208..210].copy_from_slice(&h(0.001 + a * 1e-5)),
                _ => {
                    blk[0..2].copy_from_slice(&h(0.002 + a * 1e-5));
                    blk[2..4].copy_from_slice(&h(0.001 + b * 1e-5));
                }
            }
        }
        w
    }

    fn ggml(t: KType) -> GgmlDType {
        match t {
            KType::Q4K => GgmlDType::Q4K,
            KType::Q5K => GgmlDType::Q5K,
            KType::Q6K => GgmlDType::Q6K,
        }
    }

    #[test]
    fn q8k_maps_the_largest_magnitude_to_minus_127_and_sums_groups() {
        let mut x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[300] = 20.0;
        x[256..].iter_mut().step_by(3).for_each(|v| *v = -v.abs());
        let q = quantize_rows(&x);
        assert_eq!(q.qs[300], -127);
        assert!((q.d[1] * -127.0 - 20.0).abs() < 1e-5);
        for (g, &s) in q.bsums.iter().enumerate() {
            let want: i16 = q.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&v| i16::from(v))
                .sum();
            assert_eq!(s, want);
        }
        // Round trip within half a step.
        for (i, &v) in x.iter().enumerate() {
            let back = q.d[i / QK_K] * f32::from(q.qs[i]);
            assert!((back - v).abs() <= q.d[i / QK_K].abs() * 0.5 + 1e-6, "{i}");
        }
        let zero = quantize_rows(&[0.0; QK_K]);
        assert_eq!((zero.d[0], zero.qs.iter().all(|&v| v == 0)), (0.0, true));
    }

    /// The layouts read as candle's own (independent) K-quant code reads them, and products
    /// agree with its quantized matmul, with our scalar loop, and with exact f32 math.
    #[test]
    fn k_quants_match_candles_dequantization_and_products() {
        let (m, n, k) = (3, 9, 512);
        let x: Vec<f32> = bytes(m * k, 5)
            .iter()
            .map(|&b| (f32::from(b) - 127.5) / 40.0)
            .collect();
        let q = quantize_rows(&x);
        for t in [KType::Q4K, KType::Q5K, KType::Q6K] {
            let w = weights(t, n, k);
            let qt = ggml_file::qtensor_from_ggml(ggml(t), &w, vec![n, k], &Device::Cpu).unwrap();
            let theirs: Vec<f32> = qt
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xt = candle_core::Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let mm = candle_core::quantized::QMatMul::from_qtensor(qt).unwrap();
            let their_mm: Vec<f32> = candle_core::Module::forward(&mm, &xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let rb = k / QK_K * t.block_bytes();
            let mut row = vec![0f32; k];
            for r in 0..n {
                let wr = &w[r * rb..(r + 1) * rb];
                dequantize_row(t, wr, &mut row);
                assert_eq!(row, theirs[r * k..(r + 1) * k], "{t:?} row {r} dequantized");
                for j in 0..m {
                    let (xd, xq, xb) = q.row(j, k);
                    let fast = dot(t, wr, xd, xq, xb);
                    // Several activation rows at once: the same operations per row.
                    let four = dot_n(t, wr, [q.row(j, k), q.row(0, k), q.row(1, k), q.row(2, k)]);
                    assert_eq!(four[0], fast, "{t:?} r{r} j{j}: one row at a time or four");
                    let scalar = dot_scalar(t, wr, xd, xq, xb);
                    let xr = &x[j * k..(j + 1) * k];
                    let exact: f32 = row.iter().zip(xr).map(|(a, b)| a * b).sum();
                    let scale: f32 = row.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                    assert!(
                        (fast - scalar).abs() <= 1e-5 * scale,
                        "{t:?} r{r} j{j}: simd {fast} scalar {scalar}"
                    );
                    assert!(
                        (fast - their_mm[j * n + r]).abs() <= 1e-5 * scale,
                        "{t:?} r{r} j{j}: ours {fast} candle {}",
                        their_mm[j * n + r]
                    );
                    assert!(
                        (fast - exact).abs() <= 0.01 * scale,
                        "{t:?} r{r} j{j}: {fast} vs exact {exact} (scale {scale})"
                    );
                }
            }
        }
    }
}
