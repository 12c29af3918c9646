//! Priority tiers and their admission limits: when a backend still has room for a request.
use crate::error::{CoreError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::High, Tier::Normal, Tier::Low];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "high" => Ok(Tier::High),
            "normal" => Ok(Tier::Normal),
            "low" => Ok(Tier::Low),
            other => Err(CoreError::config(format!("unknown priority {other:?} (expected high, normal or low)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::High => "high",
            Tier::Normal => "normal",
            Tier::Low => "low",
        }
    }
}

/// Per-tier admission limits; `None` = unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierLimits {
    /// A backend has room for this tier while its queue depth is below this.
    pub max_queue: Option<u64>,
    /// ... and while the request's predicted TTFT there is below this.
    pub max_wait_ms: Option<f64>,
}

impl TierLimits {
    /// Whether a backend with this queue depth, where the request's predicted TTFT is `ttft_s`,
    /// still has room for the tier.
    pub fn room(&self, queue: u64, ttft_s: f64) -> bool {
        self.max_queue.is_none_or(|m| queue < m) && self.max_wait_ms.is_none_or(|m| ttft_s * 1000.0 < m)
    }
}

/// Defaults: low traffic is shed first, normal later, high only by explicit configuration.
pub const DEFAULT_LIMITS: [TierLimits; 3] = [
    TierLimits { max_queue: None, max_wait_ms: None },
    TierLimits { max_queue: Some(128), max_wait_ms: None },
    TierLimits { max_queue: Some(32), max_wait_ms: None },
];

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TierStats {
    pub admitted: u64,
    pub shed: u64,
    pub queued: u64,
    pub queue_full: u64,
}
