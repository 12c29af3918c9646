//! The snapshot: the router's state as plain values, for the admin API and the status page.
use super::{Cand, Router};
use crate::admission::Tier;
use crate::scorer::{self, Scorer};
use crate::snapshot::{kv, Snap};

impl Router {
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
                    kv("predicted_ttft_s", scorer::ttft(&self.policy.params, b, 0)),
                    kv(
                        "learned",
                        Snap::Map(vec![
                            kv("prefill_tokens_per_s", l.prefill_rate),
                            kv("decode_tokens_per_s", l.decode_rate),
                            kv("ttft_ewma_s", l.ttft_ewma),
                            kv("latency_ewma_s", l.latency_ewma),
                            kv("mean_uncached_tokens", l.mean_uncached),
                            kv("mean_pending", l.mean_pending),
                            kv("ttft_samples", l.ttft_samples),
                            kv("latency_samples", l.latency_samples),
                        ]),
                    ),
                    kv(
                        "index",
                        Snap::Map(vec![kv("blocks", self.index.len(s)), kv("capacity_blocks", self.index.capacity(s))]),
                    ),
                    kv("kv_events", self.kv_events_snap(s)),
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
            kv("last_decision", self.last_decision()),
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

    /// The last decision: its outcome and, for every candidate it weighed, the raw value of each
    /// scorer it computed (`ttft` always, the policy's own scorers besides).
    fn last_decision(&self) -> Snap {
        let Some(last) = self.last else {
            return Snap::Null;
        };
        let candidate = |(i, c): (usize, &Cand)| {
            let scores = Scorer::ALL.iter().filter(|&&s| !c.get(s).is_nan()).map(|&s| kv(s.as_str(), c.get(s)));
            Snap::Map(vec![
                kv("backend", self.backend(c.slot).id.as_str()),
                kv("chosen", last.chosen == Some(i)),
                kv("cached_tokens", c.cached_tokens),
                kv("queue_depth", c.queue),
                kv("scores", Snap::Map(scores.collect())),
            ])
        };
        Snap::Map(vec![
            kv("outcome", last.outcome.as_str()),
            kv("policy", last.policy.as_str()),
            kv("candidates", Snap::List(self.cands.iter().enumerate().map(candidate).collect())),
        ])
    }
}
