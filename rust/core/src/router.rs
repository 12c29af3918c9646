//! The router: backends, tickets, policies, admission, wait queue. Every per-request decision
//! happens here; the binding only converts values.
//!
//! A decision is filter (serves the model, healthy, not draining, circuit closed, not excluded)
//! → features per candidate (cached prefix, queue, predicted TTFT) → policy pick → admission.
//! Cost per route: O(prompt blocks) for the prefix match plus O(candidates) for scoring; never
//! O(candidates × prompt blocks).
use std::collections::{BTreeMap, HashMap};

use xxhash_rust::xxh3::xxh3_64;

use crate::backend::{Backend, BackendUpdate};
use crate::error::{CoreError, Result};
use crate::fasthash::U64Map;
use crate::index::{PrefixIndex, DEFAULT_CAPACITY_BLOCKS};
use crate::policy::{PolicyConfig, PolicyKind, Weights};
use crate::request::{HashConfig, Request};
use crate::rng::Rng;
use crate::admission::{Tier, TierLimits, TierStats, DEFAULT_LIMITS};
use crate::outcome::{Branch, Decision, Outcome, Queued, Reason, Rejected, Routed};
use crate::snapshot::{kv, Snap};

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
    /// The backend's index version right after this ticket's chain was inserted.
    index_version: u64,
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

