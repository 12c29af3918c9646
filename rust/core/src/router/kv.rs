//! The exact cache view: backends whose engine publishes KV events.
//!
//! Such a backend's cached prefix comes from two sets, each prefix-closed, matched separately and
//! credited with the longer of the two:
//! - *confirmed* (`Router::confirmed`): what the engine's events say it holds (`kvview.rs`);
//! - *speculative* (its slot in `Router::index`): the chains of requests routed there that have
//!   not finished yet. A burst with one new prefix lands together before the engine's first
//!   `BlockStored` arrives; and since a running request's blocks cannot be evicted, the claim is
//!   true for as long as it lasts, so it ends exactly when the request does (no guessed TTL).
//!
//! A backend without events keeps the router's own guess in `index` (learned from placements,
//! aged by LRU), as before.
use super::Router;
use crate::error::Result;
use crate::fasthash::U64Map;
use crate::index::{PrefixIndex, DEFAULT_CAPACITY_BLOCKS};
use crate::kvview::{KvEvent, KvView};
use crate::snapshot::{kv, Snap};

/// One event-fed backend: the engine's view and the in-flight requests' claims on `index`.
#[derive(Debug, Default)]
pub(super) struct EventSlot {
    pub(super) view: KvView,
    /// Key -> in-flight tickets on this backend whose chain holds it.
    claims: U64Map<u32>,
    /// Bumped when the claims are dropped before their tickets end (the engine restarted): a
    /// ticket of an older epoch has nothing left to unclaim.
    claim_epoch: u64,
}

impl EventSlot {
    /// The caller clears the slot's claims from `Router::index`.
    pub(super) fn end_claims(&mut self) {
        self.claims.clear();
        self.claim_epoch += 1;
    }
}

impl Router {
    /// One batch of a backend's KV events, in order. `model` is the model the engine serves (the
    /// root of blocks stored without a LoRA adapter). The first call turns the backend's cache
    /// view from the router's guess to the engine's account.
    pub fn kv_apply(&mut self, id: &str, model: &str, events: &[KvEvent]) -> Result<()> {
        let slot = self.slot_of(id)?;
        let bound = (self.index.capacity(slot).saturating_mul(4)).max(DEFAULT_CAPACITY_BLOCKS);
        let block_tokens = self.hash.block_tokens;
        Self::event_slot(&mut self.events, &mut self.index, slot).view.apply(slot, &mut self.confirmed, model, block_tokens, events, bound);
        Ok(())
    }

    /// The backend's events can no longer be trusted to be complete (a gap replay could not fill,
    /// a publisher restart, the backend failed its health checks): forget its confirmed blocks; it
    /// is event-fed and unconfirmed until the next batch (on a backend without events yet, it
    /// makes it event-fed: from now on only the engine's word and in-flight claims count).
    pub fn kv_reset(&mut self, id: &str) -> Result<()> {
        let slot = self.slot_of(id)?;
        let fed = self.is_event_fed(slot);
        let es = Self::event_slot(&mut self.events, &mut self.index, slot);
        if fed {
            es.view.reset(slot, &mut self.confirmed);
        }
        Ok(())
    }

    /// The engine hashes of the blocks the view holds for a backend (empty for one without events).
    pub fn kv_engine_hashes(&self, id: &str) -> Result<Vec<u64>> {
        let slot = self.slot_of(id)?;
        Ok(self.events.get(slot as usize).and_then(|e| e.as_ref()).map(|e| e.view.engine_hashes()).unwrap_or_default())
    }

    /// The slot's event state, created on first use. Takes the fields it needs, not `self`, so a
    /// caller can lend `&mut self.confirmed` beside it.
    fn event_slot<'a>(events: &'a mut Vec<Option<EventSlot>>, index: &mut PrefixIndex, slot: u32) -> &'a mut EventSlot {
        if events.len() <= slot as usize {
            events.resize_with(slot as usize + 1, || None);
        }
        let e = &mut events[slot as usize];
        if e.is_none() {
            // Guesses made before the events started are not the engine's word: drop them.
            index.clear(slot);
        }
        e.get_or_insert_with(EventSlot::default)
    }

    pub(super) fn is_event_fed(&self, slot: u32) -> bool {
        matches!(self.events.get(slot as usize), Some(Some(_)))
    }

    /// A request routed to an event-fed backend claims its chain until it is released. Returns the
    /// claim epoch, for `unclaim`.
    pub(super) fn claim(&mut self, slot: u32, blocks: &[u64]) -> u64 {
        let Some(Some(es)) = self.events.get_mut(slot as usize) else { return 0 };
        for &b in blocks {
            *es.claims.entry(b).or_default() += 1;
        }
        self.index.insert(slot, blocks);
        es.claim_epoch
    }

    pub(super) fn unclaim(&mut self, slot: u32, blocks: &[u64], epoch: u64) {
        let Some(Some(es)) = self.events.get_mut(slot as usize) else { return };
        if es.claim_epoch != epoch {
            return;
        }
        // Leaf first: the speculative set stays prefix-closed at every step.
        for &b in blocks.iter().rev() {
            if let Some(n) = es.claims.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    es.claims.remove(&b);
                    self.index.remove(slot, b);
                }
            }
        }
    }

    /// Forget a backend's event state (it was removed, or its slot is reused).
    pub(super) fn drop_events(&mut self, slot: u32) {
        if let Some(e) = self.events.get_mut(slot as usize) {
            *e = None;
        }
        self.confirmed.clear(slot);
    }

    /// Blocks a backend is believed to hold: the engine's count when it reports, plus the chains
    /// of the requests in flight there (its slot of the main index), else the guess. Without the
    /// in-flight chains, new prompts routed before their first BlockStored all went to the one
    /// least-holding backend (found by the bench; a running request's confirmed blocks count twice,
    /// which only leans new prompts away from a busy backend).
    pub(super) fn held_blocks(&self, slot: u32) -> u64 {
        // A backend without events has nothing in `confirmed`.
        self.index.len(slot) + self.confirmed.len(slot)
    }

    /// The admin view of a backend's events: `null` for one without.
    pub(super) fn kv_events_snap(&self, slot: u32) -> Snap {
        let Some(Some(e)) = self.events.get(slot as usize) else { return Snap::Null };
        let st = &e.view.stats;
        Snap::Map(vec![
            kv("confirmed", e.view.confirmed),
            kv("confirmed_blocks", self.confirmed.len(slot)),
            kv("speculative_blocks", e.claims.len() as u64),
            kv("engine_blocks", e.view.blocks()),
            kv("batches", st.batches),
            kv("stored", st.stored),
            kv("removed", st.removed),
            kv("cleared", st.cleared),
            kv("resets", st.resets),
            kv("orphans", st.orphans),
            kv("unknown_removals", st.unknown_removals),
            kv("block_size_mismatch", st.block_size_mismatch),
            kv("other_medium", st.other_medium),
        ])
    }
}
