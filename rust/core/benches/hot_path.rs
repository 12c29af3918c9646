//! `cargo bench -p kvroute-core`: hashing throughput and the core's share of the hot path,
//! without Python. Prints medians; numbers go to docs/benchmarks.md.
use std::hint::black_box;
use std::time::Instant;

use kvroute_core::request::{chain_hashes, chain_root};
use kvroute_core::{parse, BackendUpdate, Decision, Endpoint, HashConfig, Router, RouterConfig, Tier};

fn median_ns(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Median over `rounds` of the mean time of `inner` calls, in ns per call.
fn time(rounds: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..inner {
            f();
        }
        samples.push(t.elapsed().as_nanos() as f64 / inner as f64);
    }
    median_ns(samples)
}

fn text(n: usize, seed: u64) -> String {
    let words = ["cache", "token", "prefill", "decode", "router", "backend", "queue", "latency", "block", "model"];
    let mut s = String::with_capacity(n + 16);
    let mut x = seed;
    while s.len() < n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        s.push(' ');
    }
    s.truncate(n);
    s
}

fn chat(system: &str, user: &str) -> Vec<u8> {
    serde_json::json!({"model": "m", "stream": true, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]})
    .to_string()
    .into_bytes()
}

fn main() {
    let cfg = HashConfig::default();

    // 1. Raw chained-block hashing (64-byte blocks = 16 tokens x 4 bytes).
    let data: Vec<u8> = text(1 << 20, 1).into_bytes();
    let root = chain_root("m");
    let ns = time(31, 20, || {
        black_box(chain_hashes(black_box(&data), 64, root));
    });
    println!("chain_hashes 1 MiB, 64 B blocks: {:.0} us  ({:.2} GB/s)", ns / 1e3, data.len() as f64 / ns);

    // 2. Parse + hash of chat bodies of several sizes.
    for kib in [1usize, 8, 64, 512] {
        let body = chat(&text(kib * 1024 * 3 / 4, 2), &text(kib * 1024 / 4, 3));
        let inner = (2048 / kib).max(4);
        let ns = time(31, inner, || {
            black_box(parse(black_box(&body), Endpoint::Chat, &cfg).unwrap());
        });
        println!("parse chat body {:>4} KiB: {:>9.2} us  ({:.2} GB/s)", kib, ns / 1e3, body.len() as f64 / ns);
    }

    // 3. route + release on 64 backends whose indexes hold 100k blocks each.
    let mut r = Router::new(RouterConfig { policy: "round_robin".into(), ..Default::default() }).unwrap();
    for i in 0..64 {
        let u = BackendUpdate {
            models: Some(vec!["m".into()]),
            num_gpu_blocks: Some(100_000),
            block_size: Some(16),
            ..Default::default()
        };
        r.upsert_backend(&format!("b{i:02}"), &u).unwrap();
    }
    let fill = text(8000, 4);
    let t = Instant::now();
    for i in 0..(64 * 100_000 / 125 + 64) {
        let body = chat(&format!("{i:09} {}", &fill[..6000]), &fill[6000..]);
        let q = parse(&body, Endpoint::Chat, &cfg).unwrap();
        if let Decision::Routed(d) = r.route(q, Tier::Normal, None, &[]) {
            r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
        }
    }
    println!("filled 64 x 100k-block indexes in {:.1} s", t.elapsed().as_secs_f64());
    r.set_policy("cost", &[]).unwrap();
    let body = chat(&text(6 * 1024, 5), &text(2 * 1024 - 120, 6));
    let q = parse(&body, Endpoint::Chat, &cfg).unwrap();
    let _ = r.route(q.clone(), Tier::Normal, None, &[]);
    let ns_route = time(31, 200, || {
        let q = q.clone();
        if let Decision::Routed(d) = r.route(q, Tier::Normal, None, &[]) {
            r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
        }
    });
    println!("route+release (parsed) 8 KiB, 64 backends x 100k blocks: {:.2} us", ns_route / 1e3);
    let ns_full = time(31, 200, || {
        let q = parse(&body, Endpoint::Chat, &cfg).unwrap();
        if let Decision::Routed(d) = r.route(q, Tier::Normal, None, &[]) {
            r.release(d.ticket, true, 0, 0, 0, 0.0).unwrap();
        }
    });
    println!("parse+route+release 8 KiB, 64 backends x 100k blocks: {:.2} us", ns_full / 1e3);
}
