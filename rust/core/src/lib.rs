//! kvroute-core: every routing algorithm of kvroute, with no Python and no I/O.
//!
//! - `request`: reads an OpenAI request body once (model, stream, max_tokens, prompt blocks);
//! - `index`: which prompt prefixes each backend holds;
//! - `router`: backends, tickets, policies, admission and the wait queue;
//! - `policy`: policy names and weights; `snapshot`: the plain value tree for introspection.
pub mod backend;
pub mod error;
mod fasthash;
pub mod index;
pub mod policy;
pub mod request;
pub mod rng;
pub mod router;
#[cfg(test)]
mod router_tests;
pub mod snapshot;

pub use backend::BackendUpdate;
pub use error::{CoreError, Result};
pub use request::{parse, Endpoint, HashConfig, Request};
pub use router::{Decision, Queued, Rejected, Routed, Router, RouterConfig, Tier};
pub use snapshot::Snap;

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
