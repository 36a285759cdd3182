//! [`PerSequenceContext`]: the [`Context`] of backends that keep one KV cache per sequence in
//! their own memory (candle, MLX). The bookkeeping — which sequences exist, how many may, where
//! each one continues, cutting a cache back for the prompt cache — is the same for all of them,
//! so it is written once here; a backend supplies only [`SequenceModel`].

use std::collections::HashMap;

use crate::engine::{check_chunks, Context, ContextOptions, ForwardChunk, Logits, SeqId, TokenId};
use crate::{CoreError, Result};

/// What a backend with per-sequence caches provides: forward passes of one sequence.
pub trait SequenceModel: Send {
    /// One sequence's KV cache.
    type Cache: Default + Send;

    /// The backend's id, for error messages.
    fn backend(&self) -> &'static str;
    fn vocab_size(&self) -> u32;
    /// Runs `tokens` at positions `cache_len(cache)..` and returns the rows of logits `logits`
    /// asks for, flattened (rows × vocabulary).
    fn forward(
        &self,
        tokens: &[TokenId],
        cache: &mut Self::Cache,
        logits: Logits,
    ) -> std::result::Result<Vec<f32>, String>;
    /// Positions the cache holds.
    fn cache_len(cache: &Self::Cache) -> usize;
    /// Keeps the first `len` positions.
    fn truncate(cache: &mut Self::Cache, len: usize) -> std::result::Result<(), String>;
    /// A cache of its own with the same positions, which may then grow apart from `cache`.
    fn copy_cache(cache: &Self::Cache) -> std::result::Result<Self::Cache, String>;
}

/// Up to `max_sequences` sequences, each with its own cache, over one model.
pub struct PerSequenceContext<M: SequenceModel> {
    model: M,
    seqs: HashMap<SeqId, M::Cache>,
    options: ContextOptions,
}

impl<M: SequenceModel> PerSequenceContext<M> {
    pub fn new(model: M, options: &ContextOptions) -> Self {
        Self {
            model,
            seqs: HashMap::new(),
            options: options.clone(),
        }
    }
}

/// The cache of `seq` cut back to `start_pos` positions (a new one if it has none).
fn cache_at<'a, M: SequenceModel>(
    seqs: &'a mut HashMap<SeqId, M::Cache>,
    max_sequences: u32,
    backend: &'static str,
    seq: SeqId,
    start_pos: u32,
) -> Result<&'a mut M::Cache> {
    let fail = |detail: String| CoreError::Forward { backend, detail };
    if !seqs.contains_key(&seq) && seqs.len() >= max_sequences as usize {
        return Err(fail(format!(
            "context holds {max_sequences} sequences already"
        )));
    }
    let cache = seqs.entry(seq).or_default();
    let (start, cached) = (start_pos as usize, M::cache_len(cache));
    if start > cached {
        return Err(fail(format!(
            "sequence {} has {cached} cached positions; cannot continue at {start}",
            seq.0
        )));
    }
    M::truncate(cache, start).map_err(fail)?;
    Ok(cache)
}

impl<M: SequenceModel> Context for PerSequenceContext<M> {
    fn options(&self) -> &ContextOptions {
        &self.options
    }

