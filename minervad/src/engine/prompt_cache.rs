//! The prompt cache of a worker (requests with `cache_prompt`): which slot a new sequence
//! takes, what each idle slot's KV cache still holds, and what is evicted when room is needed.

use minerva_core::{Context, SeqId, TokenId};

use super::Job;

/// Prompt caching (requests with `cache_prompt`): what each idle slot's KV cache still holds
/// from the sequence that last ran in it. Such a request takes the idle slot sharing the
/// longest prefix with its prompt and computes only the rest (llama-server's `cache_prompt`):
/// a chat's next turn resends the whole conversation, and requests often share a system
/// prompt. Cached tokens occupy KV cells, so they are forgotten (least recently used first)
/// when a request needs the room. It is opt-in because it is not bit-reproducible: the reused
/// positions were computed in other batches, and llama.cpp's attention adds up a sequence's
/// cells in cell order, which after evictions is no longer position order.
pub(super) struct PromptCache {
    /// Indexed by slot; `None` for an empty or active slot.
    slots: Vec<Option<CachedSlot>>,
    clock: u64,
}

struct CachedSlot {
    tokens: Vec<TokenId>,
    used: u64,
}

/// Where a new sequence goes: its slot and how many of its prompt tokens are cached there.
pub(super) struct Placement {
    pub(super) slot: SeqId,
    pub(super) reuse: usize,
}

