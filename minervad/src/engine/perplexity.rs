//! Perplexity over a text, computed on the model's worker (which owns the context): the text's
//! tokens are cut into chunks of `chunk` tokens, each evaluated from an empty cache, and the
//! second half of each chunk is scored (every token there has at least chunk/2 tokens of
//! context), as llama.cpp's perplexity tool does.

use std::time::Instant;

use minerva_core::{Context, ForwardChunk, SeqId, TokenId};
use tokio::sync::mpsc;

use super::Lease;
use crate::error::DaemonError;

pub(crate) struct PerplexityJob {
    pub(crate) tokens: Vec<TokenId>,
    pub(crate) chunk: u32,
    pub(crate) events: mpsc::UnboundedSender<PerplexityEvent>,
    /// Keeps the model counted as busy until the job is dropped.
    #[expect(dead_code, reason = "held for its Drop, never read")]
    pub(crate) lease: Lease,
}

#[derive(Debug, Clone)]
pub(crate) struct PerplexityStatus {
    pub(crate) chunks_done: u32,
    pub(crate) chunks_total: u32,
    pub(crate) tokens_scored: u64,
    /// exp(mean negative log-likelihood) over the tokens scored so far.
    pub(crate) perplexity: f64,
    pub(crate) elapsed_ms: f64,
}

#[derive(Debug)]
pub(crate) enum PerplexityEvent {
    Progress(PerplexityStatus),
    Done(PerplexityStatus),
    Error(DaemonError),
}

/// Runs the job to its end (or until its client leaves).
pub(crate) fn run(
    ctx: &mut dyn Context,
    vocab: usize,
    job: &PerplexityJob,
) -> minerva_core::Result<()> {
    let started = Instant::now();
    let n = job.chunk as usize;
    let chunks_total = (job.tokens.len() / n) as u32;
    let first = n / 2;
    let mut nll = 0.0f64;
    let mut scored = 0u64;
    let mut logits = Vec::new();
    let status = |done: u32, nll: f64, scored: u64| PerplexityStatus {
        chunks_done: done,
        chunks_total,
        tokens_scored: scored,
        perplexity: if scored > 0 {
            (nll / scored as f64).exp()
        } else {
            0.0
        },
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    for c in 0..chunks_total as usize {
        if job.events.is_closed() {
            return Ok(());
        }
        let tokens = &job.tokens[c * n..(c + 1) * n];
        ctx.clear_sequence(SeqId(0))?;
        ctx.forward(&[ForwardChunk::all(SeqId(0), 0, tokens)], &mut logits)?;
        for j in first..n - 1 {
            let row = &logits[0][j * vocab..(j + 1) * vocab];
            nll += log_softmax_neg(row, tokens[j + 1] as usize);
            scored += 1;
        }
        let _ = job
            .events
            .send(PerplexityEvent::Progress(status(c as u32 + 1, nll, scored)));
    }
    ctx.clear_sequence(SeqId(0))?;
    let _ = job
        .events
        .send(PerplexityEvent::Done(status(chunks_total, nll, scored)));
    Ok(())
}

/// -log softmax(row)[target], computed stably in f64.
pub(crate) fn log_softmax_neg(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_log_softmax() {
        // Uniform over 4: -ln(1/4).
        assert!((log_softmax_neg(&[1.0, 1.0, 1.0, 1.0], 2) - 4f64.ln()).abs() < 1e-12);
        let p = log_softmax_neg(&[10.0, 0.0], 0);
        assert!(p > 0.0 && p < 1e-4);
    }
}
