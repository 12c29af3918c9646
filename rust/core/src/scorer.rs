//! Scorers: one number per candidate backend, each with a name and a unit. Policies read them
//! (see `PolicyKind::scorers`); the decision record reports them raw. The Python reference
//! (`kvroute.reference`) repeats this arithmetic operation for operation.
use crate::backend::Backend;
use crate::outcome::named_enum;
use crate::policy::{Param, Params};

named_enum! {
    Scorer {
        /// Predicted seconds to the first token there (lower is better).
        Ttft => "ttft",
        /// `ttft` plus the delay this placement imposes on other requests, in seconds (lower is better).
        Cost => "cost",
        /// Fraction of the prompt that backend holds, 0..=1 (higher is better).
        Prefix => "prefix",
        /// `(waiting + in_flight + 1) × latency_ewma`, the seed router's queue score (lower is better).
        LeastLoad => "least_load",
        /// Requests in flight there (lower is better).
        LeastInflight => "least_inflight",
    }
}

impl Scorer {
    pub const COUNT: usize = Self::ALL.len();
    /// The scorers the `weighted` policy sums, in the order it sums them.
    pub const WEIGHTED: [Scorer; 4] = [Scorer::Prefix, Scorer::LeastLoad, Scorer::LeastInflight, Scorer::Cost];

    /// This scorer's weight in the `weighted` policy.
    pub fn weight_param(self) -> Option<Param> {
        match self {
            Scorer::Prefix => Some(Param::PrefixScore),
            Scorer::LeastLoad => Some(Param::LeastLoadScore),
            Scorer::LeastInflight => Some(Param::LeastInflightScore),
            Scorer::Cost => Some(Param::CostScore),
            Scorer::Ttft => None,
        }
    }
}

/// Predicted TTFT on `b` for a request with `uncached` tokens to prefill (see docs/routing.md).
pub fn ttft(p: &Params, b: &Backend, uncached: u64) -> f64 {
    let l = &b.learned;
    let rate = l.prefill_rate;
    // Our own tickets count as they are now; the engine's metrics only add what is not ours.
    let work_ahead = b.pending_tokens as f64 + b.foreign_waiting as f64 * l.mean_uncached;
    // A waiting queue means the engine's step token budget is taken by prefill (vLLM admits
    // waiting requests while the budget lasts), not that its batch is full: the queue is the
    // prefill work ahead, already counted above.
    let queue_s = work_ahead / rate;
    let decoding = (b.decoding() + b.foreign_running) as f64;
    let knee = p[Param::KvKnee];
    let pressure = ((b.kv_usage - knee) / (1.0 - knee)).clamp(0.0, 1.0);
    l.overhead_s
        + p[Param::QueueWeight] * queue_s
        + p[Param::PrefillWeight] * (uncached as f64 / rate)
        + p[Param::DecodeWeight] * decoding
        + p[Param::KvWeight] * pressure
}

/// What placing the request on one candidate costs beyond its own TTFT.
pub struct Placement {
    pub uncached: u64,
    /// Tokens the best-holding candidate has cached and this one has not.
    pub behind_best: u64,
    /// For a prompt nobody holds: tokens of content this backend holds beyond the least-holding one.
    pub excess_held: Option<u64>,
}

/// `cost = ttft + externality + placement`, in seconds.
pub fn cost(p: &Params, b: &Backend, ttft_s: f64, at: &Placement) -> f64 {
    let rate = b.learned.prefill_rate;
    // The prefill also delays the requests still waiting for their first token there (chunked
    // prefill shares each step): a greedy per-request choice ignores that and moves conversations
    // off their cache too eagerly.
    let externality = p[Param::ExternalityWeight] * b.pending as f64 * (at.uncached as f64 / rate);
    let placement = match at.excess_held {
        // Recomputing what another candidate already holds spends fleet prefill capacity that
        // some later request pays for; the queue it avoids is a transient, estimated from lagging
        // metrics.
        None => p[Param::RecomputeWeight] * (at.behind_best as f64 / rate),
        // Where a new prompt lands decides where its reuse will queue: requests follow their
        // cache, and leaving it costs the recompute above. Sending prompts nobody holds to the
        // backend holding the least keeps that future traffic even; the queue right now is a
        // transient (and partly a lagging estimate), the content is the router's own.
        Some(excess) => p[Param::ContentWeight] * (excess as f64 / rate),
    };
    ttft_s + externality + placement
}

pub fn prefix(cached_tokens: u64, prompt_tokens: u64) -> f64 {
    if prompt_tokens == 0 {
        0.0
    } else {
        cached_tokens as f64 / prompt_tokens as f64
    }
}

pub fn least_load(b: &Backend) -> f64 {
    (b.waiting + b.in_flight + 1) as f64 * b.learned.latency_ewma
}

pub fn least_inflight(b: &Backend) -> f64 {
    b.in_flight as f64
}
