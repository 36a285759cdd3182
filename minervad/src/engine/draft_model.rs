//! A draft model for speculative decoding: a smaller model with the same vocabulary, loaded into
//! the model's worker with a context of its own whose slots mirror the model's. Each step it
//! proposes, for every sequence that drafts with it, its own greedy continuation: one batched
//! forward pass per drafted token over all those sequences, inside the step the model then
//! verifies them in.
//!
//! Greedy proposals are a function of the text alone (a proposal made with certainty), so the
//! model's acceptance rule (draw as a plain step would, take the draft when the draw picks it) is
//! speculative sampling's, and the tokens are those of the same seed without speculation.

use std::sync::Arc;
use std::time::Instant;

use minerva_core::{Context, CoreError, ForwardChunk, Model, SeqId, TokenId};

use crate::error::{DaemonError, Result};

/// What a loaded model reports of its draft model.
#[derive(Debug, Clone)]
pub(crate) struct DraftDetails {
    pub(crate) name: String,
    pub(crate) path: std::path::PathBuf,
    pub(crate) backend: &'static str,
    pub(crate) quantization: String,
    pub(crate) parameter_count: u64,
}

/// The draft model in a worker: its model, its context, and what each slot's cache holds.
pub(crate) struct DraftModel {
    model: Arc<dyn Model>,
    ctx: Box<dyn Context>,
    /// Per slot: the tokens whose keys and values the draft's cache holds, in position order.
    fed: Vec<Vec<TokenId>>,
    logits: Vec<Vec<f32>>,
    /// Moving averages of a draft call's time (ms) and of the tokens it proposed: what one
    /// drafted token costs, the cache catch-up and passes that proposed nothing included.
    spent_ms: f64,
    proposed: f64,
    /// Moving average of what feeding it a token it lacks costs (ms), from passes that fed
    /// many: the price of catching up with a sequence that has not drafted yet.
    catch_up_ms: f64,
}

/// One sequence's request for drafts: its slot, its tokens so far (the newest not yet in the
/// model's cache) and how many to draft at most.
pub(crate) struct DraftWant<'a> {
    pub(crate) slot: SeqId,
    pub(crate) prompt: &'a [TokenId],
    pub(crate) output: &'a [TokenId],
    pub(crate) want: usize,
    /// Whether the model samples (temperature > 0) rather than takes its likeliest token.
    pub(crate) sampled: bool,
    /// Draft `want` tokens however unsure (Speculation.fixed_length).
    pub(crate) fixed: bool,
}

/// What a drafted token costs, in plain decode steps of the model: checking it in the model's
/// pass, and the draft model's pass that proposes the next one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DraftCosts {
    pub(crate) check: f64,
    pub(crate) pass: f64,
}

impl DraftModel {
    /// A draft model with a context made with the model's own context options; one timed
    /// pass gives the first estimate of what a drafted token costs.
    pub(crate) fn new(
        model: Arc<dyn Model>,
        mut ctx: Box<dyn Context>,
    ) -> minerva_core::Result<Self> {
        let slots = ctx.options().max_sequences.max(1) as usize;
        let token = model.info().bos_token.unwrap_or(0);
        let mut logits = Vec::new();
        // The first pass faults in the weights; the second is the one timed.
        let mut pass = || -> minerva_core::Result<f64> {
            let started = Instant::now();
            ctx.forward(&[ForwardChunk::last(SeqId(0), 0, &[token])], &mut logits)?;
            ctx.clear_sequence(SeqId(0))?;
            Ok(started.elapsed().as_secs_f64() * 1e3)
        };
        pass()?;
        let pass_ms = pass()?;
        Ok(Self {
            model,
            ctx,
            fed: vec![Vec::new(); slots],
            logits,
            spent_ms: pass_ms,
            proposed: 1.0,
            // Until measured: a prompt's tokens cost an eighth of a lone token's pass each.
            catch_up_ms: pass_ms / 8.0,
        })
    }

    /// What one drafted token costs (ms): at first one pass of the draft model, then what
    /// its drafting measured.
    pub(crate) fn ms_per_token(&self) -> f64 {
        self.spent_ms / self.proposed.max(1e-3)
    }

    /// What feeding it the tokens of `prompt` + `output` that `slot` lacks would cost (ms):
    /// drafting for a sequence first pays for that, which a short answer may not repay.
    pub(crate) fn catch_up_cost(&self, slot: SeqId, prompt: &[TokenId], output: &[TokenId]) -> f64 {
        let fed = self.fed.get(slot.0 as usize).map_or(&[][..], Vec::as_slice);
        let common = fed
            .iter()
            .zip(prompt.iter().chain(output))
            .take_while(|(a, b)| a == b)
            .count();
        (prompt.len() + output.len()).saturating_sub(common) as f64 * self.catch_up_ms
    }

    /// Forgets what `slot` holds (its sequence ended).
    pub(crate) fn forget(&mut self, slot: SeqId) -> minerva_core::Result<()> {
        if let Some(fed) = self.fed.get_mut(slot.0 as usize) {
            if !fed.is_empty() {
                self.ctx.clear_sequence(slot)?;
                fed.clear();
            }
        }
        Ok(())
    }

