//! Byte spans of a file's parts (tensors, zip entries), and the first two that share bytes.

/// A part of a file: bytes `start..end`, and its name.
pub(crate) type Span<'a> = (u64, u64, &'a str);

/// The first two spans, in order of start, where the second starts before the first ends.
pub(crate) fn first_overlap<'a>(mut spans: Vec<Span<'a>>) -> Option<(Span<'a>, Span<'a>)> {
    spans.sort_unstable();
    spans
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| (w[0], w[1]))
}
