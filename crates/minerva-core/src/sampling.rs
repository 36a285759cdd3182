//! The one sampler every backend uses: logit bias → repetition, frequency and presence
//! penalties → top-k → top-p → min-p → temperature → a draw from a seeded ChaCha8 RNG (or argmax
//! when the temperature is 0), the same order as llama.cpp's default chain. Same logits and seed, same tokens, on any backend.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{CoreError, Result, TokenId};

/// Sampling settings. `Default` is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token in the window (OpenAI's presence penalty);
    /// 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the window; 0 = off.
    pub frequency_penalty: f32,
    /// The recent tokens (prompt included) the three penalties look at.
    pub repetition_window: u32,
    /// Added to these tokens' logits before anything else, sorted by token id.
    pub logit_bias: Vec<(TokenId, f32)>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_window: 64,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks every value's range; the error names the parameter and the range it must be in.
    pub fn validate(&self) -> Result<()> {
        fn bad(parameter: &'static str, detail: String) -> Result<()> {
            Err(CoreError::InvalidParameter { parameter, detail })
        }
        let t = self.temperature;
        if !t.is_finite() || !(0.0..=10.0).contains(&t) {
            return bad("temperature", format!("{t} is not in [0, 10] (0 = greedy)"));
        }
        let p = self.top_p;
        if !p.is_finite() || p <= 0.0 || p > 1.0 {
            return bad("top_p", format!("{p} is not in (0, 1] (1 = off)"));
        }
        let m = self.min_p;
        if !m.is_finite() || !(0.0..1.0).contains(&m) {
            return bad("min_p", format!("{m} is not in [0, 1) (0 = off)"));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 || r > 10.0 {
            return bad(
                "repetition_penalty",
                format!("{r} is not in (0, 10] (1 = off)"),
            );
        }
        for (parameter, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(parameter, format!("{v} is not in [-2, 2] (0 = off)"));
            }
        }
        for &(token, b) in &self.logit_bias {
            if !b.is_finite() || !(-100.0..=100.0).contains(&b) {
                return bad(
                    "logit_bias",
                    format!("{b} for token {token} is not in [-100, 100]"),
                );
            }
        }
        if self.repetition_window > 1 << 20 {
            return bad(
                "repetition_window",
                format!("{} is larger than 1048576", self.repetition_window),
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Sampler state for one sequence: the RNG and the recent tokens the penalty looks at.
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
    recent: VecDeque<TokenId>,
    candidates: Vec<(TokenId, f32)>,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self {
            recent: VecDeque::with_capacity(config.repetition_window as usize),
            config,
            rng,
            candidates: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Records a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: TokenId) {
        let window = self.config.repetition_window as usize;
        if window == 0 {
            return;
        }
        if self.recent.len() == window {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Picks the next token from `logits` (one value per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> TokenId {
        self.sample_among(logits, None)
    }

    /// Picks the next token among those `allowed` admits (a structured-output constraint's
    /// mask), as `sample` would if the others had no probability: the penalties, top-k, top-p
    /// and min-p see only the allowed tokens. `None` when `allowed` admits no token.
    pub fn sample_within(
        &mut self,
        logits: &[f32],
        allowed: &dyn Fn(TokenId) -> bool,
    ) -> Option<TokenId> {
        let token = self.sample_among(logits, Some(allowed));
        if allowed(token) {
            return Some(token);
        }
        // Every allowed logit was -inf or NaN: the first allowed token, as argmax would.
        (0..logits.len() as TokenId).find(|&t| allowed(t))
    }

    fn sample_among(
        &mut self,
        logits: &[f32],
        allowed: Option<&dyn Fn(TokenId) -> bool>,
    ) -> TokenId {
        let cfg = &self.config;
        let repeat = cfg.repetition_penalty != 1.0;
        let counted = cfg.presence_penalty != 0.0 || cfg.frequency_penalty != 0.0;
        let penalized = (repeat || counted) && !self.recent.is_empty();
        if cfg.is_greedy() && !penalized && cfg.logit_bias.is_empty() {
            return match allowed {
                None => argmax_slice(logits),
                Some(allowed) => argmax(
                    logits
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| allowed(i as TokenId))
                        .map(|(i, &l)| (i, l)),
                ),
            };
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as TokenId, l)));
        for &(t, b) in &cfg.logit_bias {
            if let Some(c) = self.candidates.get_mut(t as usize) {
                c.1 += b;
            }
        }
        if penalized {
            // Like llama.cpp: each distinct recent token is penalized once by the repetition
            // penalty, and by the frequency penalty once per occurrence.
            let mut seen: Vec<TokenId> = self.recent.iter().copied().collect();
            seen.sort_unstable();
            for run in seen.chunk_by(|a, b| a == b) {
                let Some(c) = self.candidates.get_mut(run[0] as usize) else {
                    continue;
                };
                if repeat {
                    let p = cfg.repetition_penalty;
                    c.1 = if c.1 > 0.0 { c.1 / p } else { c.1 * p };
                }
                c.1 -= cfg.frequency_penalty * run.len() as f32 + cfg.presence_penalty;
            }
        }
        if let Some(allowed) = allowed {
            self.candidates.retain(|c| allowed(c.0));
        }
        if self.config.is_greedy() {
            return argmax(self.candidates.iter().map(|&(t, l)| (t as usize, l)));
        }
        let cfg = &self.config;
        let cands = &mut self.candidates;
        if cfg.top_k > 0 && (cfg.top_k as usize) < cands.len() {
            keep_top(cands, cfg.top_k as usize);
        }
        if cfg.top_p < 1.0 {
            apply_top_p(cands, cfg.top_p);
        }
        if cfg.min_p > 0.0 {
            let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
            // p_i / p_max >= min_p  <=>  l_i - l_max >= ln(min_p)
            let threshold = max + cfg.min_p.ln();
            cands.retain(|c| c.1 >= threshold);
        }
        // Temperature, then a draw from the softmax.
        let t = cfg.temperature;
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for c in cands.iter_mut() {
            c.1 = ((c.1 - max) / t).exp();
            total += f64::from(c.1);
        }
        let r: f64 = self.rng.random::<f64>() * total;
        let mut acc = 0.0f64;
        for c in cands.iter() {
            acc += f64::from(c.1);
            if r < acc {
                return c.0;
            }
        }
        cands.last().map(|c| c.0).unwrap_or(0)
    }
}

/// `argmax` over a slice, in two vectorizable passes: the maximum over 16 lanes, then the
/// first position holding it. Same answer as `argmax` (lowest index on ties, NaN never wins)
/// several times faster on a 32k-50k vocabulary, which a daemon decoding 64 sequences does 64
/// times a step on its one worker thread.
pub fn argmax_slice(values: &[f32]) -> TokenId {
    const LANES: usize = 16;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            // `>` is false for NaN, so NaN never replaces a lane's value.
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        if x > max {
            max = x;
        }
    }
    if max == f32::NEG_INFINITY {
        // All -inf or NaN: index 0, as `argmax` gives.
        return 0;
    }
    let mut base = 0;
    for c in values.chunks(LANES) {
        if c.iter().fold(false, |hit, &x| hit | (x == max)) {
            let at = c.iter().position(|&x| x == max).unwrap_or(0);
            return (base + at) as TokenId;
        }
        base += c.len();
    }
    0
}

/// Index of the largest value; ties go to the lowest index; NaN never wins.
fn argmax(values: impl Iterator<Item = (usize, f32)>) -> TokenId {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, v) in values {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as TokenId
}

/// Keeps the `k` highest-logit candidates, sorted by descending logit (ties: lower id first).
fn keep_top(cands: &mut Vec<(TokenId, f32)>, k: usize) {
    let order = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < cands.len() {
        cands.select_nth_unstable_by(k - 1, order);
        cands.truncate(k);
    }
    cands.sort_unstable_by(order);
}

/// Keeps the smallest top set whose probability mass reaches `p`. Sorting all ~50k candidates
/// every token costs milliseconds, so look at the top 64, 512, ... until the mass is reached.
fn apply_top_p(cands: &mut Vec<(TokenId, f32)>, p: f32) {
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = cands.iter().map(|c| f64::from((c.1 - max).exp())).sum();
    let target = f64::from(p) * total;
    let mut k = 64usize;
    loop {
        let k_now = k.min(cands.len());
        let mut top = cands.clone();
        keep_top(&mut top, k_now);
        let mut acc = 0.0f64;
        for (i, c) in top.iter().enumerate() {
            acc += f64::from((c.1 - max).exp());
            if acc >= target {
                top.truncate(i + 1);
                *cands = top;
                return;
            }
        }
        if k_now == cands.len() {
            *cands = top;
            return;
        }
        k *= 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.1, 2.0, -1.0, 1.9, 0.5, 3.0, 2.9, -4.0]
    }

    #[test]
    fn a_mask_keeps_every_draw_among_the_allowed_tokens() {
        let even = |t: TokenId| t.is_multiple_of(2);
        let mut greedy = Sampler::new(SamplingConfig::default());
        // 5 is the likeliest; among the even ids 6 is.
        assert_eq!(greedy.sample(&logits()), 5);
        assert_eq!(greedy.sample_within(&logits(), &even), Some(6));
        let cfg = SamplingConfig {
            temperature: 1.5,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg.clone());
        let mut unmasked = Sampler::new(cfg);
        let draws: Vec<TokenId> = (0..200)
            .map(|_| s.sample_within(&logits(), &even).unwrap())
            .collect();
        assert!(draws.iter().all(|&t| even(t)), "{draws:?}");
        // More than one allowed token is drawn: the mask does not turn sampling greedy.
        assert!(draws.iter().any(|&t| t != 6), "{draws:?}");
        assert!((0..200).any(|_| !even(unmasked.sample(&logits()))));
        // Nothing allowed, or only -inf: no token, or the first allowed one.
        assert_eq!(greedy.sample_within(&logits(), &|_| false), None);
        let flat = vec![f32::NEG_INFINITY; 8];
        assert_eq!(greedy.sample_within(&flat, &|t| t == 3), Some(3));
    }

    #[test]
    fn argmax_slice_matches_the_scalar_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for len in [0usize, 1, 5, 16, 17, 33, 1000, 32000, 49152] {
            for case in 0..4 {
                let mut v: Vec<f32> = (0..len)
                    .map(|_| rng.random::<f32>() * 20.0 - 10.0)
                    .collect();
                if len > 3 {
                    match case {
                        // A tie, the later copy first in lane order.
                        1 => {
                            let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            v[len - 1] = m;
                            v[len / 2] = m;
                        }
                        2 => v.iter_mut().step_by(3).for_each(|x| *x = f32::NAN),
                        3 => v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                        _ => {}
                    }
                }
                assert_eq!(
                    argmax_slice(&v),
                    argmax(v.iter().copied().enumerate()),
                    "len {len} case {case}"
                );
            }
        }
    }

    #[test]
    fn frequency_and_presence_penalties_count_occurrences() {
        let cfg = |frequency_penalty, presence_penalty| SamplingConfig {
            frequency_penalty,
            presence_penalty,
            ..SamplingConfig::default()
        };
        // 5 (3.0) seen twice, 6 (2.9) never: frequency 0.1 costs 5 0.2, enough to lose.
        let mut s = Sampler::new(cfg(0.1, 0.0));
        s.accept(5);
        s.accept(5);
        assert_eq!(s.sample(&logits()), 6);
        // Seen once: 0.05 is not enough, 0.1 presence is.
        let mut s = Sampler::new(cfg(0.05, 0.0));
        s.accept(5);
        assert_eq!(s.sample(&logits()), 5);
        let mut s = Sampler::new(cfg(0.0, 0.15));
        s.accept(5);
        assert_eq!(s.sample(&logits()), 6);
        // Negative values reward repeats.
        let mut s = Sampler::new(cfg(-1.5, 0.0));
        s.accept(1);
        assert_eq!(s.sample(&logits()), 1);
    }

    #[test]
    fn logit_bias_moves_the_choice_and_is_range_checked() {
        let mut s = Sampler::new(SamplingConfig {
            logit_bias: vec![(2, 4.5), (5, -100.0)],
            ..SamplingConfig::default()
        });
        // 2: -1.0 + 4.5 = 3.5 beats 6's 2.9 once 5 is banned.
        assert_eq!(s.sample(&logits()), 2);
        let bad = SamplingConfig {
            logit_bias: vec![(3, 101.0)],
            ..SamplingConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("logit_bias") && e.contains("token 3"), "{e}");
        let bad = SamplingConfig {
            presence_penalty: 2.5,
            ..SamplingConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("presence_penalty"));
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&logits()), 5);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(SamplingConfig {
            repetition_penalty: 1.5,
            ..SamplingConfig::default()
        });
        s.accept(5);
        // 3.0 / 1.5 = 2.0 < 2.9
        assert_eq!(s.sample(&logits()), 6);
    }

    #[test]
    fn same_seed_same_draws_and_other_seed_differs() {
        let cfg = |seed| SamplingConfig {
            temperature: 1.5,
            seed,
            ..SamplingConfig::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(cfg(seed));
            (0..64).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingConfig {
            temperature: 5.0,
            top_k: 1,
            seed: 3,
            ..SamplingConfig::default()
        });
        for _ in 0..32 {
            assert_eq!(s.sample(&logits()), 5);
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_the_candidates() {
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_p: 0.5,
            seed: 11,
            ..SamplingConfig::default()
        });
        for _ in 0..64 {
            assert!([5, 6].contains(&s.sample(&logits())));
        }
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            min_p: 0.5,
            seed: 11,
            ..SamplingConfig::default()
        });
        for _ in 0..64 {
            assert!([5, 6].contains(&s.sample(&logits())));
        }
    }

    #[test]
    fn top_p_over_a_large_vocabulary_matches_a_full_sort() {
        let vocab: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let mut fast: Vec<(TokenId, f32)> = vocab
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        apply_top_p(&mut fast, 0.9);
        let mut full: Vec<(TokenId, f32)> = vocab
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        keep_top(&mut full, 5000);
        let max = full[0].1;
        let total: f64 = full.iter().map(|c| f64::from((c.1 - max).exp())).sum();
        let mut acc = 0.0;
        let n = full
            .iter()
            .position(|c| {
                acc += f64::from((c.1 - max).exp());
                acc >= 0.9 * total
            })
            .unwrap()
            + 1;
        assert_eq!(fast.len(), n);
        assert_eq!(fast, full[..n].to_vec());
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = SamplingConfig {
            top_p: 1.5,
            ..SamplingConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("top_p") && e.contains("1.5"), "{e}");
        let bad = SamplingConfig {
            temperature: f32::NAN,
            ..SamplingConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        assert!(SamplingConfig::default().validate().is_ok());
    }
}
