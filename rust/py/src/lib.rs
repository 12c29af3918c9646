//! PyO3 binding of kvroute-core: argument conversion and error mapping only (no routing logic).
use std::sync::Mutex;

use kvroute_core as core;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

mod errors;
mod kv_events;
mod ratelimit;
mod tokenizer;
use errors::to_pyerr;

/// Bodies at least this large are parsed and hashed with the GIL released: below it, releasing
/// and re-acquiring the GIL costs more than the work (measured in bench/micro; see docs/routing.md).
const DETACH_BODY_BYTES: usize = 32 * 1024;

#[pyclass(frozen, module = "kvroute._native")]
struct Routed {
    #[pyo3(get)]
    ticket: u64,
    #[pyo3(get)]
    backend_id: String,
    #[pyo3(get)]
    branch: &'static str,
    #[pyo3(get)]
    model: String,
    #[pyo3(get)]
    stream: bool,
    #[pyo3(get)]
    max_tokens: Option<u64>,
    #[pyo3(get)]
    prompt_tokens: u64,
    #[pyo3(get)]
    cached_tokens: u64,
    #[pyo3(get)]
    predicted_ttft_s: f64,
    #[pyo3(get)]
    key_space: &'static str,
}

#[pymethods]
impl Routed {
    fn __repr__(&self) -> String {
        format!(
            "Routed(ticket={}, backend_id={:?}, branch={:?}, model={:?}, stream={}, cached_tokens={}/{}, predicted_ttft_s={:.4}, key_space={:?})",
            self.ticket, self.backend_id, self.branch, self.model, self.stream, self.cached_tokens, self.prompt_tokens, self.predicted_ttft_s, self.key_space
        )
    }
}

#[pyclass(frozen, module = "kvroute._native")]
struct Rejected {
    #[pyo3(get)]
    reason: &'static str,
    #[pyo3(get)]
    tier: &'static str,
    #[pyo3(get)]
    model: String,
    #[pyo3(get)]
    retry_after_s: f64,
    #[pyo3(get)]
    message: String,
}

#[pymethods]
impl Rejected {
    fn __repr__(&self) -> String {
        format!(
            "Rejected(reason={:?}, tier={:?}, model={:?}, retry_after_s={}, message={:?})",
            self.reason, self.tier, self.model, self.retry_after_s, self.message
        )
    }
}

#[pyclass(frozen, module = "kvroute._native")]
struct Queued {
    #[pyo3(get)]
    wait_id: u64,
    #[pyo3(get)]
    tier: &'static str,
    #[pyo3(get)]
    model: String,
    #[pyo3(get)]
    position: u64,
}

#[pymethods]
impl Queued {
    fn __repr__(&self) -> String {
        format!(
            "Queued(wait_id={}, tier={:?}, model={:?}, position={})",
            self.wait_id, self.tier, self.model, self.position
        )
    }
}

fn decision(py: Python<'_>, d: core::Decision) -> PyResult<Py<PyAny>> {
    Ok(match d {
        core::Decision::Routed(r) => Py::new(
            py,
            Routed {
                ticket: r.ticket,
                backend_id: r.backend_id,
                branch: r.branch.as_str(),
                model: r.model,
                stream: r.stream,
                max_tokens: r.max_tokens,
                prompt_tokens: r.prompt_tokens,
                cached_tokens: r.cached_tokens,
                predicted_ttft_s: r.predicted_ttft_s,
                key_space: r.key_space.as_str(),
            },
        )?
        .into_any(),
        core::Decision::Rejected(r) => Py::new(
            py,
            Rejected {
                reason: r.reason.as_str(),
                tier: r.tier.name(),
                model: r.model,
                retry_after_s: r.retry_after_s,
                message: r.message,
            },
        )?
        .into_any(),
        core::Decision::Queued(q) => {
            Py::new(py, Queued { wait_id: q.wait_id, tier: q.tier.name(), model: q.model, position: q.position })?
                .into_any()
        }
    })
}