/// What the policies see of one candidate backend.
#[derive(Clone, Copy, Debug)]
struct Cand {
    slot: u32,
    cached_tokens: u64,
    queue: u64,
    ttft: f64,
    /// What `cost` minimises: ttft plus the delay this request's prefill imposes on others and
    /// the fleet prefill capacity spent recomputing a prefix another candidate holds.
    score: f64,
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
    index: PrefixIndex,
    branches: BTreeMap<&'static str, u64>,
    // Scratch buffers reused across routes.
    matches: Vec<(u32, u32)>,
    slot_blocks: Vec<u32>,
    cands: Vec<Cand>,
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
            branches: BTreeMap::new(),
            matches: Vec::new(),
            slot_blocks: Vec::new(),
            cands: Vec::new(),
        })
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
        self.index.clear(slot);
        Ok(())
    }

    /// Outstanding tickets on a removed backend stay valid: releasing them is a no-op for it.
    pub fn remove_backend(&mut self, id: &str) -> Result<()> {
        let slot = self.slot_of(id)?;
        self.by_id.remove(id);
        self.order.retain(|&s| s != slot);
        self.index.remove_backend(slot);
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
        (self.policy.kind.name(), self.policy.weights_list())
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

    // ---- routing ----

    pub fn route(&mut self, req: Request, tier: Tier, session_key: Option<&str>, exclude: &[&str]) -> Decision {
        self.decide(req, tier, session_key, exclude, None)
    }

    pub fn resume(&mut self, wait_id: u64) -> Result<Decision> {
        let w = self.waiters.remove(&wait_id).ok_or(CoreError::UnknownTicket(wait_id))?;
        self.wait_order.remove(&w.key);
        let exclude: Vec<&str> = w.exclude.iter().map(String::as_str).collect();
        let session = w.session_key.clone();
        Ok(self.decide(w.req, w.key.0, session.as_deref(), &exclude, Some((wait_id, w.key.1))))
    }

    pub fn cancel_wait(&mut self, wait_id: u64) -> Result<()> {
        let w = self.waiters.remove(&wait_id).ok_or(CoreError::UnknownTicket(wait_id))?;
        self.wait_order.remove(&w.key);
        Ok(())
    }

    fn count(&mut self, outcome: Outcome) {
        *self.branches.entry(outcome.as_str()).or_default() += 1;
    }

    fn reject(&mut self, reason: Reason, tier: Tier, req: &Request, retry: f64, message: String) -> Decision {
        self.count(Outcome::Reason(reason));
        Decision::Rejected(Rejected { reason, tier, model: req.model.clone(), retry_after_s: retry, message })
    }

    /// Predicted TTFT on `b` for a request with `uncached` tokens to prefill (see docs/routing.md).
    /// The Python reference (`kvroute.reference`) repeats this arithmetic operation for operation.
    pub fn predict(w: &Weights, b: &Backend, uncached: u64) -> f64 {
        let l = &b.learned;
        let rate = l.prefill_rate;
        // Our own tickets count as they are now; the engine's metrics only add what is not ours.
        let work_ahead = b.pending_tokens as f64 + b.foreign_waiting as f64 * l.mean_uncached;
        // A waiting queue means the engine's step token budget is taken by prefill (vLLM admits
        // waiting requests while the budget lasts), not that its batch is full: the queue is the
        // prefill work ahead, already counted above.
        let queue_s = work_ahead / rate;
        let decoding = (b.decoding() + b.foreign_running) as f64;
        let pressure = ((b.kv_usage - w.kv_knee) / (1.0 - w.kv_knee)).clamp(0.0, 1.0);
        l.overhead_s
            + w.queue_weight * queue_s
            + w.prefill_weight * (uncached as f64 / rate)
            + w.decode_weight * decoding
            + w.kv_weight * pressure
    }

    fn decide(
        &mut self,
        req: Request,
        tier: Tier,
        session_key: Option<&str>,
        exclude: &[&str],
        resumed: Option<(u64, u64)>,
    ) -> Decision {
        // Filter.
        if self.order.is_empty() {
            return self.reject(Reason::NoBackend, tier, &req, 1.0, "no backends are configured".into());
        }
        let mut serving = 0usize;
        let mut cands = std::mem::take(&mut self.cands);
        cands.clear();
        for &s in &self.order {
            let b = self.backend(s);
            if !b.serves(&req.model) {
                continue;
            }
            serving += 1;
            if b.usable() && !exclude.contains(&b.id.as_str()) {
                cands.push(Cand { slot: s, cached_tokens: 0, queue: b.queue_depth(), ttft: 0.0, score: 0.0 });
            }
        }
        if serving == 0 {
            self.cands = cands;
            let msg = format!("no backend serves model {:?}", req.model);
            return self.reject(Reason::UnknownModel, tier, &req, 0.0, msg);
        }
        if cands.is_empty() {
            self.cands = cands;
            let msg = format!("no healthy backend for model {:?}", req.model);
            return self.reject(Reason::NoBackend, tier, &req, 1.0, msg);
        }

        // Features: cached prefix and predicted TTFT for every candidate.
        let mut matches = std::mem::take(&mut self.matches);
        self.index.longest_prefix(&req.blocks, &mut matches);
        // Matches land in a slot-indexed array first: a linear search per candidate would make
        // this O(candidates x holders).
        self.slot_blocks.resize(self.slots.len(), 0);
        for &(slot, n) in &matches {
            self.slot_blocks[slot as usize] = n;
        }
        let mut best_cached = 0u64;
        for c in cands.iter_mut() {
            let n = self.slot_blocks[c.slot as usize];
            c.cached_tokens = (n as u64 * req.block_tokens as u64).min(req.prompt_tokens);
            best_cached = best_cached.max(c.cached_tokens);
        }
        // Only `cost` reads the score (admission reads the TTFT of every policy), and only a prompt
        // nobody holds reads how much each candidate holds.
        let scored = matches!(self.policy.kind, PolicyKind::Cost);
        let least_held = if scored && best_cached == 0 {
            cands.iter().map(|c| self.index.len(c.slot)).min().unwrap_or(0)
        } else {
            0
        };
        for c in cands.iter_mut() {
            let b = self.backend(c.slot);
            let uncached = req.prompt_tokens - c.cached_tokens;
            let w = &self.policy.weights;
            c.ttft = Self::predict(w, b, uncached);
            if !scored {
                continue;
            }
            // The prefill also delays the requests still waiting for their first token there
            // (chunked prefill shares each step): a greedy per-request choice ignores that and
            // moves conversations off their cache too eagerly.
            let rate = b.learned.prefill_rate;
            let externality = w.externality_weight * b.pending as f64 * (uncached as f64 / rate);
            let placement = if best_cached > 0 {
                // Recomputing what another candidate already holds spends fleet prefill capacity
                // that some later request pays for; the queue it avoids is a transient, estimated
                // from lagging metrics.
                w.recompute_weight * ((best_cached - c.cached_tokens) as f64 / rate)
            } else {
                // Where a new prompt lands decides where its reuse will queue: requests follow
                // their cache, and leaving it costs the recompute above. Sending prompts nobody
                // holds to the backend holding the least keeps that future traffic even; the queue
                // right now is a transient (and partly a lagging estimate), the content is the
                // router's own.
                let excess = (self.index.len(c.slot) - least_held) * req.block_tokens as u64;
                w.content_weight * (excess as f64 / rate)
            };
            c.score = c.ttft + externality + placement;
        }
        for &(slot, _) in &matches {
            self.slot_blocks[slot as usize] = 0;
        }
        self.matches = matches;

        // Waiters of this model with equal or higher priority go first.
        let queue_ahead = self.wait_queue_size > 0
            && self.wait_order.iter().any(|(&(t, seq), id)| {
                t <= tier
                    && resumed.is_none_or(|(_, my_seq)| (t, seq) < (tier, my_seq))
                    && self.waiters[id].req.model == req.model
            });

        // Pick, then admit.
        let (mut pick, mut branch) = self.pick(&req, &cands, session_key, best_cached);
        let limits = self.limits[tier as usize];
        let room = |c: &Cand| limits.room(c.queue, c.ttft);
        if !room(&cands[pick]) || queue_ahead {
            let spill = if queue_ahead {
                None
            } else {
                // Some other backend may still have room for this tier: use the soonest of those.
                let mut best: Option<usize> = None;
                for (i, c) in cands.iter().enumerate() {
                    if room(c) && best.is_none_or(|b| c.ttft < cands[b].ttft) {
                        best = Some(i);
                    }
                }
                best
            };
            match spill {
                Some(i) => {
                    pick = i;
                    branch = Branch::AdmissionSpill;
                }
                None => {
                    let retry = cands.iter().map(|c| c.ttft).fold(f64::INFINITY, f64::min).clamp(0.5, 60.0);
                    let retry = (retry * 10.0).ceil() / 10.0;
                    self.cands = cands;
                    return self.hold_or_shed(req, tier, session_key, exclude, resumed, retry);
                }
            }
        }
        let c = cands[pick];
        self.cands = cands;
        self.tier_stats[tier as usize].admitted += 1;
        self.count(Outcome::Branch(branch));
        Decision::Routed(self.commit(req, c, branch))
    }

    fn hold_or_shed(
        &mut self,
        req: Request,
        tier: Tier,
        session_key: Option<&str>,
        exclude: &[&str],
        resumed: Option<(u64, u64)>,
        retry: f64,
    ) -> Decision {
        if self.wait_queue_size == 0 {
            self.tier_stats[tier as usize].shed += 1;
            let msg = format!("{} priority traffic is over its limit on every backend", tier.name());
            return self.reject(Reason::Shed, tier, &req, retry, msg);
        }
        let (id, seq) = match resumed {
            Some(r) => r,
            None => {
                if self.waiters.len() >= self.wait_queue_size {
                    self.tier_stats[tier as usize].queue_full += 1;
                    return self.reject(Reason::QueueFull, tier, &req, retry, "the router's wait queue is full".into());
                }
                let id = self.next_id;
                self.next_id += 1;
                self.tier_stats[tier as usize].queued += 1;
                (id, id)
            }
        };
        let key = (tier, seq);
        let position = self.wait_order.range(..key).count() as u64;
        let model = req.model.clone();
        self.wait_order.insert(key, id);
        self.waiters.insert(
            id,
            Waiter {
                key,
                req,
                session_key: session_key.map(str::to_owned),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        );
        self.count(Outcome::Queued);
        Decision::Queued(Queued { wait_id: id, tier, model, position })
    }

    fn commit(&mut self, req: Request, c: Cand, branch: Branch) -> Routed {
        let ticket = self.next_id;
        self.next_id += 1;
        let uncached = req.prompt_tokens - c.cached_tokens;
        let gen = self.slots[c.slot as usize].gen;
        let b = self.backend_mut(c.slot);
        let work_ahead = b.pending_tokens;
        b.in_flight += 1;
        b.pending += 1;
        b.pending_tokens += uncached;
        b.routed += 1;
        b.predicted_cached_tokens += c.cached_tokens;
        let backend_id = b.id.clone();
        let index_version = self.index.insert(c.slot, &req.blocks);
        let Request { model, stream, max_tokens, prompt_tokens, blocks, .. } = req;
        let t = Ticket {
            slot: c.slot,
            gen,
            pending_tokens: uncached,
            pending: true,
            work_ahead,
            ttft_s: None,
            blocks,
            index_version,
        };
        self.tickets.insert(ticket, t);
        Routed {
            ticket,
            backend_id,
            branch,
            model,
            stream,
            max_tokens,
            prompt_tokens,
            cached_tokens: c.cached_tokens,
            predicted_ttft_s: c.ttft,
        }
    }

    /// Index of the chosen candidate and the branch that chose it.
    fn pick(&mut self, req: &Request, cands: &[Cand], session_key: Option<&str>, best_cached: u64) -> (usize, Branch) {
        let n = cands.len();
        match self.policy.kind {
            PolicyKind::RoundRobin => {
                let i = (self.rr_next % n as u64) as usize;
                self.rr_next = self.rr_next.wrapping_add(1);
                (i, Branch::RoundRobin)
            }
            PolicyKind::Random => (self.rng.below(n), Branch::Random),
            PolicyKind::LeastInflight => (self.argmin_tie(cands, |b, _| b.in_flight as f64, 0.0), Branch::LeastInflight),
            PolicyKind::PowerOfTwo => {
                if n == 1 {
                    return (0, Branch::PowerOfTwo);
                }
                let i = self.rng.below(n);
                let mut j = self.rng.below(n - 1);
                if j >= i {
                    j += 1;
                }
                let (bi, bj) = (self.backend(cands[i].slot).in_flight, self.backend(cands[j].slot).in_flight);
                (if bj < bi { j } else { i }, Branch::PowerOfTwo)
            }
            PolicyKind::LeastLoad => (self.least_load(cands), Branch::LeastLoad),
            PolicyKind::PrefixHash => {
                let i = self.rendezvous(req.system_hash, cands);
                let b = self.backend(cands[i].slot);
                if (b.queue_depth() as f64) < self.policy.weights.queue_threshold {
                    (i, Branch::PrefixHashAffinity)
                } else {
                    (self.least_load(cands), Branch::PrefixHashOverflow)
                }
            }
            PolicyKind::Session => match session_key {
                None => (self.argmin_tie(cands, |b, _| b.in_flight as f64, 0.0), Branch::SessionNoKey),
                Some(k) => {
                    let key = xxh3_64(k.as_bytes());
                    let total: u64 = cands.iter().map(|c| self.backend(c.slot).in_flight).sum::<u64>() + 1;
                    let cap = (self.policy.weights.load_factor * total as f64 / n as f64).ceil() as u64;
                    let mut ranked: Vec<(u64, usize)> =
                        cands.iter().enumerate().map(|(i, c)| (mix64(key ^ self.backend(c.slot).id_hash), i)).collect();
                    ranked.sort_unstable_by(|a, b| b.cmp(a));
                    for (rank, &(_, i)) in ranked.iter().enumerate() {
                        if self.backend(cands[i].slot).in_flight < cap {
                            return (i, if rank == 0 { Branch::SessionSticky } else { Branch::SessionSpill });
                        }
                    }
                    (ranked[0].1, Branch::SessionSticky)
                }
            },
            PolicyKind::Cost => {
                let i = self.cost_pick(cands);
                let branch = if best_cached == 0 {
                    Branch::CostCold
                } else if cands[i].cached_tokens == best_cached {
                    Branch::CostCacheAffinity
                } else {
                    Branch::CostLoadSpread
                };
                (i, branch)
            }
        }
    }

    /// Minimum predicted TTFT. Among near-ties, those holding the most of the prompt win: the
    /// TTFT difference is negligible, but keeping a conversation where its prefix lives pays on
    /// every later turn (the model itself is myopic). Remaining ties are broken at random.
    fn cost_pick(&mut self, cands: &[Cand]) -> usize {
        let min = cands.iter().map(|c| c.score).fold(f64::INFINITY, f64::min);
        let limit = min + min.abs() * self.policy.weights.tie_tolerance;
        let near = |c: &&Cand| c.score <= limit;
        let most = cands.iter().filter(near).map(|c| c.cached_tokens).max().unwrap_or(0);
        let best = |c: &&Cand| c.score <= limit && c.cached_tokens == most;
        let ties = cands.iter().filter(best).count();
        let k = if ties == 1 { 0 } else { self.rng.below(ties) };
        cands.iter().enumerate().filter(|(_, c)| best(c)).nth(k).map_or(0, |(i, _)| i)
    }

    fn least_load(&mut self, cands: &[Cand]) -> usize {
        self.argmin_tie(cands, |b, _| (b.waiting + b.in_flight + 1) as f64 * b.learned.latency_ewma, 0.0)
    }

    /// Highest mix64(key ^ backend) wins: stable under fleet changes (only keys of a removed
    /// backend move), and the same in the Python reference.
    fn rendezvous(&self, key: u64, cands: &[Cand]) -> usize {
        let mut best = (0u64, 0usize);
        for (i, c) in cands.iter().enumerate() {
            let s = mix64(key ^ self.backend(c.slot).id_hash);
            if i == 0 || s > best.0 {
                best = (s, i);
            }
        }
        best.1
    }

    /// Minimum score; candidates within `tol` (relative) of it are near-ties, broken at random so
    /// equal backends share load instead of the first one taking everything. The RNG is drawn
    /// only when there is a tie, which keeps the Python reference in lockstep.
    fn argmin_tie(&mut self, cands: &[Cand], score: impl Fn(&Backend, &Cand) -> f64, tol: f64) -> usize {
        // Two passes over the scores instead of collecting them: no allocation per decision.
        let slots = &self.slots;
        let score_of = |c: &Cand| score(slots[c.slot as usize].backend.as_ref().expect("live slot"), c);
        let min = cands.iter().map(score_of).fold(f64::INFINITY, f64::min);
        let limit = min + min.abs() * tol;
        let ties = cands.iter().filter(|c| score_of(c) <= limit).count();
        let k = if ties == 1 { 0 } else { self.rng.below(ties) };
        cands.iter().enumerate().filter(|(_, c)| score_of(c) <= limit).nth(k).map_or(0, |(i, _)| i)
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
        let alpha = self.policy.weights.ewma_alpha;
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
        let alpha = self.policy.weights.ewma_alpha;
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
                b.learned.observe_release(prompt_tokens, cached_tokens, completion_tokens, latency_s, t.ttft_s, alpha);
                refresh = true;
            } else {
                b.failed += 1;
            }
        }
        // The engine just used these blocks: they are its most recently used. If nothing touched
        // this backend's index since the route inserted them, they already are (skip the work).
        if refresh && self.index.version(t.slot) != t.index_version {
            self.index.insert(t.slot, &t.blocks);
        }
        Ok(self.wakeable(1))
    }

    /// Up to `limit` waiters (in priority, age order) that some backend now has room for, or whose
    /// model lost all its usable backends (resume will reject them rather than leave them hanging).
    pub fn wakeable(&self, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for (&(tier, _), &id) in &self.wait_order {
            if out.len() >= limit {
                break;
            }
            let w = &self.waiters[&id];
            let limits = self.limits[tier as usize];
            let mut any = false;
            let mut room = false;
            for &s in &self.order {
                let b = self.backend(s);
                if !b.serves(&w.req.model) || !b.usable() || w.exclude.contains(&b.id) {
                    continue;
                }
                any = true;
                let ttft = Self::predict(&self.policy.weights, b, w.req.prompt_tokens);
                if limits.room(b.queue_depth(), ttft) {
                    room = true;
                    break;
                }
            }
            if room || !any {
                out.push(id);
            }
        }
        out
    }

    pub fn waiting_count(&self) -> usize {
        self.waiters.len()
    }

    // ---- introspection ----

    pub fn snapshot(&self) -> Snap {
        let backends = self
            .order
            .iter()
            .map(|&s| {
                let b = self.backend(s);
                let l = &b.learned;
                Snap::Map(vec![
                    kv("id", b.id.as_str()),
                    kv("models", Snap::List(b.models.iter().map(|m| Snap::from(m.as_str())).collect())),
                    kv("healthy", b.healthy),
                    kv("draining", b.draining),
                    kv("circuit_open", b.circuit_open),
                    kv("waiting", b.waiting),
                    kv("running", b.running),
                    kv("kv_usage", b.kv_usage),
                    kv("num_gpu_blocks", b.num_gpu_blocks),
                    kv("block_size", b.block_size),
                    kv("in_flight", b.in_flight),
                    kv("pending", b.pending),
                    kv("pending_tokens", b.pending_tokens),
                    kv("queue_depth", b.queue_depth()),
                    kv("predicted_ttft_s", Self::predict(&self.policy.weights, b, 0)),
                    kv(
                        "learned",
                        Snap::Map(vec![
                            kv("prefill_tokens_per_s", l.prefill_rate),
                            kv("decode_tokens_per_s", l.decode_rate),
                            kv("ttft_ewma_s", l.ttft_ewma),
                            kv("latency_ewma_s", l.latency_ewma),
                            kv("mean_uncached_tokens", l.mean_uncached),
                            kv("ttft_samples", l.ttft_samples),
                            kv("latency_samples", l.latency_samples),
                        ]),
                    ),
                    kv(
                        "index",
                        Snap::Map(vec![kv("blocks", self.index.len(s)), kv("capacity_blocks", self.index.capacity(s))]),
                    ),
                    kv(
                        "hits",
                        Snap::Map(vec![
                            kv("predicted_cached_tokens", b.predicted_cached_tokens),
                            kv("reported_cached_tokens", b.reported_cached_tokens),
                            kv("reported_prompt_tokens", b.reported_prompt_tokens),
                        ]),
                    ),
                    kv("routed", b.routed),
                    kv("completed", b.completed),
                    kv("failed", b.failed),
                ])
            })
            .collect();
        let tiers = Tier::ALL
            .iter()
            .map(|&t| {
                let st = self.tier_stats[t as usize];
                let lim = self.limits[t as usize];
                (
                    t.name().to_owned(),
                    Snap::Map(vec![
                        kv("admitted", st.admitted),
                        kv("shed", st.shed),
                        kv("queued", st.queued),
                        kv("queue_full", st.queue_full),
                        kv("max_queue", lim.max_queue),
                        kv("max_wait_ms", lim.max_wait_ms),
                    ]),
                )
            })
            .collect();
        let (pname, pweights) = self.policy();
        let pairs = self.index.pairs();
        Snap::Map(vec![
            kv(
                "policy",
                Snap::Map(vec![
                    kv("name", pname),
                    kv("weights", Snap::Map(pweights.into_iter().map(|(k, v)| kv(k, v)).collect())),
                ]),
            ),
            kv("block_tokens", self.hash.block_tokens as u64),
            kv("bytes_per_token", self.hash.bytes_per_token),
            kv("backends", Snap::List(backends)),
            kv("tiers", Snap::Map(tiers)),
            kv("branches", Snap::Map(self.branches.iter().map(|(k, v)| kv(k, *v)).collect())),
            kv("in_flight", self.tickets.len()),
            kv("wait_queue", Snap::Map(vec![kv("size", self.wait_queue_size), kv("waiting", self.waiters.len())])),
            kv(
                "index",
                Snap::Map(vec![
                    kv("pairs", pairs),
                    kv("bytes", self.index.bytes()),
                    kv("bytes_per_block", if pairs == 0 { 0.0 } else { self.index.bytes() as f64 / pairs as f64 }),
                ]),
            ),
        ])
    }
}
