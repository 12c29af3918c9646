//! The request reader on arbitrary bytes: it must never panic, every refusal must be a
//! MalformedRequest (the only error a client body may cause), and an accepted body must describe
//! itself consistently. The first byte picks the endpoint; the rest is the body as sent.
#![no_main]
use kvroute_core::{parse, CoreError, Endpoint, HashConfig};
use libfuzzer_sys::fuzz_target;

const ENDPOINTS: [Endpoint; 4] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let endpoint = ENDPOINTS[selector as usize % ENDPOINTS.len()];
    // 16 tokens of 4 bytes: text blocks are 64 bytes, token blocks 16 tokens, so every full block
    // stands for exactly block_tokens tokens of the estimate.
    let cfg = HashConfig::new(16, 4.0).expect("valid config");
    match parse(body, endpoint, &cfg) {
        Err(CoreError::MalformedRequest { message, .. }) => assert!(!message.is_empty()),
        Err(other) => panic!("a request body caused a non-request error: {other:?}"),
        Ok(r) => {
            assert_eq!(r.endpoint, endpoint);
            assert!(!r.model.is_empty());
            assert_eq!(r.block_tokens, cfg.block_tokens);
            assert!(
                r.prompt_tokens >= r.blocks.len() as u64 * cfg.block_tokens as u64,
                "{} full blocks but only {} prompt tokens",
                r.blocks.len(),
                r.prompt_tokens
            );
            // A pure function: the same bytes give the same request.
            assert_eq!(parse(body, endpoint, &cfg).as_ref(), Ok(&r));
        }
    }
});