    fn clear_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.remove(&seq);
        Ok(())
    }

    fn keep_prefix(&mut self, seq: SeqId, len: u32) -> Result<bool> {
        let backend = self.model.backend();
        match self.seqs.get_mut(&seq) {
            Some(cache) if len as usize <= M::cache_len(cache) => {
                M::truncate(cache, len as usize)
                    .map_err(|detail| CoreError::Forward { backend, detail })?;
                Ok(true)
            }
            _ => Ok(len == 0),
        }
    }

    fn copy_sequence(&mut self, from: SeqId, to: SeqId) -> Result<()> {
        let backend = self.model.backend();
        let copy = match self.seqs.get(&from) {
            Some(cache) => {
                M::copy_cache(cache).map_err(|detail| CoreError::Forward { backend, detail })?
            }
            None => M::Cache::default(),
        };
        if !self.seqs.contains_key(&to) && self.seqs.len() >= self.options.max_sequences as usize {
            return Err(CoreError::Forward {
                backend,
                detail: format!(
                    "context holds {} sequences already",
                    self.options.max_sequences
                ),
            });
        }
        self.seqs.insert(to, copy);
        Ok(())
    }

    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()> {
        check_chunks(
            chunks,
            &self.options,
            self.model.vocab_size(),
            self.model.backend(),
        )?;
        logits.resize_with(chunks.len(), Vec::new);
        let backend = self.model.backend();
        let max = self.options.max_sequences;
        for (chunk, out) in chunks.iter().zip(logits.iter_mut()) {
            let cache = cache_at::<M>(&mut self.seqs, max, backend, chunk.seq, chunk.start_pos)?;
            *out = self
                .model
                .forward(chunk.tokens, cache, chunk.logits)
                .map_err(|detail| CoreError::Forward { backend, detail })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose "logits" record the positions it ran, so the bookkeeping can be checked
    /// without a real model: each row is [position] and the cache is the list of tokens.
    struct Recorder;

    impl SequenceModel for Recorder {
        type Cache = Vec<TokenId>;
        fn backend(&self) -> &'static str {
            "recorder"
        }
        fn vocab_size(&self) -> u32 {
            100
        }
        fn forward(
            &self,
            tokens: &[TokenId],
            cache: &mut Vec<TokenId>,
            logits: Logits,
        ) -> std::result::Result<Vec<f32>, String> {
            let start = cache.len();
            cache.extend_from_slice(tokens);
            let positions = start..cache.len();
            Ok(match logits {
                Logits::Last => vec![(cache.len() - 1) as f32],
                Logits::All => positions.map(|p| p as f32).collect(),
            })
        }
        fn cache_len(cache: &Vec<TokenId>) -> usize {
            cache.len()
        }
        fn copy_cache(cache: &Vec<TokenId>) -> std::result::Result<Vec<TokenId>, String> {
            Ok(cache.clone())
        }

        fn truncate(cache: &mut Vec<TokenId>, len: usize) -> std::result::Result<(), String> {
            cache.truncate(len);
            Ok(())
        }
    }

    fn options(max_sequences: u32) -> ContextOptions {
        ContextOptions {
            context_length: 8,
            threads: 1,
            batch_size: 8,
            max_sequences,
            kv_per_sequence: false,
        }
    }

    #[test]
    fn chunks_continue_their_own_sequence_and_return_the_rows_they_ask_for() {
        let mut ctx = PerSequenceContext::new(Recorder, &options(2));
        let mut out = Vec::new();
        ctx.forward(
            &[
                ForwardChunk::all(SeqId(0), 0, &[1, 2, 3]),
                ForwardChunk::last(SeqId(1), 0, &[4, 5]),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![vec![0.0, 1.0, 2.0], vec![1.0]]);
        ctx.forward(&[ForwardChunk::last(SeqId(0), 3, &[6])], &mut out)
            .unwrap();
        assert_eq!(out, vec![vec![3.0]]);
        // Continuing at 1 cuts the cache back first.
        ctx.forward(&[ForwardChunk::all(SeqId(0), 1, &[7, 8])], &mut out)
            .unwrap();
        assert_eq!(out, vec![vec![1.0, 2.0]]);
    }

    #[test]
    fn bad_chunks_are_refused_with_the_shared_messages() {
        let mut ctx = PerSequenceContext::new(Recorder, &options(1));
        let mut out = Vec::new();
        let err = |ctx: &mut PerSequenceContext<Recorder>, c: ForwardChunk<'_>| {
            ctx.forward(&[c], &mut Vec::new()).unwrap_err().to_string()
        };
        assert!(err(&mut ctx, ForwardChunk::last(SeqId(0), 0, &[])).contains("empty chunk"));
        assert!(err(&mut ctx, ForwardChunk::last(SeqId(0), 6, &[1, 2, 3]))
            .contains("exceed the context of 8 tokens"));
        assert!(err(&mut ctx, ForwardChunk::last(SeqId(0), 0, &[100])).contains("out of range"));
        assert!(err(&mut ctx, ForwardChunk::last(SeqId(0), 2, &[1])).contains("cannot continue"));
        ctx.forward(&[ForwardChunk::last(SeqId(0), 0, &[1])], &mut out)
            .unwrap();
        assert!(err(&mut ctx, ForwardChunk::last(SeqId(1), 0, &[1])).contains("1 sequences"));
        // A sequence's prefix is kept or it is not there at all.
        assert!(ctx.keep_prefix(SeqId(0), 1).unwrap());
        assert!(!ctx.keep_prefix(SeqId(0), 2).unwrap());
        assert!(!ctx.keep_prefix(SeqId(5), 1).unwrap());
        ctx.clear_sequence(SeqId(0)).unwrap();
        ctx.forward(&[ForwardChunk::last(SeqId(1), 0, &[1])], &mut out)
            .unwrap();
    }
}