impl PromptCache {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| None).collect(),
            clock: 0,
        }
    }

    /// Picks a free slot for `job`: the one whose cache shares the longest prefix with its
    /// prompt when that covers at least half the prompt (a chat's next turn, a repeated or
    /// shared long prefix), else an empty slot, else the least recently used one. A short
    /// match does not take a slot whose cache a later request may want whole.
    /// At least the prompt's last token is always computed: its logits give the first token.
    pub(super) fn place(
        &self,
        busy: impl IntoIterator<Item = SeqId>,
        job: &Job,
    ) -> Option<Placement> {
        let busy: Vec<usize> = busy.into_iter().map(|s| s.0 as usize).collect();
        self.place_prompt(&busy, &job.prompt, job.reuses_cache())
    }

    /// [`Self::place`] for a prompt, with the slots in `busy` taken.
    fn place_prompt(
        &self,
        busy: &[usize],
        prompt: &[TokenId],
        reuse_ok: bool,
    ) -> Option<Placement> {
        let reuse = |s: usize| match &self.slots[s] {
            Some(c) if reuse_ok => {
                let common = c.tokens.iter().zip(prompt).take_while(|(a, b)| a == b);
                common.count().min(prompt.len().saturating_sub(1))
            }
            _ => 0,
        };
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|s| !busy.contains(s))
            .collect();
        let best = free
            .iter()
            .map(|&s| (s, reuse(s)))
            .filter(|&(_, r)| r > 0 && 2 * r >= prompt.len())
            .max_by_key(|&(_, r)| r);
        let empty = || free.iter().copied().find(|&s| self.slots[s].is_none());
        let oldest = || {
            let used = |s: &usize| self.slots[*s].as_ref().map_or(0, |c| c.used);
            free.iter().copied().min_by_key(used)
        };
        let slot = best.map(|(s, _)| s).or_else(empty).or_else(oldest)?;
        Some(Placement {
            slot: SeqId(slot as u32),
            reuse: reuse(slot),
        })
    }

    /// A free slot, emptied, for a sequence that brings its own cells (another sample of a
    /// prompt): an empty one if any, else the least recently used cache is forgotten.
    pub(super) fn free_slot(
        &mut self,
        ctx: &mut dyn Context,
        busy: impl IntoIterator<Item = SeqId>,
    ) -> Option<SeqId> {
        let busy: Vec<usize> = busy.into_iter().map(|s| s.0 as usize).collect();
        let place = self.place_prompt(&busy, &[], false)?;
        if let Err(e) = self.take(ctx, &place) {
            tracing::error!(error = %e, "could not clear a cached sequence");
        }
        Some(place.slot)
    }

    /// KV cells held by idle slots' caches.
    pub(super) fn held(&self) -> usize {
        self.slots.iter().flatten().map(|c| c.tokens.len()).sum()
    }

    /// KV cells held by idle slots' caches, except `slot`'s.
    pub(super) fn held_except(&self, slot: SeqId) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != slot.0 as usize)
            .filter_map(|(_, c)| c.as_ref().map(|c| c.tokens.len()))
            .sum()
    }

    /// Forgets the least recently used cache other than `slot`'s; false when there is none.
    pub(super) fn evict_one(
        &mut self,
        ctx: &mut dyn Context,
        slot: SeqId,
    ) -> minerva_core::Result<bool> {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(s, c)| s != slot.0 as usize && c.is_some())
            .min_by_key(|(_, c)| c.as_ref().map_or(0, |c| c.used))
            .map(|(s, _)| s);
        match victim {
            Some(s) => {
                self.slots[s] = None;
                ctx.clear_sequence(SeqId(s as u32))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes `p.slot` ready for a new sequence: cut to the reused prefix, or cleared. Returns
    /// the number of prompt tokens reused.
    pub(super) fn take(
        &mut self,
        ctx: &mut dyn Context,
        p: &Placement,
    ) -> minerva_core::Result<usize> {
        let s = p.slot.0 as usize;
        let had = self.slots[s].take();
        if p.reuse > 0 && ctx.keep_prefix(p.slot, p.reuse as u32)? {
            return Ok(p.reuse);
        }
        if had.is_some() {
            ctx.clear_sequence(p.slot)?;
        }
        Ok(0)
    }

    /// Remembers what a retired sequence left in its slot.
    pub(super) fn keep(&mut self, slot: SeqId, tokens: Vec<TokenId>) {
        self.clock += 1;
        if let Some(c) = self.slots.get_mut(slot.0 as usize) {
            *c = (!tokens.is_empty()).then_some(CachedSlot {
                tokens,
                used: self.clock,
            });
        }
    }

    /// Forgets every cache (a perplexity job needs the whole context).
    pub(super) fn clear(&mut self, ctx: &mut dyn Context) -> minerva_core::Result<()> {
        for s in 0..self.slots.len() {
            if self.slots[s].take().is_some() {
                ctx.clear_sequence(SeqId(s as u32))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(slots: &[Option<&[TokenId]>]) -> PromptCache {
        let mut c = PromptCache::new(slots.len());
        for (s, t) in slots.iter().enumerate() {
            if let Some(t) = t {
                c.keep(SeqId(s as u32), t.to_vec());
            }
        }
        c
    }

    fn place(c: &PromptCache, busy: &[usize], prompt: &[TokenId], ok: bool) -> (u32, usize) {
        let p = c.place_prompt(busy, prompt, ok).expect("a free slot");
        (p.slot.0, p.reuse)
    }

    #[test]
    fn a_prompt_goes_where_most_of_it_is_cached() {
        // Slot 0 shares 2 tokens, slot 1 shares 4, slot 2 is empty.
        let c = cache(&[Some(&[1, 2, 9]), Some(&[1, 2, 3, 4, 8]), None]);
        assert_eq!(place(&c, &[], &[1, 2, 3, 4, 5, 6], true), (1, 4));
        // Busy slots are skipped: slot 0's 2 of 6 is under half, so the empty slot wins.
        assert_eq!(place(&c, &[1], &[1, 2, 3, 4, 5, 6], true), (2, 0));
        // The whole prompt cached: its last token is still computed.
        assert_eq!(place(&c, &[], &[1, 2, 3, 4], true), (1, 3));
        // Without cache_prompt nothing is reused and an empty slot is preferred.
        assert_eq!(place(&c, &[], &[1, 2, 3, 4, 5, 6], false), (2, 0));
    }

    #[test]
    fn without_an_empty_slot_the_least_recently_used_goes() {
        // keep() order makes slot 0 the oldest.
        let c = cache(&[Some(&[7, 7]), Some(&[8, 8])]);
        assert_eq!(place(&c, &[], &[5, 6, 7], true), (0, 0));
        // Overwritten anyway, a short match is still used.
        let c = cache(&[Some(&[5, 9, 9, 9]), Some(&[8, 8])]);
        assert_eq!(place(&c, &[], &[5, 6, 7, 1, 2], true), (0, 1));
        assert!(c.place_prompt(&[0, 1], &[5], true).is_none());
        assert_eq!(c.held_except(SeqId(0)), 2);
    }
}
