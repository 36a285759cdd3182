//! Speculative decoding: what to propose and how much. Decode at batch 1 is bound by reading
//! the weights, so checking several proposed tokens in one forward pass costs little more than
//! producing one. Proposals come from prompt lookup (here): where the sequence's last few
//! tokens occurred before (in its prompt or its own output), the tokens that followed them then
//! are a likely continuation now, as when a model copies, edits or quotes its input; it costs
//! nothing. Or from a draft model (`draft_model.rs`), a smaller model with the same vocabulary,
//! which costs its own forward passes. The model's own choice at each position decides; drafts
//! only save steps where it agrees.

use minerva_core::TokenId;

use crate::error::{DaemonError, Result};

/// Most tokens a request may let the worker draft per step.
pub(crate) const MAX_DRAFT: u32 = 16;
/// Drafted per step when a request does not say.
pub(crate) const DEFAULT_DRAFT: u32 = 8;

/// Where a sequence's drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DraftSource {
    /// Prompt lookup in the sequence's own tokens.
    Lookup,
    /// The draft model loaded beside the model.
    Model,
}

/// A request's speculative decoding: where drafts come from, and at most how many a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Speculate {
    pub(crate) source: DraftSource,
    pub(crate) max_draft: u32,
    /// Draft `max_draft` every step, paying or not (Speculation.fixed_length).
    pub(crate) fixed: bool,
}

/// The speculation a request gets on `model`: AUTO drafts with its draft model where it was
/// loaded with one; DRAFT without one is refused, never turned into lookup.
pub(crate) fn speculation_on(
    model: &super::LoadedModel,
    asked: Option<Asked>,
) -> Result<Option<Speculate>> {
    let Some(Asked {
        max_draft,
        source,
        fixed,
    }) = asked
    else {
        return Ok(None);
    };
    let has_draft = model.draft.is_some();
    let source = match source {
        None if has_draft => DraftSource::Model,
        None => DraftSource::Lookup,
        Some(DraftSource::Model) if !has_draft => {
            return Err(DaemonError::FailedPrecondition(format!(
                "speculation mode DRAFT, and {} was loaded without a draft model; load it with options.draft_model (minerva run --draft MODEL)",
                model.resolved.name
            )))
        }
        Some(s) => s,
    };
    Ok(Some(Speculate {
        source,
        max_draft,
        fixed,
    }))
}

/// What a request asks of speculative decoding before the model is known: at most how many
/// tokens a step, from where (`None`: the draft model where the model has one, else lookup),
/// and whether at a fixed length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) max_draft: u32,
    pub(crate) source: Option<DraftSource>,
    pub(crate) fixed: bool,
}

/// The longest and shortest run of last tokens looked up: one token alone matches too often by
/// chance to be worth a verification.
const LONGEST_MATCH: usize = 4;
const SHORTEST_MATCH: usize = 2;

/// A sequence's drafting: how many tokens to propose, chosen from how often its drafts were
/// accepted and from what checking a token costs, and the counts its stats report.
#[derive(Debug)]
pub(crate) struct Drafter {
    pub(crate) source: DraftSource,
    max: usize,
    /// Drafts `max` every step (Speculation.fixed_length).
    pub(crate) fixed: bool,
    /// The chance that a drafted token is the model's own, estimated from the sequence's
    /// verifications so far (a moving average).
    rate: f64,
    /// Steps since it last drafted: when drafting does not pay it still checks one token now
    /// and then, so a sequence that starts to repeat itself is noticed.
    idle: u32,
    pub(crate) drafted: u32,
    pub(crate) accepted: u32,
}

/// Steps without drafting after which a sequence checks one token again.
const PROBE_EVERY: u32 = 16;

impl Drafter {
    pub(crate) fn new(speculate: Speculate) -> Self {
        Self {
            source: speculate.source,
            max: speculate.max_draft.clamp(1, MAX_DRAFT) as usize,
            fixed: speculate.fixed,
            // Hopeful at first: a sequence that repeats its input shows it within a few steps,
            // one that does not costs a few rejected tokens.
            rate: 0.8,
            idle: 0,
            drafted: 0,
            accepted: 0,
        }
    }

    /// How many tokens to draft this step, at most `limit`: as many as pay off at `cost` (what
    /// drafting and checking one more token costs, relative to a plain decode step), or, for
    /// prompt lookup, one now and then where none do.
    pub(crate) fn length(&mut self, limit: usize, cost: f64) -> usize {
        if self.fixed {
            return self.max.min(limit);
        }
        let want = best_length(self.rate, cost, self.max).min(limit);
        if want > 0 {
            return want;
        }
        // Where even drafts that are always taken would not pay, a probe cannot show otherwise.
        // A draft model is not probed either: its agreement with the model changes little
        // along a text (a lookup's comes and goes with repeats), and a probe would first feed it
        // every token it missed.
        if best_length(1.0, cost, self.max) == 0 || self.source == DraftSource::Model {
            return 0;
        }
        self.idle += 1;
        if self.idle < PROBE_EVERY || limit == 0 {
            return 0;
        }
        1
    }

