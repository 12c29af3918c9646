//! The router: backends, tickets and what they teach it. The per-request decision is in
//! `router/decide.rs` (filter → score → pick → admit), the pickers in `router/pick.rs`, the wait
//! queue in `router/waitq.rs`, the snapshot in `router/introspect.rs`. The binding only converts
//! values.
//!
//! Cost per route: O(prompt blocks) for the prefix match plus O(candidates) for scoring; never
//! O(candidates × prompt blocks).
mod decide;
mod introspect;
mod kv;
mod pick;
mod waitq;

use std::collections::{BTreeMap, HashMap};

use crate::admission::{Tier, TierLimits, TierStats, DEFAULT_LIMITS};
use crate::backend::{Backend, BackendUpdate};
use crate::error::{CoreError, Result};
use crate::fasthash::U64Map;
use crate::index::{PrefixIndex, DEFAULT_CAPACITY_BLOCKS};
use crate::outcome::Outcome;
use crate::policy::{Param, PolicyConfig, PolicyKind};
use crate::request::{HashConfig, Request};
use crate::rng::Rng;
use crate::scorer::Scorer;
use crate::tokenize::{ModelTokenizer, TokenizerSet};

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub policy: String,
    pub hash: HashConfig,
    pub seed: u64,
    pub wait_queue_size: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { policy: "cost".into(), hash: HashConfig::default(), seed: 0, wait_queue_size: 0 }
    }
}

struct Ticket {
    slot: u32,
    gen: u32,
    /// Uncached prompt tokens still counted in the backend's pending work (0 once first token).
    pending_tokens: u64,
    pending: bool,
    /// Prefill work (tokens) ahead of this request when it was routed, for learning the rate.
    work_ahead: u64,
    ttft_s: Option<f64>,
    blocks: Vec<u64>,
    /// The backend's index version right after this ticket's chain was inserted (a guess), or the
    /// slot's claim epoch when it claimed (`claimed`).
    index_version: u64,
    /// The chain is a speculative claim on an event-fed backend (`router/kv.rs`), ended at release.
    claimed: bool,
}

struct Waiter {
    key: (Tier, u64),
    req: Request,
    session_key: Option<String>,
    exclude: Vec<String>,
}

struct Slot {
    gen: u32,
    backend: Option<Backend>,
}

/// What the pickers see of one candidate backend.
#[derive(Clone, Copy, Debug)]
struct Cand {
    slot: u32,
    cached_tokens: u64,
    queue: u64,
    /// Each scorer's value, indexed by `Scorer as usize`; only the policy's scorers and `ttft` are
    /// computed, the others stay NaN.
    raw: [f64; Scorer::COUNT],
}

impl Cand {
    fn get(&self, s: Scorer) -> f64 {
        self.raw[s as usize]
    }

    fn ttft(&self) -> f64 {
        self.get(Scorer::Ttft)
    }
}

/// The last decision's outcome and which candidate (of `Router::cands`) it chose, for the snapshot.
#[derive(Clone, Copy, Debug)]
struct LastDecision {
    outcome: Outcome,
    policy: PolicyKind,
    chosen: Option<usize>,
}

pub struct Router {
    hash: HashConfig,
    policy: PolicyConfig,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Insertion order of live backends: the order round-robin and tie-breaks walk.
    order: Vec<u32>,
    by_id: HashMap<String, u32>,
    rng: Rng,
    rr_next: u64,
    next_id: u64,
    tickets: U64Map<Ticket>,
    limits: [TierLimits; 3],
    tier_stats: [TierStats; 3],
    wait_queue_size: usize,
    wait_order: BTreeMap<(Tier, u64), u64>,
    waiters: U64Map<Waiter>,
    /// Per slot: the router's own guess (backends without KV events) or the in-flight requests'
    /// speculative chains (backends with them); see `router/kv.rs`.
    index: PrefixIndex,
    /// The blocks event-fed backends' engines confirm they hold.
    confirmed: PrefixIndex,
    events: Vec<Option<kv::EventSlot>>,
    branches: BTreeMap<&'static str, u64>,
    // Scratch buffers reused across routes.
    matches: Vec<(u32, u32)>,
    confirmed_matches: Vec<(u32, u32)>,
    slot_blocks: Vec<u32>,
    cands: Vec<Cand>,
    last: Option<LastDecision>,
    /// Models whose prompts are tokenized (token-exact block keys); the others hash bytes.
    tokenizers: TokenizerSet,
}

