//! One backend as the core sees it: what the control plane pushed (metrics, health, models) and
//! what the core learned itself (in-flight work, EWMA rates).

/// Values the control plane may push; `None` leaves the current value alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendUpdate {
    pub models: Option<Vec<String>>,
    pub healthy: Option<bool>,
    pub draining: Option<bool>,
    pub circuit_open: Option<bool>,
    pub waiting: Option<u64>,
    pub running: Option<u64>,
    pub kv_usage: Option<f64>,
    pub num_gpu_blocks: Option<u64>,
    pub block_size: Option<u64>,
}

/// Per-backend estimates learned from outcomes. Priors are deliberately modest GPU figures so a
/// fresh fleet routes sensibly before the first response; a few samples override them.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    /// Prefill throughput, tokens per second.
    pub prefill_rate: f64,
    /// Decode throughput per sequence, tokens per second.
    pub decode_rate: f64,
    pub ttft_ewma: f64,
    pub latency_ewma: f64,
    /// Fixed part of TTFT (scheduling, network, first decode step), learned from small prefills.
    pub overhead_s: f64,
    /// Typical uncached prompt of a request here: the cost of one request in the engine's queue
    /// that this router did not send.
    pub mean_uncached: f64,
    /// Requests waiting for their first token there, averaged over the router's decisions.
    /// Arrivals see time averages (PASTA), so this is the engine's mean prefill queue length:
    /// its utilisation, read without a clock.
    pub mean_pending: f64,
    pub ttft_samples: u64,
    pub latency_samples: u64,
}

pub const PRIOR_PREFILL_RATE: f64 = 8000.0;
pub const PRIOR_DECODE_RATE: f64 = 40.0;
pub const PRIOR_TTFT_S: f64 = 0.1;
pub const PRIOR_LATENCY_S: f64 = 1.0;
pub const PRIOR_OVERHEAD_S: f64 = 0.02;
pub const PRIOR_MEAN_UNCACHED: f64 = 512.0;
/// Below this many tokens of prefill work a TTFT sample says more about overhead than about rate.
pub const RATE_SAMPLE_MIN_TOKENS: u64 = 256;

impl Default for Learned {
    fn default() -> Self {
        Learned {
            prefill_rate: PRIOR_PREFILL_RATE,
            decode_rate: PRIOR_DECODE_RATE,
            ttft_ewma: PRIOR_TTFT_S,
            latency_ewma: PRIOR_LATENCY_S,
            overhead_s: PRIOR_OVERHEAD_S,
            mean_uncached: PRIOR_MEAN_UNCACHED,
            mean_pending: 0.0,
            ttft_samples: 0,
            latency_samples: 0,
        }
    }
}

fn ewma(old: f64, sample: f64, alpha: f64) -> f64 {
    old + alpha * (sample - old)
}

impl Learned {
    /// A first token arrived `ttft_s` after routing; `work_ahead` tokens of prefill were queued
    /// ahead of the request and `own` were its own uncached tokens (as the router predicted them).
    pub fn observe_ttft(&mut self, ttft_s: f64, work_ahead: u64, own: u64, alpha: f64) {
        self.ttft_samples += 1;
        self.ttft_ewma = ewma(self.ttft_ewma, ttft_s, alpha);
        // Only an unqueued small request measures the fixed cost; under load its TTFT is mostly
        // waiting, and subtracting that from later samples would inflate the prefill rate.
        if work_ahead == 0 && own < RATE_SAMPLE_MIN_TOKENS {
            self.overhead_s = ewma(self.overhead_s, ttft_s, alpha);
        }
    }

    /// A request that had no prefill queued ahead of it computed `computed` prompt tokens (the
    /// engine's count, prompt less its reported cached tokens) in `ttft_s`. Only such requests
    /// measure the rate. A queued one's TTFT also holds the work ahead, known only as the
    /// router counted it at routing: whole, though the engine had already done part of it, and
    /// without the prefix other requests computed meanwhile. Both make the work look larger than
    /// it was; such samples put the rate up to twice the engine's (measured on the trace at 24×:
    /// 34–64k tokens/s learned for a 31.6k fleet).
    fn observe_prefill(&mut self, ttft_s: f64, computed: u64, alpha: f64) {
        if computed < RATE_SAMPLE_MIN_TOKENS {
            return;
        }
        let prefill_s = (ttft_s - self.overhead_s).max(ttft_s * 0.1);
        if prefill_s > 0.0 {
            let sample = (computed as f64 / prefill_s).clamp(PRIOR_PREFILL_RATE / 100.0, PRIOR_PREFILL_RATE * 100.0);
            self.prefill_rate = ewma(self.prefill_rate, sample, alpha);
        }
    }

    /// Seconds one typical request occupies the engine's prefill: fixed cost plus its uncached
    /// prompt.
    pub fn mean_prefill_s(&self) -> f64 {
        self.overhead_s + self.mean_uncached / self.prefill_rate
    }

