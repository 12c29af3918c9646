//! kvroute-core: placeholder until the routing core lands.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
