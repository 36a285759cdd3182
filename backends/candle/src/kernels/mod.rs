//! Matrix products over weights read in place from memory-mapped files.
//!
//! Quantized (GGUF Q4_0, Q4_1, Q8_0): activations are quantized to 8 bits per block of 32 (as
//! llama.cpp's Q8_0/Q8_1), and each block's integer dot product runs on AVX2 (chosen at run
//! time; a portable scalar loop elsewhere). K-quants (Q4_K, Q5_K, Q6_K) have their own
//! super-blocks of 256 and kernels; [`matmul_parts`] serves both. Dense (f32, f16, bf16 from
//! SafeTensors, PyTorch or GGUF): weights are widened to f32 in registers and multiplied in
//! f32, so the result is the f32 computation on the stored values. Rows are spread over a
//! [`Pool`](crate::pool::Pool).
//!
//! What lives where (formats beside instruction sets, as candle's `quantized` module):
//! - `qtype`: the weight types ([`QType`]), their block and row sizes, reading one stored value;
//! - `legacy`: Q4_0/Q4_1/Q8_0 blocks, the activations quantized for them, the scalar path;
//! - `kquants`: Q4_K/Q5_K/Q6_K super-blocks, their activations (Q8_K), scalar and AVX2 paths;
//! - `avx2`, `avx512`: the x86 dot products of the 32-weight types and dense rows;
//! - `attention`: [`scores`] and [`weighted_sum`], with their AVX-512 loops;
//! - `matmul`: the threaded driver ([`matmul`], [`matmul_parts`]) that picks each row's kernel;
//! - `cpu`: run-time feature detection and [`kernel_name`].

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cpu;
mod kquants;
mod legacy;
mod matmul;
mod qtype;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use attention::{scores, weighted_sum};
pub use cpu::kernel_name;
pub use matmul::{matmul, matmul_parts, Part};
pub use qtype::QType;

use qtype::dense_at;

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
    legacy::dequantize_row(t, row, out);
}
