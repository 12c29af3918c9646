//! Pickers: turn the candidates' scorer values into one choice and the branch that names it.
//! The RNG is drawn only where a policy needs it (ties, random choices), which keeps the Python
//! reference in lockstep.
use xxhash_rust::xxh3::xxh3_64;

use super::{mix64, Cand, Router};
use crate::outcome::Branch;
use crate::policy::{Param, PolicyKind};
use crate::request::Request;
use crate::scorer::Scorer;

impl Router {
    /// Index of the chosen candidate and the branch that chose it.
    pub(super) fn pick(
        &mut self,
        req: &Request,
        cands: &[Cand],
        session_key: Option<&str>,
        best_cached: u64,
    ) -> (usize, Branch) {
        let n = cands.len();
        let p = &self.policy.params;
        match self.policy.kind {
            PolicyKind::RoundRobin => {
                let i = (self.rr_next % n as u64) as usize;
                self.rr_next = self.rr_next.wrapping_add(1);
                (i, Branch::RoundRobin)
            }
            PolicyKind::Random => (self.rng.below(n), Branch::Random),
            PolicyKind::LeastInflight => (self.lowest(cands, Scorer::LeastInflight), Branch::LeastInflight),
            PolicyKind::PowerOfTwo => (self.power_of_two(cands), Branch::PowerOfTwo),
            PolicyKind::LeastLoad => (self.lowest(cands, Scorer::LeastLoad), Branch::LeastLoad),
            PolicyKind::PrefixHash => {
                let i = self.rendezvous(req.system_hash, cands);
                if (cands[i].queue as f64) < p[Param::QueueThreshold] {
                    (i, Branch::PrefixHashAffinity)
                } else {
                    (self.lowest(cands, Scorer::LeastLoad), Branch::PrefixHashOverflow)
                }
            }
            PolicyKind::Session => match session_key {
                None => (self.lowest(cands, Scorer::LeastInflight), Branch::SessionNoKey),
                Some(k) => self.bounded_rendezvous(xxh3_64(k.as_bytes()), cands),
            },
            PolicyKind::Pinned => {
                let named = session_key.and_then(|k| cands.iter().position(|c| self.backend(c.slot).id == k));
                match named {
                    Some(i) => (i, Branch::PinnedNamed),
                    None => (self.lowest(cands, Scorer::LeastInflight), Branch::PinnedFallback),
                }
            }
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
            PolicyKind::Weighted => (self.weighted(cands), Branch::Weighted),
        }
    }

    /// Two candidates drawn at random; the one with fewer requests in flight.
    fn power_of_two(&mut self, cands: &[Cand]) -> usize {
        let n = cands.len();
        if n == 1 {
            return 0;
        }
        let i = self.rng.below(n);
        let mut j = self.rng.below(n - 1);
        if j >= i {
            j += 1;
        }
        let key = |k: usize| cands[k].get(Scorer::LeastInflight);
        if key(j) < key(i) {
            j
        } else {
            i
        }
    }

    /// The session's rendezvous order, skipping backends over `load_factor` × their fair share of
    /// in-flight requests (consistent hashing with bounded loads).
    fn bounded_rendezvous(&self, key: u64, cands: &[Cand]) -> (usize, Branch) {
        let n = cands.len();
        let in_flight = |c: &Cand| self.backend(c.slot).in_flight;
        let total: u64 = cands.iter().map(in_flight).sum::<u64>() + 1;
        let cap = (self.policy.params[Param::LoadFactor] * total as f64 / n as f64).ceil() as u64;
        let mut ranked: Vec<(u64, usize)> =
            cands.iter().enumerate().map(|(i, c)| (mix64(key ^ self.backend(c.slot).id_hash), i)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        for (rank, &(_, i)) in ranked.iter().enumerate() {
            if in_flight(&cands[i]) < cap {
                return (i, if rank == 0 { Branch::SessionSticky } else { Branch::SessionSpill });
            }
        }
        (ranked[0].1, Branch::SessionSticky)
    }

    /// Minimum cost. Among near-ties, those holding the most of the prompt win: the cost
    /// difference is negligible, but keeping a conversation where its prefix lives pays on every
    /// later turn (the model itself is myopic). Remaining ties are broken at random.
    fn cost_pick(&mut self, cands: &[Cand]) -> usize {
        let score = |c: &Cand| c.get(Scorer::Cost);
        let min = cands.iter().map(score).fold(f64::INFINITY, f64::min);
        let limit = min + min.abs() * self.policy.params[Param::TieTolerance];
        let near = |c: &&Cand| score(c) <= limit;
        let most = cands.iter().filter(near).map(|c| c.cached_tokens).max().unwrap_or(0);
        let best = |c: &&Cand| score(c) <= limit && c.cached_tokens == most;
        let ties = cands.iter().filter(best).count();
        let k = if ties == 1 { 0 } else { self.rng.below(ties) };
        cands.iter().enumerate().filter(|(_, c)| best(c)).nth(k).map_or(0, |(i, _)| i)
    }

    /// Lowest weighted sum of normalised scorer values, each in 0..=1 with 0 the best: the prefix
    /// scorer as the fraction of the prompt not held (absolute: holding 5% more is worth little),
    /// the others as a share of the worst candidate's value (ratios count, not differences: one
    /// request more on an idle backend must not weigh like a deep queue).
    fn weighted(&mut self, cands: &[Cand]) -> usize {
        let mut terms = [(Scorer::Prefix, 0.0, 0.0); Scorer::WEIGHTED.len()];
        let mut used = 0;
        for s in Scorer::WEIGHTED {
            let Some(w) = s.weight_param().map(|p| self.policy.params[p]).filter(|&w| w > 0.0) else {
                continue;
            };
            let worst = cands.iter().map(|c| c.get(s)).fold(0.0, f64::max);
            terms[used] = (s, w, worst);
            used += 1;
        }
        let terms = &terms[..used];
        self.lowest_by(cands, |c| {
            let mut total = 0.0;
            for &(s, w, worst) in terms {
                let v = c.get(s);
                let norm = match s {
                    Scorer::Prefix => 1.0 - v,
                    _ if worst > 0.0 => v / worst,
                    _ => 0.0,
                };
                total += w * norm;
            }
            total
        })
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

    fn lowest(&mut self, cands: &[Cand], s: Scorer) -> usize {
        self.lowest_by(cands, |c| c.get(s))
    }

    /// Minimum score; exact ties are broken at random so equal backends share load instead of the
    /// first one taking everything.
    fn lowest_by(&mut self, cands: &[Cand], score: impl Fn(&Cand) -> f64) -> usize {
        // Two passes over the scores instead of collecting them: no allocation per decision.
        let min = cands.iter().map(&score).fold(f64::INFINITY, f64::min);
        let ties = cands.iter().filter(|c| score(c) <= min).count();
        let k = if ties == 1 { 0 } else { self.rng.below(ties) };
        cands.iter().enumerate().filter(|(_, c)| score(c) <= min).nth(k).map_or(0, |(i, _)| i)
    }
}
