//! Log-probabilities of tokens: the log-softmax of a forward pass's raw logits, before the
//! sampler's penalty, truncation and temperature. That is what OpenAI's, vLLM's and llama.cpp's
//! APIs report, so the figures describe the model rather than the sampling settings, and they
//! are the same whatever sampler drew the token.

use crate::{CoreError, Result, TokenId};

/// Most alternatives a request may ask for per token (OpenAI's and vLLM's limit too).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A token's log-probability and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: TokenId,
    pub logprob: f32,
    /// Most likely first; ties by lower token id. May include `token` itself.
    pub top: Vec<(TokenId, f32)>,
}

/// Checks a requested number of alternatives.
pub fn check_top(top: u32) -> Result<()> {
    if top > MAX_TOP_LOGPROBS {
        return Err(CoreError::InvalidParameter {
            parameter: "top_logprobs",
            detail: format!("{top} is above {MAX_TOP_LOGPROBS}"),
        });
    }
    Ok(())
}

/// The log-probability of `token` and the `top` most likely tokens under `logits` (one value per
/// vocabulary entry). The normalizer is summed in f64 so a 128k vocabulary loses no precision.
pub fn logprobs(logits: &[f32], token: TokenId, top: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - log_z) as f32;

    // A small sorted buffer beats sorting the vocabulary for top <= 20.
    let mut best: Vec<(TokenId, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || (best.len() == top && l <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as TokenId, l));
            best.truncate(top);
        }
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(t, l)| (t, lp(l))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(logits: &[f32]) -> Vec<f64> {
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        logits.iter().map(|&l| f64::from(l) - z.ln()).collect()
    }

    #[test]
    fn matches_a_naive_log_softmax_and_sorts_the_top() {
        let logits = [1.0f32, 3.5, -2.0, 3.5, 0.25, 7.0, -1e30];
        let want = naive(&logits);
        let got = logprobs(&logits, 4, 3);
        assert!((f64::from(got.logprob) - want[4]).abs() < 1e-6);
        // 7.0 first, then the tie at 3.5 in id order.
        let ids: Vec<_> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [5, 1, 3]);
        for (id, lp) in &got.top {
            assert!((f64::from(*lp) - want[*id as usize]).abs() < 1e-6);
        }
        let total: f64 = want.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let logits = [1000.0f32, 999.0, 0.0];
        let got = logprobs(&logits, 1, 0);
        assert!(got.top.is_empty());
        let want = -(1.0 + (-1.0f64).exp()).ln() - 1.0;
        assert!(
            (f64::from(got.logprob) - want).abs() < 1e-5,
            "{}",
            got.logprob
        );
    }

    #[test]
    fn top_above_twenty_is_refused() {
        assert!(check_top(20).is_ok());
        let e = check_top(21).unwrap_err().to_string();
        assert!(e.contains("top_logprobs") && e.contains("21"), "{e}");
    }
}