    /// After [`Drafter::length`]: how many tokens were proposed (a probe that found nothing
    /// to propose is tried again next step).
    pub(crate) fn proposed(&mut self, tokens: usize) {
        if tokens > 0 {
            self.idle = 0;
        }
    }

    /// Up to `limit` tokens that may follow `prompt` + `output` by prompt lookup; none when
    /// the last tokens occurred nowhere before, or when drafting does not pay.
    pub(crate) fn lookup(
        &mut self,
        prompt: &[TokenId],
        output: &[TokenId],
        limit: usize,
        cost: f64,
    ) -> Vec<TokenId> {
        let want = self.length(limit, cost);
        if want == 0 {
            return Vec::new();
        }
        let mut history = Vec::with_capacity(prompt.len() + output.len());
        history.extend_from_slice(prompt);
        history.extend_from_slice(output);
        let draft = lookup(&history, want).to_vec();
        self.proposed(draft.len());
        draft
    }

    /// After verifying `drafted` tokens of which the first `accepted` were the model's own.
    pub(crate) fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.drafted += drafted as u32;
        self.accepted += accepted as u32;
        // Accepted tokens are successes, the first rejected one (if any) a failure; the rest
        // were never tried.
        let tried = accepted + usize::from(accepted < drafted);
        let seen = accepted as f64 / tried as f64;
        self.rate = 0.5 * self.rate + 0.5 * seen;
    }
}

/// The draft length, 0 to `max`, that gives the most tokens per unit of time when each drafted
/// token is accepted with chance `rate` (given the ones before it were) and checking one costs
/// `cost` plain steps: (1 + rate + ... + rate^k) / (1 + cost * k).
fn best_length(rate: f64, cost: f64, max: usize) -> usize {
    let (mut best, mut best_value) = (0, 1.0);
    let (mut tokens, mut p) = (1.0, 1.0);
    for k in 1..=max {
        p *= rate;
        tokens += p;
        let value = tokens / (1.0 + cost * k as f64);
        if value > best_value {
            (best, best_value) = (k, value);
        }
    }
    best
}

/// What checking one more token costs relative to a plain decode step, measured on this
/// worker's own forward passes: a moving average of plain steps (their tokens and time) and
/// one of steps with drafts, the difference being the drafts' cost. Both start from a timed
/// pass of each kind when the model is loaded ([`DraftCost::calibrated`]), and a step slower
/// than twice the average counts as twice the average: a pass that another process slowed
/// would otherwise make drafts look dear, and with no drafts made the estimate would never
/// be corrected.
#[derive(Debug)]
pub(crate) struct DraftCost {
    plain: Option<(f64, f64)>,
    drafted: Option<(f64, f64)>,
}

impl DraftCost {
    fn new() -> Self {
        Self {
            plain: None,
            drafted: None,
        }
    }

    /// Seeded with one timed pass of a lone token (`one_ms`) and one of a token with
    /// `drafts` more (`more_ms`).
    pub(crate) fn calibrated(one_ms: f64, drafts: usize, more_ms: f64) -> Self {
        let mut c = Self::new();
        c.observe(1, 0, one_ms);
        c.observe(1 + drafts, drafts, more_ms);
        c
    }

    /// One step of only decoding sequences: `tokens` fed (sequences plus drafts), `drafts`
    /// of them drafted, `ms` the forward pass.
    pub(crate) fn observe(&mut self, tokens: usize, drafts: usize, ms: f64) {
        let slot = if drafts == 0 {
            &mut self.plain
        } else {
            &mut self.drafted
        };
        let tokens = tokens as f64;
        let Some((t, m)) = slot else {
            *slot = Some((tokens, ms));
            return;
        };
        let ceiling = 2.0 * *m * (tokens / *t).max(1.0);
        *t = 0.9 * *t + 0.1 * tokens;
        *m = 0.9 * *m + 0.1 * ms.min(ceiling);
    }

    /// What a plain step costs each of its sequences' tokens (ms), once one was seen.
    pub(crate) fn plain_ms_per_token(&self) -> Option<f64> {
        self.plain.filter(|&(t, _)| t > 0.0).map(|(t, m)| m / t)
    }

    /// `ms` spent to draft one token (by a draft model) relative to what a plain step spends
    /// on each sequence's token: what drafting a token costs on top of checking it.
    pub(crate) fn relative_ms(&self, ms: f64) -> f64 {
        match self.plain {
            Some((t, m)) if m > 0.0 && t > 0.0 => (ms * t / m).clamp(0.0, 2.0),
            _ => 0.3,
        }
    }

