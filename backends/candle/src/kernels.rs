//! Matrix products over weights read in place from memory-mapped files.
//!
//! Quantized (GGUF Q4_0, Q4_1, Q8_0): activations are quantized to 8 bits per block of 32 (as
//! llama.cpp's Q8_0/Q8_1), and each block's integer dot product runs on AVX2 (chosen at run
//! time; a portable scalar loop elsewhere). K-quants (Q4_K, Q5_K, Q6_K) have their own
//! super-blocks of 256 and kernels in [`crate::kquants`]; [`matmul_parts`] serves both. Dense
//! (f32, f16, bf16 from SafeTensors, PyTorch or GGUF): weights are widened to f32 in registers
//! and multiplied in f32, so the result is the f32 computation on the stored values. Rows are spread over a [`Pool`].

use half::f16;

use crate::kquants::{self, KType, QK_K};
use crate::pool::Pool;

pub const BLOCK: usize = 32;

/// The weight types these kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    F32,
    F16,
    BF16,
}

impl QType {
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<QType> {
        use candle_core::quantized::GgmlDType as G;
        match t {
            G::Q4_0 => Some(QType::Q4_0),
            G::Q4_1 => Some(QType::Q4_1),
            G::Q8_0 => Some(QType::Q8_0),
            G::Q4K => Some(QType::Q4K),
            G::Q5K => Some(QType::Q5K),
            G::Q6K => Some(QType::Q6K),
            G::F32 => Some(QType::F32),
            G::F16 => Some(QType::F16),
            G::BF16 => Some(QType::BF16),
            _ => None,
        }
    }
    /// The type of a SafeTensors / PyTorch dtype name.
    pub fn from_dtype_name(name: &str) -> Option<QType> {
        match name {
            "F32" => Some(QType::F32),
            "F16" => Some(QType::F16),
            "BF16" => Some(QType::BF16),
            _ => None,
        }
    }
    pub fn is_quantized(self) -> bool {
        !matches!(self, QType::F32 | QType::F16 | QType::BF16)
    }
    /// The K-quant, for types with super-blocks of 256.
    pub fn k_type(self) -> Option<KType> {
        match self {
            QType::Q4K => Some(KType::Q4K),
            QType::Q5K => Some(KType::Q5K),
            QType::Q6K => Some(KType::Q6K),
            _ => None,
        }
    }
    /// Quantized with blocks of 32 (activations as Q8_0/Q8_1).
    fn is_q32(self) -> bool {
        matches!(self, QType::Q4_0 | QType::Q4_1 | QType::Q8_0)
    }
    /// Weights per block: 256 for K-quants, 32 for the others.
    pub fn block_len(self) -> usize {
        if self.k_type().is_some() {
            QK_K
        } else {
            BLOCK
        }
    }
    /// Bytes per block of `block_len()` weights.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q8_0 => 34,
            QType::F32 => 128,
            QType::F16 | QType::BF16 => 64,
            QType::Q4K | QType::Q5K | QType::Q6K => self.k_type().unwrap().block_bytes(),
        }
    }
    /// Bytes of a row of `cols` weights (a multiple of `block_len()` for quantized types).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            QType::F32 => cols * 4,
            QType::F16 | QType::BF16 => cols * 2,
            _ => cols / self.block_len() * self.block_bytes(),
        }
    }
}

/// Activations quantized per block: scale, the sum of the 32 integers, and the integers.
pub struct Q8Blocks {
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
    fn info_row(&self, t: QType, j: usize, k: usize) -> &[f32] {
        let nb = k / BLOCK;
        let all = if t == QType::Q4_1 {
            &self.info1
        } else {
            &self.info
        };
        &all[2 * j * nb..2 * (j + 1) * nb]
    }

