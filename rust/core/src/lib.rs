//! kvroute-core: every routing algorithm of kvroute, with no Python and no I/O.
//!
//! - `request`: reads an OpenAI request body once (model, stream, max_tokens, prompt blocks);
//! - `index`: which prompt prefixes each backend holds;
//! - `kvview`: an engine's own account of its cache (KV events), in the router's key space;
//! - `router`: backends, tickets, the decision (filter → score → pick → admit), the wait queue;
//! - `scorer`: the named per-candidate scores policies are built from;
//! - `outcome`: the decision values and the branch and reason names they carry;
//! - `admission`: priority tiers and their limits;
//! - `ratelimit`: per-API-key request and token buckets;
//! - `tokenize`: a model's tokenizer and chat template, for token-exact block keys;
//! - `policy`: policy names and weights; `snapshot`: the plain value tree for introspection.
pub mod admission;
pub mod backend;
pub mod error;
mod fasthash;
pub mod index;
pub mod kvview;
mod json_depth;
pub mod outcome;
pub mod policy;
pub mod ratelimit;
pub mod request;
pub mod rng;
pub mod router;
#[cfg(test)]
mod router_kv_tests;
#[cfg(test)]
mod router_tests;
pub mod scorer;
pub mod snapshot;
pub mod tokenize;

pub use admission::Tier;
pub use backend::BackendUpdate;
pub use error::{CoreError, Result};
pub use outcome::{Branch, Decision, KeySpace, Outcome, Queued, Reason, Rejected, Routed};
pub use request::{parse, parse_with, Endpoint, HashConfig, Request};
pub use router::{Router, RouterConfig};
pub use scorer::Scorer;
pub use snapshot::Snap;
pub use tokenize::{ModelTokenizer, TokenizerSet};

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
