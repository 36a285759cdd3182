//! Random weight data, generated chunk by chunk so no tensor is ever held whole in memory.
//!
//! Values are uniform in ±[`AMPLITUDE`]: small enough that activations through 32 layers stay
//! finite (norm weights are 1.0), so a synthetic model generates tokens like a real one costs.
//! Each element is one lookup into a 65,536-entry table of pre-rounded values, indexed by 16 bits
//! of a xorshift64* stream: no per-element float math, so writing runs at disk speed.

/// Largest absolute weight value.
pub const AMPLITUDE: f32 = 0.02;

/// Elements generated per chunk (8 MiB at 16 bits).
pub const CHUNK_ELEMENTS: usize = 4 << 20;

/// A fast, seedable stream of pseudo-random 64-bit words (xorshift64*, seeded by splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams and the state is never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// A seed derived from a tensor's name, so every tensor is different and runs repeat.
    pub fn for_tensor(name: &str) -> Self {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng::new(h)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with entries of `table` (65,536 entries) picked at random.
    pub fn fill_from_table(&mut self, table: &[u16], out: &mut [u16]) {
        assert_eq!(table.len(), 1 << 16);
        let mut chunks = out.chunks_exact_mut(4);
        for c in &mut chunks {
            let r = self.next_u64();
            c[0] = table[(r & 0xffff) as usize];
            c[1] = table[((r >> 16) & 0xffff) as usize];
            c[2] = table[((r >> 32) & 0xffff) as usize];
            c[3] = table[(r >> 48) as usize];
        }
        for v in chunks.into_remainder() {
            *v = table[(self.next_u64() >> 48) as usize];
        }
    }

    /// Fills `out` with random words (for packed 4-bit weights, where every bit pattern is valid).
    pub fn fill_u32(&mut self, out: &mut [u32]) {
        for pair in out.chunks_mut(2) {
            let r = self.next_u64();
            pair[0] = r as u32;
            if let Some(v) = pair.get_mut(1) {
                *v = (r >> 32) as u32;
            }
        }
    }
}

/// A 16-bit float encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    pub fn encode(self, x: f32) -> u16 {
        match self {
            Half::F16 => f32_to_f16(x),
            Half::Bf16 => f32_to_bf16(x),
        }
    }

    /// The table [`Rng::fill_from_table`] draws from: 65,536 values evenly spread over
    /// ±[`AMPLITUDE`], already encoded.
    pub fn uniform_table(self) -> Vec<u16> {
        (0..1u32 << 16)
            .map(|i| {
                let u = (i as f32 + 0.5) / 65536.0; // (0, 1)
                self.encode((u * 2.0 - 1.0) * AMPLITUDE)
            })
            .collect()
    }
}

/// IEEE 754 binary32 → binary16, round to nearest even (subnormals included).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (half, rem, halfway) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1))
    } else {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000)
    };
    let rounded = if rem > halfway || (rem == halfway && half & 1 == 1) {
        half + 1
    } else {
        half
    };
    sign | rounded as u16
}

/// binary32 → bfloat16, round to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// Little-endian bytes of 16-bit values, appended to `out`.
pub fn extend_le_u16(out: &mut Vec<u8>, values: &[u16]) {
    out.reserve(values.len() * 2);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_encoding() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-14)), 0x0400);
        assert_eq!(f32_to_f16(0.0), 0);
        // 0.02 is 0x251f in binary16 (0.0200043).
        assert_eq!(f32_to_f16(0.02), 0x251f);
    }

    #[test]
    fn bf16_encoding() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(-2.0), 0xc000);
        assert_eq!(f32_to_bf16(0.02), 0x3ca4);
    }

    #[test]
    fn table_values_are_small_and_varied() {
        let t = Half::F16.uniform_table();
        let mut rng = Rng::for_tensor("x");
        let mut out = vec![0u16; 1001];
        rng.fill_from_table(&t, &mut out);
        let distinct: std::collections::HashSet<_> = out.iter().collect();
        assert!(distinct.len() > 500);
        for &v in &out {
            // |x| <= 0.02: exponent at most 2^-6 (0x2400..0x27ff) in magnitude.
            assert!(v & 0x7fff <= 0x251f, "{v:#x}");
        }
    }
}
