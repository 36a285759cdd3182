//! The weight types the kernels read ([`QType`], and [`KType`] for the K-quants), the sizes
//! of their blocks and rows, and the readers of single stored values (an f16 field, a dense
//! weight) that every format's kernels share.

use half::f16;

pub(crate) const BLOCK: usize = 32;

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
    pub(crate) fn k_type(self) -> Option<KType> {
        match self {
            QType::Q4K => Some(KType::Q4K),
            QType::Q5K => Some(KType::Q5K),
            QType::Q6K => Some(KType::Q6K),
            _ => None,
        }
    }
    /// Quantized with blocks of 32 (activations as Q8_0/Q8_1).
    pub(crate) fn is_q32(self) -> bool {
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

/// Weights per super-block.
pub(crate) const QK_K: usize = 256;

/// Which K-quant a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KType {
    Q4K,
    Q5K,
    Q6K,
}

impl KType {
    pub fn block_bytes(self) -> usize {
        match self {
            KType::Q4K => 144,
            KType::Q5K => 176,
            KType::Q6K => 210,
        }
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Weight `i` of a dense row.
pub(crate) fn dense_at(t: QType, row: &[u8], i: usize) -> f32 {
    let b = |j: usize| row[j];
    match t {
        QType::F32 => f32::from_le_bytes([b(4 * i), b(4 * i + 1), b(4 * i + 2), b(4 * i + 3)]),
        QType::F16 => f16_at(row, 2 * i),
        QType::BF16 => half::bf16::from_bits(u16::from_le_bytes([b(2 * i), b(2 * i + 1)])).to_f32(),
        _ => unreachable!("quantized rows have no single weights"),
    }
}
