//! GGUF's types with blocks of 32 weights (Q4_0, Q4_1, Q8_0; llama.cpp's "legacy" quants):
//! activations quantized to match (as llama.cpp's Q8_0/Q8_1 blocks), the portable scalar dot
//! product, the choice between it and the AVX2 one, and dequantization.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::avx2;
#[cfg(target_arch = "x86_64")]
use super::cpu::has_avx2;
use super::qtype::{f16_at, QType, BLOCK};

/// Activations quantized per block: scale, the sum of the 32 integers, and the integers.
pub(crate) struct Q8Blocks {
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
    pub qs: Vec<i8>,
    /// Per block, llama.cpp's Q8_1 `s`: `d * sum` rounded to f16 (Q4_1's offset term).
    pub s: Vec<f32>,
    /// Per block, `d` and `d * sum` side by side (what the AVX-512 kernel loads per pair).
    pub info: Vec<f32>,
    /// Per block, `d` and `s` side by side (the same, for Q4_1).
    pub info1: Vec<f32>,
}

impl Q8Blocks {
    /// Row `j`'s (d, offset scale) pairs for weights of type `t`.
    pub(crate) fn info_row(&self, t: QType, j: usize, k: usize) -> &[f32] {
        let nb = k / BLOCK;
        let all = if t == QType::Q4_1 {
            &self.info1
        } else {
            &self.info
        };
        &all[2 * j * nb..2 * (j + 1) * nb]
    }

    /// Row `j`'s scales, sums, integers and Q8_1 `s` values (rows of `k` values).
    pub(crate) fn row(&self, j: usize, k: usize) -> XRow<'_> {
        let nb = k / BLOCK;
        (
            &self.d[j * nb..(j + 1) * nb],
            &self.sum[j * nb..(j + 1) * nb],
            &self.qs[j * k..(j + 1) * k],
            &self.s[j * nb..(j + 1) * nb],
        )
    }
}

/// One activation row: scales, integer sums, integers, Q8_1 `s` values.
pub(crate) type XRow<'a> = (&'a [f32], &'a [i32], &'a [i8], &'a [f32]);

/// Quantizes `m` rows of `k` floats (k a multiple of 32).
pub(crate) fn quantize_rows(x: &[f32], k: usize) -> Q8Blocks {
    let nb = x.len() / BLOCK;
    let mut out = Q8Blocks {
        d: Vec::with_capacity(nb),
        sum: Vec::with_capacity(nb),
        qs: vec![0i8; x.len()],
        s: Vec::with_capacity(nb),
        info: Vec::with_capacity(2 * nb),
        info1: Vec::with_capacity(2 * nb),
    };
    debug_assert_eq!(x.len() % k, 0);
    for (b, chunk) in x.chunks_exact(BLOCK).enumerate() {
        let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut s = 0i32;
        for (q, v) in out.qs[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(chunk) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            s += r;
        }
        // As llama.cpp's Q8_0/Q8_1 blocks: integers from the exact scale, the scale (and
        // Q8_1's d * sum) stored as f16, so both backends compute the same sums from a GGUF.
        let d16 = f16::from_f32(d).to_f32();
        let s16 = f16::from_f32(d * s as f32).to_f32();
        out.d.push(d16);
        out.sum.push(s);
        out.s.push(s16);
        out.info.extend([d16, d16 * s as f32]);
        out.info1.extend([d16, s16]);
    }
    out
}

/// Dot product of one weight row (`nb` blocks) with one quantized activation row.
pub(crate) fn dot_scalar(t: QType, row: &[u8], (xd, xs, xq, xm): XRow<'_>) -> f32 {
    let bb = t.block_bytes();
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let q = &xq[b * BLOCK..(b + 1) * BLOCK];
        let d = f16_at(blk, 0);
        match t {
            QType::Q8_0 => {
                let w = &blk[2..34];
                let s: i32 = w
                    .iter()
                    .zip(q)
                    .map(|(&a, &b)| i32::from(a as i8) * i32::from(b))
                    .sum();
                acc += d * xd[b] * s as f32;
            }
            QType::F32 | QType::F16 | QType::BF16 => unreachable!("dense rows have no blocks"),
            QType::Q4K | QType::Q5K | QType::Q6K => unreachable!("K-quants: see kquants"),
            QType::Q4_0 | QType::Q4_1 => {
                let nib = if t == QType::Q4_0 {
                    &blk[2..18]
                } else {
                    &blk[4..20]
                };
                let mut s = 0i32;
                for j in 0..16 {
                    s += i32::from(nib[j] & 0x0F) * i32::from(q[j]);
                    s += i32::from(nib[j] >> 4) * i32::from(q[j + 16]);
                }
                if t == QType::Q4_0 {
                    acc += d * xd[b] * (s - 8 * xs[b]) as f32;
                } else {
                    let m = f16_at(blk, 2);
                    acc += d * xd[b] * s as f32 + m * xm[b];
                }
            }
        }
    }
    acc
}

pub(crate) fn dot(t: QType, row: &[u8], x: XRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected; the slices have the sizes `dot` needs (checked
        // by the caller's layout: `row` is one row of `x`'s block count).
        return unsafe { avx2::dot(t, row, x) };
    }
    dot_scalar(t, row, x)
}

/// Dequantizes one row of blocks (as many as `row` holds) into `out`.
pub(crate) fn dequantize_row(t: QType, row: &[u8], out: &mut [f32]) {
    for (blk, o) in row
        .chunks_exact(t.block_bytes())
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16_at(blk, 0);
        match t {
            QType::Q8_0 => {
                for (v, &q) in o.iter_mut().zip(&blk[2..34]) {
                    *v = d * f32::from(q as i8);
                }
            }
            QType::F32 | QType::F16 | QType::BF16 => unreachable!("dense rows have no blocks"),
            QType::Q4K | QType::Q5K | QType::Q6K => unreachable!("K-quants: see kquants"),
            QType::Q4_0 | QType::Q4_1 => {
                let (nib, m) = if t == QType::Q4_0 {
                    (&blk[2..18], -8.0 * d)
                } else {
                    (&blk[4..20], f16_at(blk, 2))
                };
                for j in 0..16 {
                    o[j] = d * f32::from(nib[j] & 0x0F) + m;
                    o[j + 16] = d * f32::from(nib[j] >> 4) + m;
                }
            }
        }
    }
}