    /// A request finished; `unqueued`: nothing of ours was queued ahead of it when it was routed.
    #[allow(clippy::too_many_arguments)]
    pub fn observe_release(
        &mut self,
        prompt_tokens: u64,
        cached_tokens: u64,
        completion_tokens: u64,
        latency_s: f64,
        ttft_s: Option<f64>,
        unqueued: bool,
        alpha: f64,
    ) {
        if latency_s.is_finite() && latency_s > 0.0 {
            self.latency_samples += 1;
            self.latency_ewma = ewma(self.latency_ewma, latency_s, alpha);
            if let Some(t) = ttft_s {
                if completion_tokens > 1 && latency_s > t {
                    let sample = (completion_tokens - 1) as f64 / (latency_s - t);
                    self.decode_rate = ewma(self.decode_rate, sample, alpha);
                }
            }
        }
        let uncached = prompt_tokens - cached_tokens.min(prompt_tokens);
        if prompt_tokens > 0 {
            self.mean_uncached = ewma(self.mean_uncached, uncached as f64, alpha);
        }
        if let (Some(t), true) = (ttft_s, unqueued) {
            self.observe_prefill(t, uncached, alpha);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub id: String,
    /// Rendezvous-hash identity (xxh3 of the id), fixed for the backend's life.
    pub id_hash: u64,
    /// Empty means "not known yet": the control plane fills it from /v1/models; until then the
    /// backend is assumed to serve any model rather than being unusable.
    pub models: Vec<String>,
    pub healthy: bool,
    pub draining: bool,
    pub circuit_open: bool,
    pub waiting: u64,
    pub running: u64,
    pub kv_usage: f64,
    pub num_gpu_blocks: u64,
    pub block_size: u64,
    /// Tickets routed here and not yet released.
    pub in_flight: u64,
    /// Of those, tickets that have not reported a first token yet (queued or prefilling).
    pub pending: u64,
    /// Uncached prompt tokens of the pending tickets: the prefill work ahead of a new request.
    pub pending_tokens: u64,
    /// Requests the engine reported waiting (running) beyond our own pending (decoding) tickets
    /// at the moment the metrics were pushed: other routers' traffic. Compared with our counts of
    /// that moment, not of the decision's: the metrics are up to a poll interval old, and a queue
    /// that has drained since would otherwise be counted again as someone else's.
    pub foreign_waiting: u64,
    pub foreign_running: u64,
    pub learned: Learned,
    pub routed: u64,
    pub completed: u64,
    pub failed: u64,
    pub predicted_cached_tokens: u64,
    pub reported_cached_tokens: u64,
    pub reported_prompt_tokens: u64,
}

impl Backend {
    pub fn new(id: &str) -> Self {
        Backend {
            id: id.to_owned(),
            id_hash: xxhash_rust::xxh3::xxh3_64(id.as_bytes()),
            models: Vec::new(),
            healthy: true,
            draining: false,
            circuit_open: false,
            waiting: 0,
            running: 0,
            kv_usage: 0.0,
            num_gpu_blocks: 0,
            block_size: 0,
            in_flight: 0,
            pending: 0,
            pending_tokens: 0,
            foreign_waiting: 0,
            foreign_running: 0,
            learned: Learned::default(),
            routed: 0,
            completed: 0,
            failed: 0,
            predicted_cached_tokens: 0,
            reported_cached_tokens: 0,
            reported_prompt_tokens: 0,
        }
    }

    pub fn apply(&mut self, u: &BackendUpdate) {
        if let Some(m) = &u.models {
            self.models = m.clone();
        }
        if let Some(v) = u.healthy {
            self.healthy = v;
        }
        if let Some(v) = u.draining {
            self.draining = v;
        }
        if let Some(v) = u.circuit_open {
            self.circuit_open = v;
        }
        if let Some(v) = u.waiting {
            self.waiting = v;
            self.foreign_waiting = v.saturating_sub(self.pending);
        }
        if let Some(v) = u.running {
            self.running = v;
            self.foreign_running = v.saturating_sub(self.decoding());
        }
        if let Some(v) = u.kv_usage {
            self.kv_usage = v;
        }
        if let Some(v) = u.num_gpu_blocks {
            self.num_gpu_blocks = v;
        }
        if let Some(v) = u.block_size {
            self.block_size = v;
        }
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    pub fn usable(&self) -> bool {
        self.healthy && !self.draining && !self.circuit_open
    }

    /// Requests queued ahead of a new one: the engine's own count (which includes other routers'
    /// traffic) or ours, whichever is larger; ours is fresher, the engine's is more complete.
    pub fn queue_depth(&self) -> u64 {
        self.waiting.max(self.pending)
    }

    /// A decision saw this backend: sample its prefill queue (ours pending, others' waiting).
    pub fn sample_load(&mut self, alpha: f64) {
        let now = (self.pending + self.foreign_waiting) as f64;
        self.learned.mean_pending = ewma(self.learned.mean_pending, now, alpha);
    }

    /// Our tickets past their first token: decoding there.
    pub fn decoding(&self) -> u64 {
        self.in_flight - self.pending
    }

    /// Index capacity in blocks of `block_tokens` tokens, from the engine's KV size; 0 = unknown.
    pub fn capacity_blocks(&self, block_tokens: u32) -> u64 {
        if self.num_gpu_blocks == 0 || self.block_size == 0 {
            return 0;
        }
        self.num_gpu_blocks * self.block_size / block_tokens as u64
    }
}
