//! Router behaviour: every policy, the index through the router (eviction, restart, capacity),
//! admission and the wait queue.
use crate::admission::Tier;
use crate::backend::BackendUpdate;
use crate::error::CoreError;
use crate::outcome::{Decision, Routed};
use crate::request::{parse, Endpoint, HashConfig, Request};
use crate::router::{Router, RouterConfig};
use crate::snapshot::Snap;

fn router(policy: &str, n: usize) -> Router {
    let mut r = Router::new(RouterConfig { policy: policy.into(), seed: 7, ..Default::default() }).unwrap();
    for i in 0..n {
        r.upsert_backend(&format!("b{i}"), &BackendUpdate::default()).unwrap();
    }
    r
}

fn body(system: &str, user: &str) -> Vec<u8> {
    serde_json::json!({"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]})
    .to_string()
    .into_bytes()
}

fn req(r: &Router, system: &str, user: &str) -> Request {
    parse(&body(system, user), Endpoint::Chat, &r.hash_config()).unwrap()
}

fn routed(d: Decision) -> Routed {
    match d {
        Decision::Routed(x) => x,
        other => panic!("expected Routed, got {other:?}"),
    }
}

fn route(r: &mut Router, system: &str, user: &str) -> Routed {
    let q = req(r, system, user);
    routed(r.route(q, Tier::Normal, None, &[]))
}

fn upd(f: impl FnOnce(&mut BackendUpdate)) -> BackendUpdate {
    let mut u = BackendUpdate::default();
    f(&mut u);
    u
}

fn long_system() -> String {
    "You are a meticulous assistant. ".repeat(250) // ~8 KB, ~2000 tokens
}

#[test]
fn round_robin_cycles_in_insertion_order() {
    let mut r = router("round_robin", 3);
    let ids: Vec<String> = (0..6).map(|_| route(&mut r, "s", "u").backend_id).collect();
    assert_eq!(ids, ["b0", "b1", "b2", "b0", "b1", "b2"]);
}

#[test]
fn random_is_seeded_and_covers_the_fleet() {
    let run = || {
        let mut r = router("random", 4);
        (0..40).map(|_| route(&mut r, "s", "u").backend_id).collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run());
    for i in 0..4 {
        assert!(a.contains(&format!("b{i}")));
    }
}

#[test]
fn least_inflight_and_power_of_two_avoid_the_busy_backend() {
    for policy in ["least_inflight", "power_of_two"] {
        let mut r = router(policy, 2);
        let first = route(&mut r, "s", "u");
        for _ in 0..5 {
            let d = route(&mut r, "s", "u");
            assert_ne!(d.backend_id, first.backend_id, "{policy}");
            assert_eq!(d.branch.as_str(), policy);
            r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
        }
    }
}

#[test]
fn least_load_weighs_queue_and_latency() {
    let mut r = router("least_load", 2);
    r.upsert_backend("b0", &upd(|u| u.waiting = Some(3))).unwrap();
    assert_eq!(route(&mut r, "s", "u").backend_id, "b1");
    // b1 is now slow: (0 + 1 + 1) * 10 s > (3 + 0 + 1) * 1 s.
    let t = route(&mut r, "s", "u");
    r.release(t.ticket, true, 10, 0, 5, 0.0).unwrap();
    r.set_policy("cost", &[("ewma_alpha".into(), 1.0)]).unwrap();
    let t = route(&mut r, "s", "u");
    r.release(t.ticket, true, 10, 0, 5, 10.0).unwrap();
    r.set_policy("least_load", &[]).unwrap();
    let held = route(&mut r, "s", "u");
    assert_eq!(held.backend_id, "b0", "latency EWMA of {} should steer away", t.backend_id);
}

#[test]
fn prefix_hash_sticks_to_the_system_prompt_then_overflows() {
    let mut r = router("prefix_hash", 4);
    let first = route(&mut r, "system A", "q1");
    assert_eq!(first.branch.as_str(), "prefix_hash:affinity");
    for i in 0..5 {
        let d = route(&mut r, "system A", &format!("q{i}"));
        assert_eq!(d.backend_id, first.backend_id);
        r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
    }
    let others: std::collections::HashSet<String> =
        (0..40).map(|i| route(&mut r, &format!("system {i}"), "q").backend_id).collect();
    assert!(others.len() >= 3, "system prompts should spread: {others:?}");
    r.upsert_backend(&first.backend_id, &upd(|u| u.waiting = Some(50))).unwrap();
    let d = route(&mut r, "system A", "q");
    assert_eq!(d.branch.as_str(), "prefix_hash:overflow");
    assert_ne!(d.backend_id, first.backend_id);
}

#[test]
fn session_is_sticky_with_bounded_load() {
    let mut r = router("session", 4);
    let q = || parse(&body("s", "u"), Endpoint::Chat, &HashConfig::default()).unwrap();
    let first = routed(r.route(q(), Tier::Normal, Some("user-1"), &[]));
    assert_eq!(first.branch.as_str(), "session:sticky");
    r.release(first.ticket, true, 0, 0, 0, 0.0).unwrap();
    for _ in 0..3 {
        let d = routed(r.route(q(), Tier::Normal, Some("user-1"), &[]));
        assert_eq!(d.backend_id, first.backend_id);
        r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
    }
    // Hold many tickets for one session: bounded load pushes the excess elsewhere.
    let held: Vec<Routed> = (0..12).map(|_| routed(r.route(q(), Tier::Normal, Some("user-1"), &[]))).collect();
    assert!(held.iter().any(|d| d.branch.as_str() == "session:spill"));
    let max = (0..4).map(|i| r.in_flight(&format!("b{i}")).unwrap()).max().unwrap();
    assert!(max <= 4, "load factor 1.25 over 4 backends bounds each at ceil(1.25*13/4)");
    assert_eq!(routed(r.route(q(), Tier::Normal, None, &[])).branch.as_str(), "session:no_key");
}

#[test]
fn pinned_goes_where_the_key_names_and_falls_back_to_fewest_in_flight() {
    let mut r = router("pinned", 4);
    let q = || parse(&body("s", "u"), Endpoint::Chat, &HashConfig::default()).unwrap();
    for _ in 0..3 {
        let d = routed(r.route(q(), Tier::Normal, Some("b2"), &[]));
        assert_eq!((d.backend_id.as_str(), d.branch.as_str()), ("b2", "pinned:named"));
    }
    // The named backend excluded (a retry), unknown, or no key: the least busy, never b2 (3 in flight).
    for (key, exclude) in [(Some("b2"), &["b2"][..]), (Some("b9"), &[][..]), (None, &[][..])] {
        let d = routed(r.route(q(), Tier::Normal, key, exclude));
        assert_eq!(d.branch.as_str(), "pinned:fallback");
        assert_ne!(d.backend_id, "b2");
    }
}

#[test]
fn cost_prefers_the_cache_until_queueing_costs_more() {
    let mut r = router("cost", 4);
    let sys = long_system();
    let warm = route(&mut r, &sys, "first question");
    assert_eq!(warm.branch.as_str(), "cost:cold");
    r.release(warm.ticket, true, 0, 0, 0, 0.0).unwrap();
    let hit = route(&mut r, &sys, "second question");
    assert_eq!(hit.backend_id, warm.backend_id);
    assert_eq!(hit.branch.as_str(), "cost:cache_affinity");
    assert!(hit.cached_tokens >= 1900, "{}", hit.cached_tokens);
    r.release(hit.ticket, true, 0, 0, 0, 0.0).unwrap();
    // The cached backend's engine reports a long queue: recomputing elsewhere is faster.
    r.upsert_backend(
        &warm.backend_id,
        &upd(|u| {
            u.waiting = Some(40);
            u.running = Some(8);
        }),
    )
    .unwrap();
    let spread = route(&mut r, &sys, "third question");
    assert_ne!(spread.backend_id, warm.backend_id);
    assert_eq!(spread.branch.as_str(), "cost:load_spread");
    let Snap::Map(_) = r.snapshot() else { panic!() };
    let snap = r.snapshot();
    let branches = snap.get("branches").unwrap();
    assert!(branches.get("cost:cache_affinity").is_some() && branches.get("cost:load_spread").is_some());
}

#[test]
fn cost_spreads_identical_idle_backends() {
    let mut r = router("cost", 4);
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let d = route(&mut r, &format!("different system prompt {i}"), "u");
        seen.insert(d.backend_id);
    }
    assert_eq!(seen.len(), 4, "cold requests should spread over near-tied backends");
}

#[test]
fn restart_removal_and_capacity_shape_the_index() {
    let mut r = router("cost", 2);
    let sys = long_system();
    let a = route(&mut r, &sys, "q");
    r.release(a.ticket, true, 0, 0, 0, 0.0).unwrap();
    assert!(route(&mut r, &sys, "q").cached_tokens > 0);
    r.reset_backend(&a.backend_id).unwrap();
    r.set_policy("round_robin", &[]).unwrap();
    // Nothing is cached anywhere after the restart, whichever backend round-robin picks.
    let other = if a.backend_id == "b0" { "b1" } else { "b0" };
    r.reset_backend(other).unwrap();
    assert_eq!(route(&mut r, &sys, "q").cached_tokens, 0);
    // Capacity from the engine: 4 GPU blocks of 16 tokens = 4 index blocks.
    r.upsert_backend(
        "b0",
        &upd(|u| {
            u.num_gpu_blocks = Some(4);
            u.block_size = Some(16);
        }),
    )
    .unwrap();
    r.set_policy("cost", &[]).unwrap();
    let snap = r.snapshot();
    let Some(Snap::List(bs)) = snap.get("backends") else { panic!() };
    let b0 = bs.iter().find(|b| b.get("id") == Some(&Snap::Str("b0".into()))).unwrap();
    let ix = b0.get("index").unwrap();
    assert_eq!(ix.get("capacity_blocks"), Some(&Snap::Int(4)));
    assert!(matches!(ix.get("blocks"), Some(Snap::Int(n)) if *n <= 4));
    r.remove_backend("b1").unwrap();
    assert_eq!(r.backend_ids(), vec!["b0".to_string()]);
}

#[test]
fn tickets_survive_backend_removal_and_misuse_is_an_error() {
    let mut r = router("round_robin", 1);
    let t = route(&mut r, "s", "u");
    r.remove_backend("b0").unwrap();
    r.upsert_backend("b0", &BackendUpdate::default()).unwrap(); // reuses the slot
    assert_eq!(r.release(t.ticket, true, 0, 0, 0, 0.0).unwrap(), Vec::<u64>::new());
    assert_eq!(r.in_flight("b0").unwrap(), 0, "a stale ticket must not touch the slot's new backend");
    assert_eq!(r.release(t.ticket, true, 0, 0, 0, 0.0), Err(CoreError::UnknownTicket(t.ticket)));
    assert_eq!(r.first_token(999, 0.1), Err(CoreError::UnknownTicket(999)));
    assert!(matches!(r.in_flight("zz"), Err(CoreError::UnknownBackend(_))));
    assert!(r.upsert_backend("x", &upd(|u| u.kv_usage = Some(1.5))).is_err());
}

#[test]
fn first_token_and_release_teach_rates() {
    let mut r = router("cost", 1);
    r.set_policy("cost", &[("ewma_alpha".into(), 1.0)]).unwrap();
    let sys = long_system();
    let t = route(&mut r, &sys, "q");
    r.first_token(t.ticket, 0.02 + t.prompt_tokens as f64 / 1000.0).unwrap();
    r.release(t.ticket, true, t.prompt_tokens, 0, 101, 5.0).unwrap();
    let rate = learned(&r, "prefill_tokens_per_s");
    assert!((rate - 1000.0).abs() < 1.0, "{rate}");
    let dec = learned(&r, "decode_tokens_per_s");
    assert!(dec > 10.0 && dec < 100.0);
}

/// The first backend's learned value `key`, as the snapshot reports it.
fn learned(r: &Router, key: &str) -> f64 {
    let snap = r.snapshot();
    let Some(Snap::List(bs)) = snap.get("backends") else { panic!() };
    let Some(Snap::Float(v)) = bs[0].get("learned").unwrap().get(key) else { panic!() };
    *v
}

#[test]
fn only_unqueued_requests_teach_the_prefill_rate() {
    let mut r = router("cost", 1);
    r.set_policy("cost", &[("ewma_alpha".into(), 1.0)]).unwrap();
    let rate = |r: &Router| learned(r, "prefill_tokens_per_s");
    let first = route(&mut r, &long_system(), "q");
    // Routed while the first is still prefilling: its TTFT holds work the router counted whole.
    let second = route(&mut r, &format!("{} other", long_system()), "q2");
    r.first_token(first.ticket, 0.02 + first.prompt_tokens as f64 / 1000.0).unwrap();
    r.first_token(second.ticket, 0.05).unwrap();
    // A rate is learned at release, from the engine's count of what it computed.
    assert_eq!(rate(&r), crate::backend::PRIOR_PREFILL_RATE);
    r.release(second.ticket, true, second.prompt_tokens, 0, 10, 1.0).unwrap();
    assert_eq!(rate(&r), crate::backend::PRIOR_PREFILL_RATE, "a queued request taught the rate");
    r.release(first.ticket, true, first.prompt_tokens, 0, 10, 1.0).unwrap();
    assert!((rate(&r) - 1000.0).abs() < 1.0, "{}", rate(&r));
}

#[test]
fn exclude_skips_backends() {
    let mut r = router("round_robin", 2);
    for _ in 0..4 {
        let d = routed(r.route(req(&r, "s", "u"), Tier::Normal, None, &["b0"]));
        assert_eq!(d.backend_id, "b1");
    }
    let all = r.route(req(&r, "s", "u"), Tier::Normal, None, &["b0", "b1"]);
    assert!(matches!(all, Decision::Rejected(ref x) if x.reason.as_str() == "no_backend"));
}

#[test]
fn shedding_goes_lowest_tier_first_and_spills_before_shedding() {
    let mut r = router("round_robin", 2);
    r.set_admission(Tier::Low, Some(2), None).unwrap();
    r.set_admission(Tier::Normal, Some(4), None).unwrap();
    r.set_admission(Tier::High, Some(6), None).unwrap();
    let mut outcomes = Vec::new();
    for i in 0..60 {
        let tier = [Tier::Low, Tier::Normal, Tier::High][i % 3];
        let full = (0..2).all(|b| r.in_flight(&format!("b{b}")).unwrap() >= 6);
        let d = r.route(req(&r, "s", "u"), tier, None, &[]);
        if tier == Tier::High && matches!(d, Decision::Rejected(_)) {
            assert!(full, "high shed while a backend had room");
        }
        outcomes.push((tier, d));
    }
    let first_shed = |t: Tier| outcomes.iter().position(|(x, d)| *x == t && matches!(d, Decision::Rejected(_)));
    let (low, normal, high) = (first_shed(Tier::Low), first_shed(Tier::Normal), first_shed(Tier::High));
    assert!(low.unwrap() < normal.unwrap() && normal.unwrap() < high.unwrap());
    for (_, d) in &outcomes {
        if let Decision::Rejected(x) = d {
            assert_eq!(x.reason.as_str(), "shed");
            assert!(x.retry_after_s >= 0.5);
        }
    }
    // The policy's pick is over the tier's limit but another backend has room: spill, not shed.
    let mut r = router("round_robin", 2);
    r.set_admission(Tier::Low, Some(2), None).unwrap();
    r.upsert_backend("b0", &upd(|u| u.waiting = Some(5))).unwrap();
    let d = routed(r.route(req(&r, "s", "u"), Tier::Low, None, &[]));
    assert_eq!((d.backend_id.as_str(), d.branch.as_str()), ("b1", "admission:spill"));
}

#[test]
fn wait_queue_orders_by_priority_then_age() {
    let mut r = Router::new(RouterConfig { policy: "least_inflight".into(), wait_queue_size: 3, ..Default::default() })
        .unwrap();
    r.upsert_backend("b0", &BackendUpdate::default()).unwrap();
    for t in Tier::ALL {
        r.set_admission(t, Some(1), None).unwrap();
    }
    let running = route(&mut r, "s", "u");
    let q = |r: &mut Router, t: Tier| match r.route(req(r, "s", "u"), t, None, &[]) {
        Decision::Queued(q) => q,
        other => panic!("{other:?}"),
    };
    let low = q(&mut r, Tier::Low);
    let high = q(&mut r, Tier::High);
    let normal = q(&mut r, Tier::Normal);
    assert_eq!((low.position, high.position, normal.position), (0, 0, 1));
    assert!(
        matches!(r.route(req(&r, "s", "u"), Tier::High, None, &[]), Decision::Rejected(ref x) if x.reason.as_str() == "queue_full")
    );
    // Resuming out of turn keeps the waiter in place.
    assert!(matches!(r.resume(low.wait_id).unwrap(), Decision::Queued(_)));
    let woken = r.release(running.ticket, true, 0, 0, 0, 0.0).unwrap();
    assert_eq!(woken, vec![high.wait_id]);
    let d = routed(r.resume(high.wait_id).unwrap());
    assert_eq!(r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap(), vec![normal.wait_id]);
    r.cancel_wait(normal.wait_id).unwrap();
    assert_eq!(r.cancel_wait(normal.wait_id), Err(CoreError::UnknownWait(normal.wait_id)));
    assert_eq!(r.waiting_count(), 1);
    let d = routed(r.resume(low.wait_id).unwrap());
    assert_eq!(r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap(), Vec::<u64>::new());
    assert!(r.resume(low.wait_id).is_err());
}

#[test]
fn cost_near_ties_prefer_the_cached_backend() {
    for seed in 0..20 {
        let mut r = Router::new(RouterConfig { policy: "cost".into(), seed, ..Default::default() }).unwrap();
        for i in 0..4 {
            r.upsert_backend(&format!("b{i}"), &BackendUpdate::default()).unwrap();
        }
        // One cached block of a long prompt saves less than the 5% tie band.
        let sys = "Be brief and polite, always, please. Answer in English. Thank you!!";
        let first = route(&mut r, sys, &"first question ".repeat(60));
        r.release(first.ticket, true, 0, 0, 0, 0.0).unwrap();
        let next = route(&mut r, sys, &"another question ".repeat(60));
        assert!(next.cached_tokens > 0);
        assert_eq!(next.backend_id, first.backend_id, "seed {seed}");
        assert_eq!(next.branch.as_str(), "cost:cache_affinity");
    }
}

/// Two backends; `b0` holds a ~2,000-token system prompt and has `on_cached` requests of ~500
/// uncached tokens waiting for their first token, `b1` one. Where does the next request for the
/// cached prompt go?
fn spread_case(weights: &[(&str, f64)], on_cached: usize) -> Routed {
    let mut r = router("cost", 2);
    let w: Vec<(String, f64)> = weights.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    r.set_policy("cost", &w).unwrap();
    let sys = long_system();
    let warm = routed(r.route(req(&r, &sys, "q"), Tier::Normal, None, &["b1"]));
    r.release(warm.ticket, true, 0, 0, 0, 0.0).unwrap();
    let cold = "a different prompt of about five hundred tokens ".repeat(40);
    for (i, (not_there, n)) in [("b1", on_cached), ("b0", 1)].into_iter().enumerate() {
        for k in 0..n {
            let q = req(&r, &format!("{i} {k} {cold}"), "u");
            routed(r.route(q, Tier::Normal, None, &[not_there]));
        }
    }
    route(&mut r, &sys, "the question")
}

#[test]
fn cost_is_greedy_where_nothing_has_queued_yet() {
    // No decision has seen a queue on either backend before this burst (the mean comes from the
    // samples of the burst's own decisions, which a window of 1,000 decisions keeps near zero):
    // the request goes where its first token comes soonest, recomputing the prefix.
    let r = spread_case(&[("load_alpha", 0.001)], 6);
    assert_eq!((r.backend_id.as_str(), r.branch.as_str()), ("b1", "cost:load_spread"));
}

#[test]
fn cost_prices_the_delay_its_prefill_adds_to_later_arrivals() {
    // Each mean is the last sample: six requests waiting on b0, one on b1. Recomputing the prefix
    // on b1 delays whoever arrives there next by its prefill, which outweighs the queue it avoids.
    let r = spread_case(&[("load_alpha", 1.0)], 6);
    assert_eq!((r.backend_id.as_str(), r.branch.as_str()), ("b0", "cost:cache_affinity"));
    // The cached request's own small prefill delays b0's later arrivals too, by as much as the
    // queue there is long: against 40 waiting it goes elsewhere.
    let r = spread_case(&[("load_alpha", 1.0)], 40);
    assert_eq!((r.backend_id.as_str(), r.branch.as_str()), ("b1", "cost:load_spread"));
}

fn predicted_empty_ttft(r: &Router, id: &str) -> f64 {
    let snap = r.snapshot();
    let Some(Snap::List(bs)) = snap.get("backends") else { panic!() };
    let b = bs.iter().find(|b| b.get("id") == Some(&Snap::Str(id.into()))).unwrap();
    let Some(Snap::Float(t)) = b.get("predicted_ttft_s") else { panic!() };
    *t
}

#[test]
fn cost_counts_a_reported_queue_of_our_own_requests_once() {
    let mut r = router("cost", 1);
    let tickets: Vec<u64> = (0..10).map(|i| route(&mut r, &format!("prompt {i}"), "u").ticket).collect();
    let idle = predicted_empty_ttft(&router("cost", 1), "b0");
    // The engine reports our ten requests waiting; a poll interval later they are all decoding.
    r.upsert_backend("b0", &upd(|u| u.waiting = Some(10))).unwrap();
    for &t in &tickets {
        r.first_token(t, 0.01).unwrap();
    }
    let drained = predicted_empty_ttft(&r, "b0");
    assert!(drained - idle < 0.05, "a drained queue of our own requests still counted: {drained} vs {idle}");
    // Requests that were not ours when the engine reported them are work ahead until the next poll.
    r.upsert_backend("b0", &upd(|u| u.waiting = Some(10))).unwrap();
    let foreign = predicted_empty_ttft(&r, "b0");
    assert!(foreign - drained > 0.5, "{foreign} vs {drained}");
}

#[test]
fn cost_sends_a_new_prompt_where_the_least_is_held_unless_it_queues_there() {
    for seed in 0..8 {
        let mut r = Router::new(RouterConfig { policy: "cost".into(), seed, ..Default::default() }).unwrap();
        for id in ["b0", "b1"] {
            r.upsert_backend(id, &BackendUpdate::default()).unwrap();
        }
        let held = routed(r.route(req(&r, &long_system(), "q"), Tier::Normal, None, &["b1"]));
        r.release(held.ticket, true, 0, 0, 0, 0.0).unwrap();
        // Both idle: the one holding nothing takes the new prompt (no coin toss).
        let d = route(&mut r, "a new system prompt", "u");
        assert_eq!((d.backend_id.as_str(), d.branch.as_str()), ("b1", "cost:cold"), "seed {seed}");
        // A queue of 20 prompts of ~500 tokens there outweighs the content b0 holds.
        let cold = "a different prompt of about five hundred tokens ".repeat(40);
        for k in 0..20 {
            routed(r.route(req(&r, &format!("{k} {cold}"), "u"), Tier::Normal, None, &["b0"]));
        }
        let d = route(&mut r, "yet another system prompt", "u");
        assert_eq!((d.backend_id.as_str(), d.branch.as_str()), ("b0", "cost:cold"), "seed {seed}");
    }
}