    /// The cost of one more checked token relative to what a plain step spends on each of
    /// its `decoding` sequences' tokens; a middling guess until both kinds of step were seen.
    /// A step of many sequences already keeps the cores busy, so a draft costs nearly a whole
    /// token there and pays only when it is very likely taken: drafting fades as the batch
    /// fills, and a full batch is not slowed by it.
    pub(crate) fn relative(&self, decoding: usize) -> f64 {
        let (Some((t1, m1)), Some((t2, m2))) = (self.plain, self.drafted) else {
            return 0.3;
        };
        if t2 <= t1 + 0.5 || m1 <= 0.0 {
            return 0.3;
        }
        let per_token = ((m2 - m1) / (t2 - t1)).max(0.0);
        // A plain step: a fixed part plus one token a sequence.
        let base = (m1 - per_token * t1).max(0.0);
        let n = decoding.max(1) as f64;
        let plain_per_token = (base + per_token * n) / n;
        (per_token / plain_per_token.max(1e-9)).clamp(0.0, 2.0)
    }
}

/// What followed the latest earlier occurrence of `history`'s last tokens (the longest run of
/// them that occurred before), at most `want` tokens; empty if there is none.
fn lookup(history: &[TokenId], want: usize) -> &[TokenId] {
    let len = history.len();
    for n in (SHORTEST_MATCH..=LONGEST_MATCH.min(len.saturating_sub(1))).rev() {
        let tail = &history[len - n..];
        // Latest first: recent text is the likelier to be repeated next; but an occurrence
        // right before the end has little after it, so the latest with `want` tokens after it
        // wins, else the one with the most.
        let mut best: &[TokenId] = &[];
        for start in (0..len - n).rev() {
            if &history[start..start + n] == tail {
                let from = start + n;
                let after = &history[from..(from + want).min(len)];
                if after.len() == want {
                    return after;
                }
                if after.len() > best.len() {
                    best = after;
                }
            }
        }
        if !best.is_empty() {
            return best;
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_longest_match_gives_what_followed_it() {
        //            0  1  2  3  4  5  6  7  8  9
        let h = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        // "1 2 3" last occurred at 4..7, followed by 7 8 1 ...
        assert_eq!(lookup(&h, 3), [7, 8, 1]);
        // Nothing has ten tokens after it: the occurrence with the most after it.
        assert_eq!(lookup(&h, 10), [9, 1, 2, 3, 7, 8, 1, 2, 3]);
        // A repeating run: the latest occurrence with enough after it.
        assert_eq!(lookup(&[5, 6, 5, 6, 5, 6, 5, 6], 4), [5, 6, 5, 6]);
        // Only a one-token match: nothing.
        assert!(lookup(&[5, 6, 7, 5], 4).is_empty());
        assert!(lookup(&[1, 2], 4).is_empty());
        // Two tokens match where three do not.
        assert_eq!(lookup(&[4, 1, 2, 6, 0, 1, 2], 2), [6, 0]);
    }

    #[test]
    fn drafts_are_as_long_as_they_pay_off() {
        // Cheap checks and likely drafts: draft the most; dear checks or unlikely drafts: none.
        assert_eq!(best_length(0.9, 0.05, 8), 8);
        assert_eq!(best_length(0.2, 0.5, 8), 0);
        assert!(best_length(0.7, 0.3, 8) > 0 && best_length(0.7, 0.3, 8) < 8);
        let mut d = Drafter::new(Speculate {
            source: DraftSource::Lookup,
            max_draft: 8,
            fixed: false,
        });
        let h = [1, 2, 3, 4, 5, 1, 2];
        assert!(!d.lookup(&h, &[], 8, 0.05).is_empty());
        for _ in 0..10 {
            d.record(4, 0);
        }
        // Rejected again and again: no drafts, but one token every PROBE_EVERY steps.
        let drafts: Vec<usize> = (0..PROBE_EVERY)
            .map(|_| d.lookup(&h, &[], 8, 0.3).len())
            .collect();
        assert_eq!(drafts.iter().sum::<usize>(), 1, "{drafts:?}");
        assert_eq!((d.drafted, d.accepted), (40, 0));
    }

    #[test]
    fn the_cost_of_a_checked_token_comes_from_the_two_kinds_of_step() {
        let mut c = DraftCost::new();
        assert_eq!(c.relative(1), 0.3);
        // 10 ms for one token, 16 ms for five: 1.5 ms a token over an 8.5 ms fixed part.
        for _ in 0..50 {
            c.observe(1, 0, 10.0);
            c.observe(5, 4, 16.0);
        }
        assert!((c.relative(1) - 0.15).abs() < 0.01, "{}", c.relative(1));
        // Eight sequences: a plain step spends (8.5 + 12) / 8 ms a token, so a draft costs
        // more than half a token, and even likely drafts are kept short.
        // A pass slowed by something else counts as twice the average, not three hundred times.
        let mut slowed = DraftCost::calibrated(10.0, 4, 16.0);
        slowed.observe(1, 0, 3000.0);
        assert!(
            (slowed.relative(1) - 0.15).abs() < 0.05,
            "{}",
            slowed.relative(1)
        );
        let eight = c.relative(8);
        assert!((eight - 1.5 * 8.0 / 20.5).abs() < 0.01, "{eight}");
        assert!(best_length(0.7, eight, 8) < best_length(0.7, c.relative(1), 8));
    }
}
