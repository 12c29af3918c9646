//! `Tokenizer`: a model's tokenizer and chat template in the core, built from file contents the
//! Python side read (the core does no I/O). Building it trains nothing but parses a large JSON and
//! runs the per-message probe, and encoding scales with the text: both release the GIL.
use std::sync::Arc;

use kvroute_core::tokenize::{ModelTokenizer, DEFAULT_CACHE_IDS};
use kvroute_core::CoreError;
use pyo3::prelude::*;

use crate::errors::to_pyerr;

#[pyclass(module = "kvroute._native", frozen)]
pub struct Tokenizer {
    pub(crate) inner: Arc<ModelTokenizer>,
}

#[pymethods]
impl Tokenizer {
    #[new]
    #[pyo3(signature = (tokenizer_json, tokenizer_config_json = None, chat_template = None, *, cache_tokens = DEFAULT_CACHE_IDS))]
    #[pyo3(text_signature = "(tokenizer_json, tokenizer_config_json=None, chat_template=None, *, cache_tokens=4194304)")]
    fn new(
        py: Python<'_>,
        tokenizer_json: String,
        tokenizer_config_json: Option<String>,
        chat_template: Option<String>,
        cache_tokens: usize,
    ) -> PyResult<Self> {
        let t = py.detach(|| {
            ModelTokenizer::with_cache(&tokenizer_json, tokenizer_config_json.as_deref(), chat_template.as_deref(), cache_tokens)
        });
        Ok(Tokenizer { inner: Arc::new(t.map_err(to_pyerr)?) })
    }

    #[getter]
    fn per_message(&self) -> bool {
        self.inner.per_message()
    }

    #[getter]
    fn has_chat_template(&self) -> bool {
        self.inner.has_chat_template()
    }

    #[getter]
    fn cached_tokens(&self) -> usize {
        self.inner.cached_ids()
    }

    #[getter]
    fn encoded_bytes(&self) -> u64 {
        self.inner.encoded_bytes()
    }

    /// The prompt ids of a chat request body, as the router keys it.
    #[pyo3(text_signature = "($self, body)")]
    fn chat_ids(&self, py: Python<'_>, body: &[u8]) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.chat_ids(body)).map_err(|m| to_pyerr(CoreError::malformed(None, m)))
    }

    /// A completions text prompt's ids (with the tokenizer's special tokens, as vLLM encodes it).
    #[pyo3(text_signature = "($self, text)")]
    fn encode_prompt(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.encode_prompt(text)).map_err(|m| to_pyerr(CoreError::malformed(None, m)))
    }
}
