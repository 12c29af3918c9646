//! KV events from Python tuples into the core's `KvEvent` values (conversion only).
//!
//! ("stored", block_hashes, parent_hash, token_ids, block_size, lora_name, medium)
//! ("removed", block_hashes, medium)
//! ("cleared",)
//! A hash is vLLM's int (u64) or bytes (sha256 hashes).
use kvroute_core::kvview::{engine_hash_of_bytes, is_gpu_medium, KvEvent};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

fn hash(v: &Bound<'_, PyAny>) -> PyResult<u64> {
    match v.cast::<PyBytes>() {
        Ok(b) => Ok(engine_hash_of_bytes(b.as_bytes())),
        Err(_) => v.extract::<u64>(),
    }
}

fn hashes(v: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    v.try_iter()?.map(|h| hash(&h?)).collect()
}

pub fn event(item: &Bound<'_, PyAny>) -> PyResult<KvEvent> {
    let t = item.cast::<PyTuple>().map_err(|_| PyValueError::new_err("a KV event is a tuple"))?;
    let tag: String = t.get_item(0)?.extract()?;
    match (tag.as_str(), t.len()) {
        ("stored", 7) => {
            let parent = t.get_item(2)?;
            let medium: Option<String> = t.get_item(6)?.extract()?;
            Ok(KvEvent::Stored {
                hashes: hashes(&t.get_item(1)?)?,
                parent: if parent.is_none() { None } else { Some(hash(&parent)?) },
                tokens: t.get_item(3)?.extract()?,
                block_size: t.get_item(4)?.extract()?,
                lora_name: t.get_item(5)?.extract()?,
                gpu: is_gpu_medium(medium.as_deref()),
            })
        }
        ("removed", 3) => {
            let medium: Option<String> = t.get_item(2)?.extract()?;
            Ok(KvEvent::Removed { hashes: hashes(&t.get_item(1)?)?, gpu: is_gpu_medium(medium.as_deref()) })
        }
        ("cleared", 1) => Ok(KvEvent::Cleared),
        _ => Err(PyValueError::new_err(format!("unknown KV event {tag:?} with {} fields", t.len()))),
    }
}
