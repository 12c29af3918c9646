//! The exact cache view through the router: event-fed backends, speculative claims, resets.
use crate::admission::Tier;
use crate::backend::BackendUpdate;
use crate::kvview::KvEvent;
use crate::outcome::{Decision, Routed};
use crate::request::{parse, Endpoint};
use crate::router::{Router, RouterConfig};

const BS: usize = 16;

fn router(n: usize) -> Router {
    let mut r = Router::new(RouterConfig { policy: "cost".into(), seed: 7, ..Default::default() }).unwrap();
    for i in 0..n {
        r.upsert_backend(&format!("b{i}"), &BackendUpdate::default()).unwrap();
    }
    r
}

fn route_tokens(r: &mut Router, ids: &[u32]) -> Routed {
    let body = serde_json::json!({"model": "m", "prompt": ids, "max_tokens": 4}).to_string();
    let req = parse(body.as_bytes(), Endpoint::Completions, &r.hash_config()).unwrap();
    match r.route(req, Tier::Normal, None, &[]) {
        Decision::Routed(x) => x,
        other => panic!("expected Routed, got {other:?}"),
    }
}

/// What an engine would publish for caching the full blocks of `ids` from scratch; engine hashes
/// are arbitrary (here base + block index), as the router must not depend on them.
fn stored(ids: &[u32], base: u64) -> KvEvent {
    let n = ids.len() / BS;
    KvEvent::Stored {
        hashes: (0..n as u64).map(|i| base + i).collect(),
        parent: None,
        tokens: ids[..n * BS].to_vec(),
        block_size: BS as u32,
        lora_name: None,
        gpu: true,
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| seed * 1000 + i).collect()
}

#[test]
fn confirmed_blocks_steer_a_request_to_the_engine_that_holds_them() {
    let mut r = router(3);
    let ids = prompt(1, 10 * BS + 3);
    r.kv_apply("b2", "m", &[stored(&ids, 500)]).unwrap();
    let d = route_tokens(&mut r, &ids);
    assert_eq!((d.backend_id.as_str(), d.cached_tokens), ("b2", 10 * BS as u64));
    // The engine evicts the last 4 blocks: the prediction follows.
    r.release(d.ticket, true, ids.len() as u64, d.cached_tokens, 4, 0.1).unwrap();
    r.kv_apply("b2", "m", &[KvEvent::Removed { hashes: (506..510).collect(), gpu: true }]).unwrap();
    let d = route_tokens(&mut r, &ids);
    assert_eq!((d.backend_id.as_str(), d.cached_tokens), ("b2", 6 * BS as u64));
}

#[test]
fn speculative_claims_last_until_release_and_guesses_stop() {
    let mut r = router(2);
    // Subscriptions starting: both event-fed, unconfirmed, empty.
    r.kv_reset("b0").unwrap();
    r.kv_reset("b1").unwrap();
    let ids = prompt(2, 8 * BS + 1);
    let first = route_tokens(&mut r, &ids);
    // Before any event: the second request of the burst follows the first's claim.
    let second = route_tokens(&mut r, &ids);
    assert_eq!(second.backend_id, first.backend_id);
    assert_eq!(second.cached_tokens, 8 * BS as u64);
    for t in [first.ticket, second.ticket] {
        r.release(t, true, ids.len() as u64, 0, 4, 0.1).unwrap();
    }
    // Released with no BlockStored: the engine never said it kept them, so nothing is credited.
    let third = route_tokens(&mut r, &ids);
    assert_eq!(third.cached_tokens, 0);
    let snap = format!("{:?}", r.snapshot());
    assert!(snap.contains("speculative_blocks") && snap.contains("(\"resets\", Int(0))"), "{snap}");
}

#[test]
fn reset_forgets_the_engines_blocks_and_unconfirms() {
    let mut r = router(2);
    let ids = prompt(3, 4 * BS);
    r.kv_apply("b1", "m", &[stored(&ids, 1)]).unwrap();
    assert_eq!(r.kv_engine_hashes("b1").unwrap(), vec![1, 2, 3, 4]);
    r.kv_reset("b1").unwrap();
    assert!(r.kv_engine_hashes("b1").unwrap().is_empty());
    assert_eq!(route_tokens(&mut r, &ids).cached_tokens, 0);
    // A restarted engine (poller's reset) empties the confirmed view too.
    r.kv_apply("b1", "m", &[stored(&ids, 1)]).unwrap();
    r.reset_backend("b1").unwrap();
    assert_eq!(route_tokens(&mut r, &ids).cached_tokens, 0);
    // Removing the backend and adding one in its slot starts clean.
    r.kv_apply("b0", "m", &[stored(&ids, 9)]).unwrap();
    r.remove_backend("b0").unwrap();
    r.upsert_backend("b9", &BackendUpdate::default()).unwrap();
    assert!(r.kv_engine_hashes("b9").unwrap().is_empty());
    assert_eq!(route_tokens(&mut r, &ids).cached_tokens, 0);
}

