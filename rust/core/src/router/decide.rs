//! One decision: filter → score → pick → admit.
//!
//! - filter: the backends that serve the model and may take a request (healthy, not draining,
//!   circuit closed, not excluded), or the reason there are none;
//! - score: each candidate's cached prefix, its predicted TTFT and the policy's scorers;
//! - pick: the policy's picker chooses one candidate (`pick.rs`);
//! - admit: the tier's limits accept the pick, spill to another candidate with room, or hold the
//!   request in the wait queue / shed it (`waitq.rs`); an admitted request gets a ticket.
use super::{Cand, LastDecision, Router, Ticket};
use crate::admission::Tier;
use crate::outcome::{Branch, Decision, Outcome, Reason, Rejected, Routed};
use crate::policy::{Param, PolicyKind};
use crate::request::Request;
use crate::scorer::{self, Scorer};

/// Why the filter left no candidate, with the retry hint and message the rejection carries.
struct NoCandidate(Reason, f64, String);

/// The waiting request this decision resumes: its wait id and its place in the queue.
pub(super) type Resumed = Option<(u64, u64)>;

impl Router {
    pub fn route(&mut self, req: Request, tier: Tier, session_key: Option<&str>, exclude: &[&str]) -> Decision {
        self.decide(req, tier, session_key, exclude, None)
    }

    pub(super) fn decide(
        &mut self,
        req: Request,
        tier: Tier,
        session_key: Option<&str>,
        exclude: &[&str],
        resumed: Resumed,
    ) -> Decision {
        // The candidate list is a scratch buffer kept across decisions (and read by the snapshot).
        let mut cands = std::mem::take(&mut self.cands);
        let decision = match self.filter(&req, exclude, &mut cands) {
            Err(NoCandidate(reason, retry, message)) => self.reject(reason, tier, &req, retry, message),
            Ok(()) => {
                let best_cached = self.score(&req, &mut cands);
                let (pick, branch) = self.pick(&req, &cands, session_key, best_cached);
                self.admit(req, tier, &cands, pick, branch, session_key, exclude, resumed)
            }
        };
        self.cands = cands;
        decision
    }

    fn filter(&self, req: &Request, exclude: &[&str], cands: &mut Vec<Cand>) -> Result<(), NoCandidate> {
        cands.clear();
        if self.order.is_empty() {
            return Err(NoCandidate(Reason::NoBackend, 1.0, "no backends are configured".into()));
        }
        let mut serving = 0usize;
        for &s in &self.order {
            let b = self.backend(s);
            if !b.serves(&req.model) {
                continue;
            }
            serving += 1;
            if b.usable() && !exclude.contains(&b.id.as_str()) {
                cands.push(Cand { slot: s, cached_tokens: 0, queue: b.queue_depth(), raw: [f64::NAN; Scorer::COUNT] });
            }
        }
        if serving == 0 {
            return Err(NoCandidate(Reason::UnknownModel, 0.0, format!("no backend serves model {:?}", req.model)));
        }
        if cands.is_empty() {
            return Err(NoCandidate(Reason::NoBackend, 1.0, format!("no healthy backend for model {:?}", req.model)));
        }
        Ok(())
    }