fn snap_to_py(py: Python<'_>, s: &core::Snap) -> PyResult<Py<PyAny>> {
    Ok(match s {
        core::Snap::Null => py.None(),
        core::Snap::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        core::Snap::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        core::Snap::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        core::Snap::Str(t) => t.into_pyobject(py)?.into_any().unbind(),
        core::Snap::List(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(snap_to_py(py, it)?)?;
            }
            l.into_any().unbind()
        }
        core::Snap::Map(items) => {
            let d = PyDict::new(py);
            for (k, v) in items {
                d.set_item(k, snap_to_py(py, v)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// The routing core. Thread-safe: the state sits behind a mutex that is never held while the GIL
/// is released, and request bodies are parsed before it is taken.
#[pyclass(frozen, module = "kvroute._native")]
struct Router {
    hash: core::HashConfig,
    inner: Mutex<core::Router>,
}

impl Router {
    fn core(&self) -> std::sync::MutexGuard<'_, core::Router> {
        // A panic inside the core poisons the mutex; the state is still the best we have.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Router {
    #[new]
    #[pyo3(signature = (policy = "cost", *, block_tokens = 16, bytes_per_token = 4.0, seed = 0, wait_queue_size = 0))]
    #[pyo3(text_signature = "(policy='cost', *, block_tokens=16, bytes_per_token=4.0, seed=0, wait_queue_size=0)")]
    fn new(policy: &str, block_tokens: u32, bytes_per_token: f64, seed: u64, wait_queue_size: usize) -> PyResult<Self> {
        let hash = core::HashConfig::new(block_tokens, bytes_per_token).map_err(to_pyerr)?;
        let cfg = core::RouterConfig { policy: policy.to_owned(), hash, seed, wait_queue_size };
        Ok(Router { hash, inner: Mutex::new(core::Router::new(cfg).map_err(to_pyerr)?) })
    }

    #[pyo3(signature = (body, endpoint = "chat", priority = "normal", session_key = None, exclude = Vec::new()))]
    #[pyo3(text_signature = "($self, body, endpoint='chat', priority='normal', session_key=None, exclude=())")]
    fn route(
        &self,
        py: Python<'_>,
        body: &[u8],
        endpoint: &str,
        priority: &str,
        session_key: Option<&str>,
        exclude: Vec<String>,
    ) -> PyResult<Py<PyAny>> {
        let endpoint = core::Endpoint::parse(endpoint).map_err(to_pyerr)?;
        let tier = core::Tier::parse(priority).map_err(to_pyerr)?;
        let hash = self.hash;
        // A short lock for the map (shared, not copied); tokenizing happens outside the lock.
        let toks = self.core().tokenizers();
        // Tokenizing a prompt costs far more than releasing the GIL, whatever its length.
        let req = if body.len() >= DETACH_BODY_BYTES || !toks.is_empty() {
            py.detach(|| core::parse_with(body, endpoint, &hash, &toks))
        } else {
            core::parse(body, endpoint, &hash)
        }
        .map_err(to_pyerr)?;
        let excl: Vec<&str> = exclude.iter().map(String::as_str).collect();
        let d = self.core().route(req, tier, session_key, &excl);
        decision(py, d)
    }

    #[pyo3(text_signature = "($self, wait_id)")]
    fn resume(&self, py: Python<'_>, wait_id: u64) -> PyResult<Py<PyAny>> {
        let d = self.core().resume(wait_id).map_err(to_pyerr)?;
        decision(py, d)
    }

    #[pyo3(text_signature = "($self, wait_id)")]
    fn cancel_wait(&self, wait_id: u64) -> PyResult<()> {
        self.core().cancel_wait(wait_id).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self, ticket, ttft_s)")]
    fn first_token(&self, ticket: u64, ttft_s: f64) -> PyResult<()> {
        self.core().first_token(ticket, ttft_s).map_err(to_pyerr)
    }

    #[pyo3(signature = (ticket, ok, prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, latency_s = 0.0))]
    #[pyo3(
        text_signature = "($self, ticket, ok, prompt_tokens=0, cached_tokens=0, completion_tokens=0, latency_s=0.0)"
    )]
    fn release(
        &self,
        ticket: u64,
        ok: bool,
        prompt_tokens: u64,
        cached_tokens: u64,
        completion_tokens: u64,
        latency_s: f64,
    ) -> PyResult<Vec<u64>> {
        self.core().release(ticket, ok, prompt_tokens, cached_tokens, completion_tokens, latency_s).map_err(to_pyerr)
    }

    #[pyo3(signature = (backend_id, *, models = None, healthy = None, draining = None, circuit_open = None,
                        waiting = None, running = None, kv_usage = None, num_gpu_blocks = None, block_size = None))]
    #[pyo3(
        text_signature = "($self, backend_id, *, models=None, healthy=None, draining=None, circuit_open=None, waiting=None, running=None, kv_usage=None, num_gpu_blocks=None, block_size=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn upsert_backend(
        &self,
        backend_id: &str,
        models: Option<Vec<String>>,
        healthy: Option<bool>,
        draining: Option<bool>,
        circuit_open: Option<bool>,
        waiting: Option<u64>,
        running: Option<u64>,
        kv_usage: Option<f64>,
        num_gpu_blocks: Option<u64>,
        block_size: Option<u64>,
    ) -> PyResult<()> {
        let u = core::BackendUpdate {
            models,
            healthy,
            draining,
            circuit_open,
            waiting,
            running,
            kv_usage,
            num_gpu_blocks,
            block_size,
        };
        self.core().upsert_backend(backend_id, &u).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self, backend_id)")]
    fn reset_backend(&self, backend_id: &str) -> PyResult<()> {
        self.core().reset_backend(backend_id).map_err(to_pyerr)
    }

    /// One batch of a backend's KV events (tuples: see rust/py/src/kv_events.rs).
    #[pyo3(text_signature = "($self, backend_id, model, events)")]
    fn kv_apply(&self, backend_id: &str, model: &str, events: &Bound<'_, PyAny>) -> PyResult<()> {
        let evs: Vec<_> = events.try_iter()?.map(|e| kv_events::event(&e?)).collect::<PyResult<_>>()?;
        self.core().kv_apply(backend_id, model, &evs).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self, backend_id)")]
    fn kv_reset(&self, backend_id: &str) -> PyResult<()> {
        self.core().kv_reset(backend_id).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self, backend_id)")]
    fn kv_engine_hashes(&self, backend_id: &str) -> PyResult<Vec<u64>> {
        self.core().kv_engine_hashes(backend_id).map_err(to_pyerr)
    }

    /// Requests for `model` (a served model or LoRA adapter name) get token-exact block keys from
    /// `tokenizer`; None returns them to byte keys.
    #[pyo3(text_signature = "($self, model, tokenizer)")]
    fn set_tokenizer(&self, model: &str, tokenizer: Option<PyRef<'_, tokenizer::Tokenizer>>) {
        self.core().set_tokenizer(model, tokenizer.map(|t| t.inner.clone()));
    }

    #[pyo3(text_signature = "($self)")]
    fn tokenizer_models(&self) -> Vec<String> {
        self.core().tokenizers().models()
    }

    #[pyo3(text_signature = "($self, backend_id)")]
    fn remove_backend(&self, backend_id: &str) -> PyResult<()> {
        self.core().remove_backend(backend_id).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self)")]
    fn backend_ids(&self) -> Vec<String> {
        self.core().backend_ids()
    }

    #[pyo3(text_signature = "($self, backend_id)")]
    fn in_flight(&self, backend_id: &str) -> PyResult<u64> {
        self.core().in_flight(backend_id).map_err(to_pyerr)
    }

    #[pyo3(signature = (name, **weights))]
    #[pyo3(text_signature = "($self, name, **weights)")]
    fn set_policy(&self, name: &str, weights: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let mut w: Vec<(String, f64)> = Vec::new();
        if let Some(d) = weights {
            for (k, v) in d.iter() {
                let name: String = k.extract()?;
                // A weight that is not a number is a configuration error like one out of range,
                // not a TypeError from the conversion.
                let value: f64 = v.extract().map_err(|_| {
                    let shown = v.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
                    to_pyerr(core::CoreError::config(format!("weight {name:?} must be a number, got {shown}")))
                })?;
                w.push((name, value));
            }
        }
        self.core().set_policy(name, &w).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self)")]
    fn policy<'py>(&self, py: Python<'py>) -> PyResult<(String, Bound<'py, PyDict>)> {
        let (name, weights) = self.core().policy();
        let d = PyDict::new(py);
        for (k, v) in weights {
            d.set_item(k, v)?;
        }
        Ok((name.to_owned(), d))
    }

    #[pyo3(signature = (tier, *, max_queue = None, max_wait_ms = None))]
    #[pyo3(text_signature = "($self, tier, *, max_queue=None, max_wait_ms=None)")]
    fn set_admission(&self, tier: &str, max_queue: Option<u64>, max_wait_ms: Option<f64>) -> PyResult<()> {
        let tier = core::Tier::parse(tier).map_err(to_pyerr)?;
        self.core().set_admission(tier, max_queue, max_wait_ms).map_err(to_pyerr)
    }

    #[pyo3(text_signature = "($self)")]
    fn snapshot(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.core().snapshot();
        snap_to_py(py, &s)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", core::version())?;
    errors::register(m)?;
    m.add_class::<Router>()?;
    m.add_class::<Routed>()?;
    m.add_class::<Rejected>()?;
    m.add_class::<Queued>()?;
    m.add_class::<ratelimit::RateLimiter>()?;
    m.add_class::<tokenizer::Tokenizer>()?;
    // The stub's type aliases exist at runtime too, so `from kvroute._native import Decision` works
    // outside annotations and stubtest can check them.
    let py = m.py();
    // A Union of single Literals (not Literal[a, b]): that is what the stub's alias means to mypy.
    let typing = py.import("typing")?;
    let literal_union = |values: &[&str]| -> PyResult<Bound<'_, PyAny>> {
        let lits = values.iter().map(|v| typing.getattr("Literal")?.get_item(*v)).collect::<PyResult<Vec<_>>>()?;
        typing.getattr("Union")?.get_item(PyTuple::new(py, lits)?)
    };
    m.add("Endpoint", literal_union(&["chat", "completions", "embeddings", "responses"])?)?;
    m.add("Priority", literal_union(&["high", "normal", "low"])?)?;
    let decision = py
        .get_type::<Routed>()
        .call_method1("__or__", (py.get_type::<Rejected>(),))?
        .call_method1("__or__", (py.get_type::<Queued>(),))?;
    m.add("Decision", decision)?;
    // The exhaustive name lists, for dashboards and docs (docs/routing.md lists the same).
    let names = |all: &mut dyn Iterator<Item = &'static str>| PyTuple::new(py, all.collect::<Vec<_>>());
    m.add("BRANCHES", names(&mut core::Branch::ALL.iter().map(|b| b.as_str()))?)?;
    m.add("REASONS", names(&mut core::Reason::ALL.iter().map(|r| r.as_str()))?)?;
    m.add("POLICIES", names(&mut core::policy::PolicyKind::ALL.iter().map(|p| p.as_str()))?)?;
    m.add("SCORERS", names(&mut core::Scorer::ALL.iter().map(|s| s.as_str()))?)?;
    m.add("KEY_SPACES", names(&mut core::KeySpace::ALL.iter().map(|k| k.as_str()))?)?;
    Ok(())
}
