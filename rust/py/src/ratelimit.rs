//! `RateLimiter`: the core's per-API-key buckets, for the proxy to ask before it routes.
use std::collections::HashMap;
use std::sync::Mutex;

use kvroute_core::ratelimit::{Limits, RateLimiter as CoreLimiter};
use pyo3::prelude::*;

use crate::errors::to_pyerr;

#[pyclass(module = "kvroute._native", frozen)]
pub struct RateLimiter {
    inner: Mutex<CoreLimiter>,
}

impl RateLimiter {
    fn core(&self) -> std::sync::MutexGuard<'_, CoreLimiter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (*, requests_per_s = 0.0, tokens_per_min = 0.0, per_key = HashMap::new(), max_keys = 65536))]
    #[pyo3(text_signature = "(*, requests_per_s=0.0, tokens_per_min=0.0, per_key={}, max_keys=65536)")]
    fn new(requests_per_s: f64, tokens_per_min: f64, per_key: HashMap<String, (f64, f64)>, max_keys: usize) -> PyResult<Self> {
        let per_key = per_key
            .into_iter()
            .map(|(k, (r, t))| (k, Limits { requests_per_s: r, tokens_per_min: t }))
            .collect();
        let inner = CoreLimiter::new(Limits { requests_per_s, tokens_per_min }, per_key, max_keys).map_err(to_pyerr)?;
        Ok(RateLimiter { inner: Mutex::new(inner) })
    }

    #[pyo3(text_signature = "($self)")]
    fn enabled(&self) -> bool {
        self.core().enabled()
    }

    /// None when admitted (both buckets charged); else the limit's name and the seconds to wait.
    #[pyo3(text_signature = "($self, key, prompt_tokens, now)")]
    fn admit(&self, key: &str, prompt_tokens: u64, now: f64) -> Option<(&'static str, f64)> {
        self.core().admit(key, prompt_tokens, now).err().map(|l| (l.limit, l.retry_after_s))
    }

    #[pyo3(text_signature = "($self, key, tokens, now)")]
    fn charge(&self, key: &str, tokens: i64, now: f64) {
        self.core().charge(key, tokens, now)
    }

    #[pyo3(text_signature = "($self)")]
    fn tracked_keys(&self) -> usize {
        self.core().tracked_keys()
    }
}