    /// Fills every candidate's cached prefix and scorer values; returns the most any holds.
    fn score(&mut self, req: &Request, cands: &mut [Cand]) -> u64 {
        let mut matches = std::mem::take(&mut self.matches);
        // Matches land in a slot-indexed array first: a linear search per candidate would make
        // this O(candidates x holders). An event-fed backend is in both indexes (confirmed and
        // speculative): it is credited with the longer match.
        self.slot_blocks.resize(self.slots.len(), 0);
        self.index.longest_prefix(&req.blocks, &mut matches);
        for &(slot, n) in &matches {
            self.slot_blocks[slot as usize] = n;
        }
        if !self.events.is_empty() {
            let mut confirmed = std::mem::take(&mut self.confirmed_matches);
            self.confirmed.longest_prefix(&req.blocks, &mut confirmed);
            for &(slot, n) in &confirmed {
                let b = &mut self.slot_blocks[slot as usize];
                *b = (*b).max(n);
            }
            matches.extend_from_slice(&confirmed);
            self.confirmed_matches = confirmed;
        }
        let mut best_cached = 0u64;
        // vLLM never serves a prompt's last token from cache (it must compute that token's
        // logits), so at most the full blocks before it count: the engine's own
        // `prompt_tokens_details.cached_tokens`, to the block.
        let bt = req.block_tokens as u64;
        let cacheable_blocks = req.prompt_tokens.saturating_sub(1) / bt.max(1);
        for c in cands.iter_mut() {
            let n = self.slot_blocks[c.slot as usize] as u64;
            c.cached_tokens = n.min(cacheable_blocks) * bt;
            best_cached = best_cached.max(c.cached_tokens);
        }
        for &(slot, _) in &matches {
            self.slot_blocks[slot as usize] = 0;
        }
        self.matches = matches;

        // Every decision is an arrival: it samples each candidate's prefill queue, so the means
        // are time averages (PASTA) that the externality reads as utilisation.
        let load_alpha = self.policy.params[Param::LoadAlpha];
        for c in cands.iter() {
            self.backend_mut(c.slot).sample_load(load_alpha);
        }
        let kind = self.policy.kind;
        let wants = |s: Scorer| kind.scorers().contains(&s) && self.scorer_weighs(s);
        let (cost, prefix, load, inflight) =
            (wants(Scorer::Cost), wants(Scorer::Prefix), wants(Scorer::LeastLoad), wants(Scorer::LeastInflight));
        // Only a prompt nobody holds reads how much each candidate holds.
        let least_held =
            if cost && best_cached == 0 { cands.iter().map(|c| self.held_blocks(c.slot)).min().unwrap_or(0) } else { 0 };
        let p = &self.policy.params;
        for c in cands.iter_mut() {
            let b = self.backend(c.slot);
            let uncached = req.prompt_tokens - c.cached_tokens;
            let ttft = scorer::ttft(p, b, uncached);
            c.raw[Scorer::Ttft as usize] = ttft;
            if cost {
                let externality = scorer::externality(b, uncached);
                let excess_held =
                    (best_cached == 0).then(|| (self.held_blocks(c.slot) - least_held) * req.block_tokens as u64);
                c.raw[Scorer::Externality as usize] = externality;
                c.raw[Scorer::Cost as usize] = scorer::cost(p, b, ttft, externality, excess_held);
            }
            if prefix {
                c.raw[Scorer::Prefix as usize] = scorer::prefix(c.cached_tokens, req.prompt_tokens);
            }
            if load {
                c.raw[Scorer::LeastLoad as usize] = scorer::least_load(b);
            }
            if inflight {
                c.raw[Scorer::LeastInflight as usize] = scorer::least_inflight(b);
            }
        }
        best_cached
    }

    /// Whether the policy gives this scorer any weight (only `weighted` can give it none).
    pub(super) fn scorer_weighs(&self, s: Scorer) -> bool {
        self.policy.kind != PolicyKind::Weighted || s.weight_param().is_some_and(|w| self.policy.params[w] > 0.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        req: Request,
        tier: Tier,
        cands: &[Cand],
        mut pick: usize,
        mut branch: Branch,
        session_key: Option<&str>,
        exclude: &[&str],
        resumed: Resumed,
    ) -> Decision {
        let limits = self.limits[tier as usize];
        let room = |c: &Cand| limits.room(c.queue, c.ttft());
        let queue_ahead = self.queue_ahead(&req.model, tier, resumed);
        if !room(&cands[pick]) || queue_ahead {
            // Some other backend may still have room for this tier: use the soonest of those.
            let spill = if queue_ahead {
                None
            } else {
                let mut best: Option<usize> = None;
                for (i, c) in cands.iter().enumerate() {
                    if room(c) && best.is_none_or(|b| c.ttft() < cands[b].ttft()) {
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
                    let retry = cands.iter().map(Cand::ttft).fold(f64::INFINITY, f64::min).clamp(0.5, 60.0);
                    let retry = (retry * 10.0).ceil() / 10.0;
                    return self.hold_or_shed(req, tier, session_key, exclude, resumed, retry);
                }
            }
        }
        self.tier_stats[tier as usize].admitted += 1;
        self.count(Outcome::Branch(branch), Some(pick));
        Decision::Routed(self.commit(req, cands[pick], branch))
    }

    pub(super) fn count(&mut self, outcome: Outcome, chosen: Option<usize>) {
        *self.branches.entry(outcome.as_str()).or_default() += 1;
        self.last = Some(LastDecision { outcome, policy: self.policy.kind, chosen });
    }

    pub(super) fn reject(
        &mut self,
        reason: Reason,
        tier: Tier,
        req: &Request,
        retry: f64,
        message: String,
    ) -> Decision {
        self.count(Outcome::Reason(reason), None);
        Decision::Rejected(Rejected { reason, tier, model: req.model.clone(), retry_after_s: retry, message })
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
        let claimed = self.is_event_fed(c.slot);
        let index_version = if claimed {
            self.claim(c.slot, &req.blocks)
        } else {
            self.index.insert(c.slot, &req.blocks)
        };
        let Request { model, stream, max_tokens, prompt_tokens, blocks, key_space, .. } = req;
        let t = Ticket {
            slot: c.slot,
            gen,
            pending_tokens: uncached,
            pending: true,
            work_ahead,
            ttft_s: None,
            blocks,
            index_version,
            claimed,
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
            predicted_ttft_s: c.ttft(),
            key_space,
        }
    }
}