/// SplitMix64's finaliser: spreads (key ^ backend) for rendezvous hashing.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Result<Self> {
        Ok(Router {
            hash: cfg.hash,
            policy: PolicyConfig::new(&cfg.policy, &[])?,
            slots: Vec::new(),
            free_slots: Vec::new(),
            order: Vec::new(),
            by_id: HashMap::new(),
            rng: Rng::new(cfg.seed),
            rr_next: 0,
            next_id: 1,
            tickets: U64Map::default(),
            limits: DEFAULT_LIMITS,
            tier_stats: Default::default(),
            wait_queue_size: cfg.wait_queue_size,
            wait_order: BTreeMap::new(),
            waiters: U64Map::default(),
            index: PrefixIndex::new(),
            confirmed: PrefixIndex::new(),
            events: Vec::new(),
            branches: BTreeMap::new(),
            matches: Vec::new(),
            confirmed_matches: Vec::new(),
            slot_blocks: Vec::new(),
            cands: Vec::new(),
            last: None,
            tokenizers: TokenizerSet::default(),
        })
    }

    /// `None` removes the model's tokenizer: its requests hash bytes again.
    pub fn set_tokenizer(&mut self, model: &str, tokenizer: Option<std::sync::Arc<ModelTokenizer>>) {
        self.tokenizers.set(model, tokenizer);
    }

    /// For `request::parse_with`, outside the router's lock (a clone shares the map).
    pub fn tokenizers(&self) -> TokenizerSet {
        self.tokenizers.clone()
    }

    pub fn hash_config(&self) -> HashConfig {
        self.hash
    }

    fn backend(&self, slot: u32) -> &Backend {
        self.slots[slot as usize].backend.as_ref().expect("live slot")
    }

    fn backend_mut(&mut self, slot: u32) -> &mut Backend {
        self.slots[slot as usize].backend.as_mut().expect("live slot")
    }

    fn slot_of(&self, id: &str) -> Result<u32> {
        self.by_id.get(id).copied().ok_or_else(|| CoreError::UnknownBackend(id.to_owned()))
    }

    // ---- backends ----

    pub fn upsert_backend(&mut self, id: &str, u: &BackendUpdate) -> Result<()> {
        if id.is_empty() {
            return Err(CoreError::config("backend id must not be empty"));
        }
        if let Some(k) = u.kv_usage {
            if !(k.is_finite() && (0.0..=1.0).contains(&k)) {
                return Err(CoreError::config(format!("kv_usage must be a fraction in 0..=1, got {k}")));
            }
        }
        let slot = match self.by_id.get(id) {
            Some(&s) => s,
            None => {
                let s = match self.free_slots.pop() {
                    Some(s) => s,
                    None => {
                        self.slots.push(Slot { gen: 0, backend: None });
                        (self.slots.len() - 1) as u32
                    }
                };
                self.slots[s as usize].backend = Some(Backend::new(id));
                self.by_id.insert(id.to_owned(), s);
                self.order.push(s);
                self.index.add_backend(s, DEFAULT_CAPACITY_BLOCKS);
                // The engine evicts and says so: no LRU bound of our own (kvview bounds its size).
                self.confirmed.add_backend(s, u64::MAX);
                s
            }
        };
        let block_tokens = self.hash.block_tokens;
        let b = self.backend_mut(slot);
        b.apply(u);
        let cap = match b.capacity_blocks(block_tokens) {
            0 => DEFAULT_CAPACITY_BLOCKS,
            c => c,
        };
        if cap != self.index.capacity(slot) {
            self.index.set_capacity(slot, cap);
        }
        Ok(())
    }

    /// The backend restarted: its KV cache is empty. Learned rates survive (same hardware).
    pub fn reset_backend(&mut self, id: &str) -> Result<()> {
        let slot = self.slot_of(id)?;
        // Event-fed: the engine's blocks are gone, and so are the requests running there; the view
        // must go too, or a later block stored on top of one of its blocks would enter the
        // confirmed index without its parent.
        if let Some(Some(es)) = self.events.get_mut(slot as usize) {
            es.view.clear(slot, &mut self.confirmed);
            es.end_claims();
        }
        self.index.clear(slot);
        Ok(())
    }

    /// Outstanding tickets on a removed backend stay valid: releasing them is a no-op for it.
    pub fn remove_backend(&mut self, id: &str) -> Result<()> {
        let slot = self.slot_of(id)?;
        self.by_id.remove(id);
        self.order.retain(|&s| s != slot);
        self.index.remove_backend(slot);
        self.drop_events(slot);
        self.confirmed.remove_backend(slot);
        // The last decision's candidates name slots: one of them may be reused.
        self.cands.clear();
        self.last = None;
        let s = &mut self.slots[slot as usize];
        s.backend = None;
        s.gen = s.gen.wrapping_add(1);
        self.free_slots.push(slot);
        Ok(())
    }

    pub fn backend_ids(&self) -> Vec<String> {
        self.order.iter().map(|&s| self.backend(s).id.clone()).collect()
    }

    pub fn in_flight(&self, id: &str) -> Result<u64> {
        Ok(self.backend(self.slot_of(id)?).in_flight)
    }

    // ---- configuration ----

    pub fn set_policy(&mut self, name: &str, weights: &[(String, f64)]) -> Result<()> {
        self.policy = PolicyConfig::new(name, weights)?;
        Ok(())
    }

    pub fn policy(&self) -> (&'static str, Vec<(&'static str, f64)>) {
        (self.policy.kind.as_str(), self.policy.weights_list())
    }

    pub fn set_admission(&mut self, tier: Tier, max_queue: Option<u64>, max_wait_ms: Option<f64>) -> Result<()> {
        if let Some(w) = max_wait_ms {
            if !(w.is_finite() && w >= 0.0) {
                return Err(CoreError::config(format!("max_wait_ms must be a non-negative number, got {w}")));
            }
        }
        self.limits[tier as usize] = TierLimits { max_queue, max_wait_ms };
        Ok(())
    }

    pub fn admission(&self, tier: Tier) -> TierLimits {
        self.limits[tier as usize]
    }

    // ---- outcomes ----

    fn live_ticket_backend(&mut self, slot: u32, gen: u32) -> Option<&mut Backend> {
        let s = &mut self.slots[slot as usize];
        if s.gen == gen {
            s.backend.as_mut()
        } else {
            None
        }
    }

    pub fn first_token(&mut self, ticket: u64, ttft_s: f64) -> Result<()> {
        let alpha = self.policy.params[Param::EwmaAlpha];
        let t = self.tickets.get_mut(&ticket).ok_or(CoreError::UnknownTicket(ticket))?;
        if !(t.pending && ttft_s.is_finite() && ttft_s >= 0.0) {
            return Ok(());
        }
        t.pending = false;
        t.ttft_s = Some(ttft_s);
        let (slot, gen, tokens, ahead) = (t.slot, t.gen, t.pending_tokens, t.work_ahead);
        t.pending_tokens = 0;
        if let Some(b) = self.live_ticket_backend(slot, gen) {
            b.pending -= 1;
            b.pending_tokens -= tokens;
            b.learned.observe_ttft(ttft_s, ahead, tokens, alpha);
        }
        Ok(())
    }

    /// Returns the wait ids to wake (call `resume` on each), in (priority, age) order.
    pub fn release(
        &mut self,
        ticket: u64,
        ok: bool,
        prompt_tokens: u64,
        cached_tokens: u64,
        completion_tokens: u64,
        latency_s: f64,
    ) -> Result<Vec<u64>> {
        let alpha = self.policy.params[Param::EwmaAlpha];
        let t = self.tickets.remove(&ticket).ok_or(CoreError::UnknownTicket(ticket))?;
        let mut refresh = false;
        if let Some(b) = self.live_ticket_backend(t.slot, t.gen) {
            b.in_flight -= 1;
            if t.pending {
                b.pending -= 1;
                b.pending_tokens -= t.pending_tokens;
            }
            if ok {
                b.completed += 1;
                b.reported_prompt_tokens += prompt_tokens;
                b.reported_cached_tokens += cached_tokens;
                let unqueued = t.work_ahead == 0;
                b.learned.observe_release(
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                    latency_s,
                    t.ttft_s,
                    unqueued,
                    alpha,
                );
                refresh = true;
            } else {
                b.failed += 1;
            }
        }
        let live = self.slots[t.slot as usize].gen == t.gen;
        if t.claimed {
            if live {
                self.unclaim(t.slot, &t.blocks, t.index_version);
            }
        } else if refresh && !self.is_event_fed(t.slot) && self.index.version(t.slot) != t.index_version {
            // (Routed before the backend's events started: its slot now holds claims only.)
            // The engine just used these blocks: they are its most recently used. If nothing touched
            // this backend's index since the route inserted them, they already are (skip the work).
            self.index.insert(t.slot, &t.blocks);
        }
        Ok(self.wakeable(1))
    }
}
