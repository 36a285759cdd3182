//! Turning generated token bytes into streamed text: tokens can split a UTF-8 character, and a
//! stop string can span tokens, so text is released only when it is complete and cannot be the
//! start of a stop string.

/// Accumulates token bytes and releases text at UTF-8 character boundaries.
#[derive(Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Adds bytes and returns the text that is now complete. Bytes that can never form a valid
    /// character become U+FFFD; an incomplete character at the end waits for more bytes.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix is valid UTF-8 by definition of valid_up_to.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Releases whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Outcome of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text safe to send now.
    pub text: String,
    /// The stop string that matched, if one did; generation ends.
    pub stopped_by: Option<String>,
}

/// Holds back text that may be the beginning of a stop string.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        // The earliest match wins; at equal positions, the longer stop string.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        if let Some((at, stop)) = hit {
            let stop = stop.clone();
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released {
                text,
                stopped_by: Some(stop),
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        Released {
            text,
            stopped_by: None,
        }
    }

    /// Releases held text at the end of generation (no stop string matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_split_across_tokens() {
        let mut d = Utf8Decoder::default();
        let euro = "€".as_bytes();
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&[euro[2], b'x']), "€x");
        assert_eq!(d.push(&[0xff, b'y']), "\u{fffd}y");
        assert_eq!(d.push(&euro[..2]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_string_across_pushes_is_never_sent() {
        let mut m = StopMatcher::new(["</s>".to_string(), "User:".to_string()]);
        assert_eq!(m.push("Hello <").text, "Hello ");
        assert_eq!(m.push("/").text, "");
        let r = m.push("s> more");
        assert_eq!(r.text, "");
        assert_eq!(r.stopped_by.as_deref(), Some("</s>"));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(["User:".to_string()]);
        assert_eq!(m.push("a Us").text, "a ");
        assert_eq!(m.push("e").text, "");
        assert_eq!(m.push("d U").text, "Used ");
        assert_eq!(m.finish(), "U");
    }

    #[test]
    fn no_stop_strings_releases_everything() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(
            m.push("abc"),
            Released {
                text: "abc".into(),
                stopped_by: None
            }
        );
    }
}
