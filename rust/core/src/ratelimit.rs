//! Per-API-key limits on requests per second and tokens per minute, as token buckets.
//!
//! A request is admitted when its key's request bucket holds one request and its token bucket holds
//! the prompt's estimated tokens (capped at the bucket's size, so a prompt larger than a minute's
//! allowance still passes on a full bucket); both are then charged together, or neither. What the
//! answer really cost (actual prompt and output tokens minus the estimate) is charged at the end and
//! may leave the token bucket in debt, which delays the key's next request. Time is the caller's
//! clock in seconds: the core reads none.
//!
//! Memory is bounded: at most `max_keys` keys are tracked. Past that, buckets that have refilled
//! (they carry no state: a new bucket starts full) are dropped; if none has, the new key shares one
//! overflow bucket with every other such key, so invented keys cost nothing but a shared limit.
use std::collections::HashMap;

use crate::error::{CoreError, Result};

/// A key's limits; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub requests_per_s: f64,
    pub tokens_per_min: f64,
}

impl Limits {
    fn check(self) -> Result<Self> {
        for (name, v) in [("requests_per_s", self.requests_per_s), ("tokens_per_min", self.tokens_per_min)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(CoreError::config(format!("{name} must be a non-negative number, got {v}")));
            }
        }
        Ok(self)
    }

    fn unlimited(self) -> bool {
        self.requests_per_s == 0.0 && self.tokens_per_min == 0.0
    }
}

/// Which limit refused a request, and when the same request would pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub limit: &'static str,
    pub retry_after_s: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: f64,
}

impl Bucket {
    fn full(size: f64, now: f64) -> Self {
        Bucket { level: size, at: now }
    }

