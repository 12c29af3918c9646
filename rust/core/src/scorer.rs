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
        /// The part of `cost` that is the delay this request's prefill adds to later arrivals
        /// there, in seconds (reported with `cost`; no policy reads it alone).
        Externality => "externality",
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
            Scorer::Ttft | Scorer::Externality => None,
        }
    }
}

/// Seconds of prefill queued ahead of a new request on `b`. Our own tickets count as they are now;
/// the engine's metrics only add what is not ours. A waiting queue means the engine's step token
/// budget is taken by prefill (vLLM admits waiting requests while the budget lasts), not that its
/// batch is full: the queue is the prefill work ahead.
pub fn queue_s(b: &Backend) -> f64 {
    let l = &b.learned;
    (b.pending_tokens as f64 + b.foreign_waiting as f64 * l.mean_uncached) / l.prefill_rate
}

/// Predicted TTFT on `b` for a request with `uncached` tokens to prefill (see docs/routing.md).
pub fn ttft(p: &Params, b: &Backend, uncached: u64) -> f64 {
    let l = &b.learned;
    let decoding = (b.decoding() + b.foreign_running) as f64;
    let knee = p[Param::KvKnee];
    let pressure = ((b.kv_usage - knee) / (1.0 - knee)).clamp(0.0, 1.0);
    l.overhead_s
        + p[Param::QueueWeight] * queue_s(b)
        + p[Param::PrefillWeight] * (uncached as f64 / l.prefill_rate)
        + p[Param::DecodeWeight] * decoding
        + p[Param::KvWeight] * pressure
}

/// The delay, summed over later arrivals on `b`, that `uncached` more tokens of prefill there
/// cause, in seconds. The engine works its prefill queue off in order, so the extra `s` seconds
/// of work delay every request that arrives before the queue next empties: those arriving while
/// the present queue `q` drains wait `s` longer, those arriving while the extra work itself runs
/// about `s / 2`. Arrivals come at `λ` per second, and a busy period from work `w` lasts
/// `w / (1 − ρ)` at utilisation `ρ`; `λ / (1 − ρ) = L / m` with `L` the mean number of requests
/// waiting there (sampled at decisions) and `m` a typical request's prefill time. So
/// `externality = s × (q + s/2) × L / m`: nothing on an idle backend (greedy at low load), and
/// growing with utilisation, protective near saturation. Recomputing a prefix another backend
/// holds is priced here too, as the larger `s` it puts on the backend that recomputes.
pub fn externality(b: &Backend, uncached: u64) -> f64 {
    let l = &b.learned;
    let s = uncached as f64 / l.prefill_rate;
    s * (queue_s(b) + s / 2.0) * l.mean_pending / l.mean_prefill_s()
}

/// `cost = ttft + externality + placement`, in seconds. `excess_held`, for a prompt nobody holds:
/// tokens of content this backend holds beyond the least-holding candidate.
pub fn cost(p: &Params, b: &Backend, ttft_s: f64, externality_s: f64, excess_held: Option<u64>) -> f64 {
    // Where a new prompt lands decides where its reuse will queue: requests follow their cache,
    // and leaving it costs the externality of its recompute. Sending prompts nobody holds to the
    // backend holding the least keeps that future traffic even; the queue right now is a
    // transient (and partly a lagging estimate), the content is the router's own.
    let placement =
        excess_held.map_or(0.0, |excess| p[Param::ContentWeight] * (excess as f64 / b.learned.prefill_rate));
    ttft_s + externality_s + placement
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