    /// Row `j`'s scales, sums, integers and Q8_1 `s` values (rows of `k` values).
    fn row(&self, j: usize, k: usize) -> XRow<'_> {
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
type XRow<'a> = (&'a [f32], &'a [i32], &'a [i8], &'a [f32]);

/// Quantizes `m` rows of `k` floats (k a multiple of 32).
pub fn quantize_rows(x: &[f32], k: usize) -> Q8Blocks {
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

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dot product of one weight row (`nb` blocks) with one quantized activation row.
fn dot_scalar(t: QType, row: &[u8], xd: &[f32], xs: &[i32], xq: &[i8], xm: &[f32]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{f16_at, QType, BLOCK};
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
    pub unsafe fn dot(t: QType, row: &[u8], xd: &[f32], xs: &[i32], xq: &[i8], xm: &[f32]) -> f32 {
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
    pub unsafe fn dot_dense(t: QType, row: *const u8, x: &[f32]) -> f32 {
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
            s += super::dense_at(t, row, i) * x[i];
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
            pub unsafe fn $name(
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
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| has_avx2() && is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How far ahead (bytes) the AVX-512 kernel asks for weights: about two rows of a typical
/// matrix; measured 5% faster than none on 0.5 MB Q4_1 matrices read from memory.
const PREFETCH_BYTES: usize = 2048;

/// AVX-512 kernels unless `MINERVA_NO_AVX512` is set (to compare with the AVX2 ones).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            has_avx2()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && std::env::var_os("MINERVA_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernels run here, for build info.
pub fn kernel_name() -> &'static str {
    match (has_avx2(), has_avx_vnni(), has_avx512()) {
        (true, _, true) => "avx512-vnni (two blocks a step), avx2+fma+f16c",
        (true, true, false) => "avx2+fma+f16c, avx-vnni",
        (true, false, false) => "avx2+fma+f16c",
        _ => "scalar",
    }
}

/// AVX-512 (F, BW, VNNI): two blocks of a row per step. Each step unpacks both blocks' weights
/// into one 512-bit register (as u8; Q8_0 shifted by 128 to make them unsigned), multiplies by
/// the 64 activation bytes with one `vpdpbusd`, and scales the 16 lane sums with a vector built
/// from the two blocks' scales. The per-block offset terms (Q4_1's min, Q4_0's -8, Q8_0's -128,
/// each times the activation block's sum) gather in a small vector and are added once at the
/// end. About half the instructions of the AVX2 path per weight.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{QType, BLOCK};
    use std::arch::x86_64::*;

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
    pub unsafe fn dot2(
        t: QType,
        a: *const u8,
        b: *const u8,
        (xd, xs, xq, xm): super::XRow<'_>,
        info: &[f32],
    ) -> (f32, f32) {
        let nb = xd.len();
        let bb = t.block_bytes();
        let (mut acc_a, mut acc_b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut off_a, mut off_b) = (_mm_setzero_ps(), _mm_setzero_ps());
        // Lanes 0..8 hold block i's sums, 8..16 block i+1's: take scale lanes 0 and 2.
        let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let zero = _mm512_setzero_si512();
        let dist = super::PREFETCH_BYTES;
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
            let (xd1, xs1, xq1) = (&xd[i..], &xs[i..], &xq[i * BLOCK..]);
            ra += super::avx2::dot(
                t,
                std::slice::from_raw_parts(a.add(i * bb), bb),
                xd1,
                xs1,
                xq1,
                &xm[i..],
            );
            rb += super::avx2::dot(
                t,
                std::slice::from_raw_parts(b.add(i * bb), bb),
                xd1,
                xs1,
                xq1,
                &xm[i..],
            );
        }
        (ra, rb)
    }
}

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

fn dot(t: QType, row: &[u8], xd: &[f32], xs: &[i32], xq: &[i8], xm: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected; the slices have the sizes `dot` needs (checked
        // by the caller's layout: `row` is one row of `xd.len()` blocks).
        return unsafe { avx2::dot(t, row, xd, xs, xq, xm) };
    }
    dot_scalar(t, row, xd, xs, xq, xm)
}

/// Weight `i` of a dense row.
fn dense_at(t: QType, row: &[u8], i: usize) -> f32 {
    let b = |j: usize| row[j];
    match t {
        QType::F32 => f32::from_le_bytes([b(4 * i), b(4 * i + 1), b(4 * i + 2), b(4 * i + 3)]),
        QType::F16 => f16_at(row, 2 * i),
        QType::BF16 => half::bf16::from_bits(u16::from_le_bytes([b(2 * i), b(2 * i + 1)])).to_f32(),
        _ => unreachable!("quantized rows have no single weights"),
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
                let (xd, xs, xq, xm) = q.row(j, k);
                let v = dot(t, &w[r * rb..(r + 1) * rb], xd, xs, xq, xm);
                // SAFETY: as above.
                unsafe { *o.0.add(j * n + r) = v };
            }
        }
        return;
    }
    for r in r0..r1 {
        let row = &w[r * rb..(r + 1) * rb];
        for j in 0..m {
            let (xd, xs, xq, xm) = q.row(j, k);
            let v = dot(t, row, xd, xs, xq, xm);
            // SAFETY: j < m and r < n, so the index is inside the output; each (j, r) is
            // written by exactly one task.
            unsafe { *o.0.add(j * n + r) = v };
        }
    }
}

/// Dequantizes row `r` (of `k` weights) into `out`.
pub fn dequantize_row(t: QType, w: &[u8], k: usize, r: usize, out: &mut [f32]) {
    let rb = t.row_bytes(k);
    let row = &w[r * rb..(r + 1) * rb];
    if !t.is_quantized() {
        for (i, o) in out.iter_mut().enumerate().take(k) {
            *o = dense_at(t, row, i);
        }
        return;
    }
    if let Some(kt) = t.k_type() {
        kquants::dequantize_row(kt, row, &mut out[..k]);
        return;
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic byte stream (xorshift) for random blocks.
    pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

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

    fn activations(m: usize, k: usize) -> Vec<f32> {
        bytes(m * k, 99)
            .iter()
            .map(|&b| (f32::from(b) - 127.5) / 40.0)
            .collect()
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
                    let (xd, xs, xq, xm) = q.row(j, k);
                    let scalar = dot_scalar(
                        t,
                        &w[r * t.row_bytes(k)..(r + 1) * t.row_bytes(k)],
                        xd,
                        xs,
                        xq,
                        xm,
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
}