    /// Refill at `rate` per second up to `size`.
    fn refill(&mut self, rate: f64, size: f64, now: f64) {
        if now > self.at {
            self.level = (self.level + (now - self.at) * rate).min(size);
            self.at = now;
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Buckets {
    limits: Limits,
    requests: Bucket,
    tokens: Bucket,
}

impl Buckets {
    fn new(limits: Limits, now: f64) -> Self {
        Buckets {
            limits,
            requests: Bucket::full(request_burst(limits), now),
            tokens: Bucket::full(limits.tokens_per_min, now),
        }
    }

    fn refill(&mut self, now: f64) {
        let l = self.limits;
        self.requests.refill(l.requests_per_s, request_burst(l), now);
        self.tokens.refill(l.tokens_per_min / 60.0, l.tokens_per_min, now);
    }

    fn is_full(&self) -> bool {
        self.requests.level >= request_burst(self.limits) && self.tokens.level >= self.limits.tokens_per_min
    }
}

/// One second of requests, and at least one, so a rate under 1/s still lets a request through.
fn request_burst(l: Limits) -> f64 {
    l.requests_per_s.max(1.0)
}

pub struct RateLimiter {
    default: Limits,
    per_key: HashMap<String, Limits>,
    buckets: HashMap<String, Buckets>,
    overflow: Option<Buckets>,
    max_keys: usize,
    last_sweep: f64,
}

impl RateLimiter {
    pub fn new(default: Limits, per_key: HashMap<String, Limits>, max_keys: usize) -> Result<Self> {
        default.check()?;
        for limits in per_key.values() {
            limits.check()?;
        }
        if max_keys == 0 {
            return Err(CoreError::config("max_keys must be at least 1"));
        }
        Ok(RateLimiter { default, per_key, buckets: HashMap::new(), overflow: None, max_keys, last_sweep: f64::NEG_INFINITY })
    }

    /// Whether any key is limited at all (else the caller need not ask).
    pub fn enabled(&self) -> bool {
        !self.default.unlimited() || self.per_key.values().any(|l| !l.unlimited())
    }

    pub fn limits_of(&self, key: &str) -> Limits {
        self.per_key.get(key).copied().unwrap_or(self.default)
    }

    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }

    /// Admit one request of `prompt_tokens` (estimated) for `key`, charging both buckets; or say
    /// which limit refused it and when it would pass.
    pub fn admit(&mut self, key: &str, prompt_tokens: u64, now: f64) -> std::result::Result<(), Limited> {
        let limits = self.limits_of(key);
        if limits.unlimited() {
            return Ok(());
        }
        let b = self.bucket(key, limits, now);
        b.refill(now);
        let need = (prompt_tokens as f64).min(limits.tokens_per_min);
        let mut wait: Option<Limited> = None;
        if limits.requests_per_s > 0.0 && b.requests.level < 1.0 {
            wait = Some(Limited { limit: "requests_per_s", retry_after_s: (1.0 - b.requests.level) / limits.requests_per_s });
        }
        if limits.tokens_per_min > 0.0 && b.tokens.level < need {
            let after = (need - b.tokens.level) / (limits.tokens_per_min / 60.0);
            if wait.map_or(true, |w| after > w.retry_after_s) {
                wait = Some(Limited { limit: "tokens_per_min", retry_after_s: after });
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        if limits.requests_per_s > 0.0 {
            b.requests.level -= 1.0;
        }
        if limits.tokens_per_min > 0.0 {
            b.tokens.level -= prompt_tokens as f64;
        }
        Ok(())
    }

    /// Charge what a finished request cost beyond (or, negative, below) what admission charged.
    pub fn charge(&mut self, key: &str, tokens: i64, now: f64) {
        let limits = self.limits_of(key);
        if limits.tokens_per_min == 0.0 {
            return;
        }
        let b = self.bucket(key, limits, now);
        b.refill(now);
        // A refund never lifts the bucket past full: that would be credit for a later burst.
        b.tokens.level = (b.tokens.level - tokens as f64).min(limits.tokens_per_min);
    }

    fn bucket(&mut self, key: &str, limits: Limits, now: f64) -> &mut Buckets {
        let listed = self.per_key.contains_key(key); // configured keys always get their own bucket
        if !listed && !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            // At most one sweep a second: under a flood of new keys each request stays O(1).
            if now - self.last_sweep >= 1.0 {
                self.last_sweep = now;
                self.buckets.retain(|_, b| {
                    b.refill(now);
                    !b.is_full()
                });
            }
            if self.buckets.len() >= self.max_keys {
                return self.overflow.get_or_insert_with(|| Buckets::new(limits, now));
            }
        }
        self.buckets.entry(key.to_owned()).or_insert_with(|| Buckets::new(limits, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, tpm: f64, max_keys: usize) -> RateLimiter {
        RateLimiter::new(Limits { requests_per_s: rps, tokens_per_min: tpm }, HashMap::new(), max_keys).unwrap()
    }

    #[test]
    fn requests_per_second_allow_a_one_second_burst_then_the_rate() {
        let mut l = limiter(2.0, 0.0, 16);
        assert!(l.admit("k", 10, 0.0).is_ok());
        assert!(l.admit("k", 10, 0.0).is_ok());
        let refused = l.admit("k", 10, 0.0).unwrap_err();
        assert_eq!(refused.limit, "requests_per_s");
        assert!((refused.retry_after_s - 0.5).abs() < 1e-9);
        assert!(l.admit("k", 10, 0.5).is_ok());
        assert!(l.admit("other", 10, 0.5).is_ok(), "each key has its own bucket");
    }

    #[test]
    fn tokens_per_minute_charge_the_prompt_then_the_answer() {
        let mut l = limiter(0.0, 600.0, 16); // 10 tokens/s
        assert!(l.admit("k", 500, 0.0).is_ok());
        l.charge("k", 200, 0.0); // 100 more prompt tokens than estimated plus 100 output tokens
        let refused = l.admit("k", 100, 0.0).unwrap_err();
        assert_eq!(refused.limit, "tokens_per_min");
        assert!((refused.retry_after_s - 20.0).abs() < 1e-9, "{refused:?}"); // from -100 to 100 at 10/s
        assert!(l.admit("k", 100, 20.0).is_ok());
    }

    #[test]
    fn a_prompt_larger_than_the_bucket_passes_on_a_full_bucket_and_leaves_debt() {
        let mut l = limiter(0.0, 60.0, 16);
        assert!(l.admit("k", 1000, 0.0).is_ok());
        assert!(l.admit("k", 1, 0.0).is_err());
    }

    #[test]
    fn a_refusal_charges_nothing() {
        let mut l = limiter(1.0, 60.0, 16);
        assert!(l.admit("k", 60, 0.0).is_ok());
        assert!(l.admit("k", 1, 0.0).is_err()); // both buckets empty
        assert!(l.admit("k", 1, 1.0).is_ok()); // one second refilled one request and one token
    }

    #[test]
    fn refunds_stop_at_full() {
        let mut l = limiter(0.0, 60.0, 16);
        l.charge("k", -1_000, 0.0);
        assert!(l.admit("k", 60, 0.0).is_ok());
        assert!(l.admit("k", 1, 0.0).is_err());
    }

    #[test]
    fn per_key_limits_override_the_default_and_zero_is_unlimited() {
        let per_key = HashMap::from([("gold".to_owned(), Limits { requests_per_s: 0.0, tokens_per_min: 0.0 })]);
        let mut l = RateLimiter::new(Limits { requests_per_s: 1.0, tokens_per_min: 0.0 }, per_key, 16).unwrap();
        assert!(l.enabled());
        for _ in 0..100 {
            assert!(l.admit("gold", 1, 0.0).is_ok());
        }
        assert!(l.admit("plain", 1, 0.0).is_ok());
        assert!(l.admit("plain", 1, 0.0).is_err());
        assert!(!limiter(0.0, 0.0, 16).enabled());
    }

    #[test]
    fn tracked_keys_are_bounded_and_idle_ones_make_room() {
        let mut l = limiter(1.0, 0.0, 4);
        for k in 0..4 {
            assert!(l.admit(&format!("k{k}"), 1, 0.0).is_ok());
        }
        // Every tracked bucket is in use: new keys share the overflow bucket.
        assert!(l.admit("new1", 1, 0.0).is_ok());
        assert!(l.admit("new2", 1, 0.0).is_err());
        assert_eq!(l.tracked_keys(), 4);
        // Within the second no second sweep runs; a second later the old buckets are full again
        // and are dropped for the new key.
        assert!(l.admit("new3", 1, 0.5).is_err());
        assert!(l.admit("new3", 1, 1.0).is_ok());
        assert_eq!(l.tracked_keys(), 1);
    }

    #[test]
    fn bad_limits_are_config_errors() {
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(RateLimiter::new(Limits { requests_per_s: bad, tokens_per_min: 0.0 }, HashMap::new(), 4).is_err());
        }
        assert!(RateLimiter::new(Limits::default(), HashMap::new(), 0).is_err());
    }
}