/// One block stored on top of the engine block `parent`.
fn stored_on(ids: &[u32], hash: u64, parent: u64) -> KvEvent {
    KvEvent::Stored { hashes: vec![hash], parent: Some(parent), tokens: ids.to_vec(), block_size: BS as u32, lora_name: None, gpu: true }
}

#[test]
fn a_restarted_engine_keeps_no_blocks_a_later_store_could_build_on() {
    // reset_backend used to clear the confirmed index but keep the view's blocks: a block stored
    // later on top of one of them entered the index without its parent (not prefix-closed).
    let mut r = router(2);
    let ids = prompt(4, 3 * BS);
    r.kv_apply("b1", "m", &[stored(&ids[..2 * BS], 1)]).unwrap();
    r.reset_backend("b1").unwrap();
    assert!(r.kv_engine_hashes("b1").unwrap().is_empty());
    r.kv_apply("b1", "m", &[stored_on(&ids[2 * BS..], 3, 2)]).unwrap();
    assert!(r.kv_engine_hashes("b1").unwrap().is_empty());
    let snap = format!("{:?}", r.snapshot());
    assert!(snap.contains("(\"orphans\", Int(1))") && snap.contains("(\"confirmed_blocks\", Int(0))"), "{snap}");
}

#[test]
fn a_request_routed_before_the_events_started_leaves_no_claim_behind() {
    // Its release used to re-insert its chain into the slot, which then holds claims only: a
    // speculative entry no ticket would ever end.
    let mut r = router(1);
    let ids = prompt(5, 4 * BS + 1);
    let d = route_tokens(&mut r, &ids);
    r.kv_reset("b0").unwrap();
    r.release(d.ticket, true, ids.len() as u64, 0, 4, 0.1).unwrap();
    assert_eq!(route_tokens(&mut r, &ids).cached_tokens, 0);
}

#[test]
fn a_run_naming_its_own_ancestor_neither_hangs_nor_leaves_stale_keys() {
    let mut r = router(1);
    let ids = prompt(6, 3 * BS + 1);
    r.kv_apply("b0", "m", &[stored(&ids[..2 * BS], 1)]).unwrap();
    // Hash 1 again, now for the third block on top of block 2 (its own descendant): the old
    // block 1 and its subtree go, and the run has no parent left.
    r.kv_apply("b0", "m", &[stored_on(&ids[2 * BS..3 * BS], 1, 2)]).unwrap();
    assert!(r.kv_engine_hashes("b0").unwrap().is_empty());
    r.kv_apply("b0", "m", &[KvEvent::Removed { hashes: vec![1], gpu: true }]).unwrap();
    let routed = |r: &mut Router, ids: &[u32]| {
        let d = route_tokens(r, ids);
        r.release(d.ticket, false, 0, 0, 0, 0.0).unwrap();
        d.cached_tokens
    };
    assert_eq!(routed(&mut r, &ids), 0);
    // A hash reused for other tokens in one run: the newer block wins, the old key goes.
    let other = prompt(7, 2 * BS + 1);
    r.kv_apply("b0", "m", &[stored(&ids[..BS], 10), stored(&other[..BS], 10)]).unwrap();
    assert_eq!(r.kv_engine_hashes("b0").unwrap(), vec![10]);
    assert_eq!(routed(&mut r, &ids), 0);
    assert_eq!(routed(&mut r, &other), BS as u64);
}

#[test]
fn claims_dropped_by_a_restart_are_not_ended_twice() {
    let mut r = router(1);
    r.kv_reset("b0").unwrap();
    let ids = prompt(8, 4 * BS + 1);
    let before = route_tokens(&mut r, &ids);
    r.reset_backend("b0").unwrap();
    let after = route_tokens(&mut r, &ids);
    assert_eq!(after.cached_tokens, 0);
    // The request from before the restart ends: the one after it still holds its claim.
    r.release(before.ticket, false, 0, 0, 0, 0.0).unwrap();
    assert_eq!(route_tokens(&mut r, &ids).cached_tokens, 4 * BS as u64);
}
