//! Random inputs for the kernels' tests.

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

/// Activations around zero (about -3.2..3.2) from [`bytes`].
pub(crate) fn activations(m: usize, k: usize) -> Vec<f32> {
    bytes(m * k, 99)
        .iter()
        .map(|&b| (f32::from(b) - 127.5) / 40.0)
        .collect()
}