    /// Each want's greedy continuation, at most `want` tokens, shorter where the draft model
    /// is unsure or ends the text. First each slot's cache is cut back to where it agrees with
    /// its sequence (the rejected drafts of last step go) and given what it lacks; then one
    /// pass per drafted token over every sequence still drafting.
    ///
    /// For a sequence that samples, the draft model's own probabilities stand for the chance
    /// that the model's draw takes its tokens: the j-th drafted token is taken only if all
    /// before it are, so it saves a step with about the product of their probabilities. A token
    /// is proposed while that product is worth checking it, and the draft goes on while it is
    /// worth a pass more as well. A greedy model takes a token wherever the two models' likeliest
    /// agree, which a draft that is unsure between two tokens still often does (a quantized copy
    /// of the model nearly always): there the sequence's measured acceptance, through `want`,
    /// decides alone.
    pub(crate) fn draft(
        &mut self,
        wants: &[DraftWant<'_>],
        costs: DraftCosts,
    ) -> minerva_core::Result<Vec<Vec<TokenId>>> {
        let mut drafts: Vec<Vec<TokenId>> = vec![Vec::new(); wants.len()];
        let mut taken = vec![1.0f64; wants.len()];
        // (which want, position of the first token fed, the tokens fed)
        let mut pending: Vec<(usize, u32, Vec<TokenId>)> = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            let total = w.prompt.len() + w.output.len();
            if w.want == 0 || total == 0 {
                continue;
            }
            let slot = w.slot.0 as usize;
            let Some(fed) = self.fed.get_mut(slot) else {
                return Err(CoreError::Forward {
                    backend: self.model.backend(),
                    detail: format!("the draft model has no sequence slot {slot}"),
                });
            };
            let history = || w.prompt.iter().chain(w.output).copied();
            // At least the newest token is fed, for the logits after it.
            let mut common = fed
                .iter()
                .zip(history())
                .take_while(|(a, b)| **a == *b)
                .count()
                .min(total - 1);
            if common < fed.len() {
                if !self.ctx.keep_prefix(w.slot, common as u32)? {
                    self.ctx.clear_sequence(w.slot)?;
                    common = 0;
                }
                fed.truncate(common);
            }
            pending.push((i, common as u32, history().skip(common).collect()));
        }
        let started = Instant::now();
        let mut first = true;
        while !pending.is_empty() {
            let chunks: Vec<ForwardChunk<'_>> = pending
                .iter()
                .map(|(i, at, tokens)| ForwardChunk::last(wants[*i].slot, *at, tokens))
                .collect();
            let pass = Instant::now();
            self.ctx.forward(&chunks, &mut self.logits)?;
            drop(chunks);
            let fed: usize = pending.iter().map(|(_, _, t)| t.len()).sum();
            if first && fed >= 16 {
                let ms = pass.elapsed().as_secs_f64() * 1e3 / fed as f64;
                self.catch_up_ms = 0.8 * self.catch_up_ms + 0.2 * ms.min(4.0 * self.catch_up_ms);
            }
            first = false;
            let mut next = Vec::with_capacity(pending.len());
            for (k, (i, at, tokens)) in pending.into_iter().enumerate() {
                let w = &wants[i];
                self.fed[w.slot.0 as usize].extend_from_slice(&tokens);
                let (token, p) = likeliest(&self.logits[k]);
                if w.sampled && !w.fixed {
                    taken[i] *= f64::from(p);
                }
                if taken[i] < costs.check {
                    continue;
                }
                drafts[i].push(token);
                if drafts[i].len() < w.want
                    && (w.fixed || taken[i] > costs.check + costs.pass)
                    && !self.model.is_end_of_generation(token)
                {
                    next.push((i, at + tokens.len() as u32, vec![token]));
                }
            }
            pending = next;
        }
        if wants.iter().any(|w| w.want > 0) {
            // A call slowed by another process counts as twice the usual at most.
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let made: usize = drafts.iter().map(Vec::len).sum();
            let usual = self.ms_per_token() * made.max(1) as f64;
            self.spent_ms = 0.9 * self.spent_ms + 0.1 * ms.min(2.0 * usual);
            self.proposed = 0.9 * self.proposed + 0.1 * made as f64;
        }
        Ok(drafts)
    }
}

/// The likeliest token of `logits` and its probability.
fn likeliest(logits: &[f32]) -> (TokenId, f32) {
    let (mut best, mut max) = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best as TokenId, 1.0 / sum)
}

/// An error unless `draft` has `model`'s vocabulary: the same tokens, each with the same bytes
/// and the same end-of-generation marks, so a drafted id means the text it means to the model.
pub(crate) fn check_vocabulary(
    model: &dyn Model,
    model_name: &str,
    draft: &dyn Model,
    draft_name: &str,
) -> Result<()> {
    let refuse = |detail: String| {
        DaemonError::FailedPrecondition(format!(
            "the draft model {draft_name} does not share the vocabulary of {model_name}: {detail}; a draft model must have the model's tokenizer"
        ))
    };
    let (a, b) = (model.info().vocab_size, draft.info().vocab_size);
    if a != b {
        return Err(refuse(format!(
            "{draft_name} has {b} tokens, {model_name} {a}"
        )));
    }
    for t in 0..a {
        let (x, y) = (model.token_bytes(t)?, draft.token_bytes(t)?);
        if x != y {
            return Err(refuse(format!(
                "token {t} is {:?} in {model_name} and {:?} in {draft_name}",
                String::from_utf8_lossy(&x),
                String::from_utf8_lossy(&y)
            )));
        }
        if model.is_end_of_generation(t) != draft.is_end_of_generation(t) {
            return Err(refuse(format!(
                "token {t} ends generation in only one of them"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::likeliest;

    #[test]
    fn the_likeliest_token_comes_with_its_probability() {
        let (t, p) = likeliest(&[0.0, 2.0f32.ln(), 0.0]);
        assert_eq!(t, 1);
        assert!((p - 0.5).abs() < 1e-6, "{p}");
        let (t, p) = likeliest(&[-50.0, 10.0]);
        assert_eq!(t, 1);
        assert!(p > 0.999);
    }
}
