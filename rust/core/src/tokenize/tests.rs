//! A byte-level BPE trained here (no model files in the repo) with ChatML-style special tokens.
use std::sync::Arc;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::*;
use crate::request::{chain_root, parse, parse_with, token_chain, Endpoint, HashConfig, KeySpace};

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
// The real_vllm tiny model's template: no special token between turns, so no piece boundary.
const PLAIN: &str = "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

fn tokenizer_json() -> String {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> =
        ["<|bos|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(400)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "You are a helpful assistant. Please answer the question briefly and clearly.",
        "What is the capital of France? Paris is the capital of France.",
    ];
    tok.train(&mut trainer, corpus.iter()).unwrap();
    let bos = tok.token_to_id("<|bos|>").unwrap();
    tok.with_post_processor(Some(
        TemplateProcessing::builder().try_single("<|bos|> $A").unwrap().special_tokens(vec![("<|bos|>", bos)]).build().unwrap(),
    ));
    tok.to_string(false).unwrap()
}

fn model(template: &str) -> ModelTokenizer {
    let config = r#"{"bos_token": {"content": "<|bos|>", "lstrip": false}, "eos_token": "<|im_end|>"}"#;
    ModelTokenizer::new(&tokenizer_json(), Some(config), Some(template)).unwrap()
}

fn chat(msgs: &[(&str, &str)]) -> Vec<u8> {
    let m: Vec<_> = msgs.iter().map(|(r, c)| serde_json::json!({"role": r, "content": c})).collect();
    serde_json::to_vec(&serde_json::json!({"model": "m", "messages": m})).unwrap()
}

const TURNS: [(&str, &str); 7] = [
    ("system", "You are a helpful assistant.  "),
    ("user", "What is the capital of France?"),
    ("assistant", "Paris is the capital of France.\n"),
    ("user", "And the quick brown fox? ünïcode ✓"),
    ("assistant", " It jumps over the lazy dog."),
    ("user", "Briefly, please"),
    ("assistant", "ok"),
];

#[test]
fn per_message_ids_equal_whole_conversation_ids_turn_by_turn() {
    let m = model(CHATML);
    assert!(m.per_message(), "ChatML turns start with a special token: the probe agrees");
    let whole = model(CHATML);
    let mut prev_full: Option<Vec<u32>> = None;
    for upto in [2, 4, 6] {
        let body = chat(&TURNS[..upto]);
        let ids = m.chat_ids(&body).unwrap();
        let conv = conversation::read(&body).unwrap();
        assert_eq!(ids, whole.conversation_ids(&conv, false).unwrap(), "turn with {upto} messages");
        let before = m.encoded_bytes();
        assert_eq!(m.chat_ids(&body).unwrap(), ids, "a repeat is served from the cache");
        // Only the generation prompt is new on a repeat.
        assert!(m.encoded_bytes() - before < 30);
        if let Some(prev) = prev_full {
            // The previous prompt minus its generation prompt starts this one.
            assert!(ids.len() > prev.len());
        }
        prev_full = Some(ids);
    }
    assert!(m.cached_ids() > 0);
}

#[test]
fn the_next_turn_tokenizes_only_its_new_messages() {
    let m = model(CHATML);
    m.chat_ids(&chat(&TURNS[..4])).unwrap();
    let before = m.encoded_bytes();
    let body = chat(&TURNS[..6]);
    m.chat_ids(&body).unwrap();
    // Exactly the text after the previous turn's conversation: its last two messages and the
    // generation prompt.
    let conv = conversation::read(&body).unwrap();
    let full = m.render(&conv, 6, true).unwrap();
    let previous = m.render(&conv, 4, false).unwrap();
    assert_eq!(m.encoded_bytes() - before, (full.len() - previous.len()) as u64);
}

#[test]
fn templates_without_turn_markers_tokenize_whole() {
    let m = model(PLAIN);
    assert!(!m.per_message(), "no special token between turns: no boundary to cache at");
    let body = chat(&TURNS[..4]);
    let conv = conversation::read(&body).unwrap();
    assert_eq!(m.chat_ids(&body).unwrap(), m.conversation_ids(&conv, false).unwrap());
    assert_eq!(m.cached_ids(), 0);
}

#[test]
fn a_template_that_rewrites_the_past_still_tokenizes_exactly() {
    // The last user turn is shouted: the previous render is not a prefix of the next one.
    let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if loop.last %}{{ m.content.upper() }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
    let m = model(src);
    for upto in [2, 4, 6] {
        let body = chat(&TURNS[..upto]);
        let conv = conversation::read(&body).unwrap();
        assert_eq!(m.chat_ids(&body).unwrap(), m.conversation_ids(&conv, false).unwrap());
    }
}

#[test]
fn completions_get_special_tokens_and_errors_are_values() {
    let m = model(CHATML);
    let bos = m.tokenizer.token_to_id("<|bos|>").unwrap();
    let ids = m.encode_prompt("The quick brown fox").unwrap();
    assert_eq!(ids[0], bos);
    assert!(!m.chat_ids(&chat(&TURNS[..2])).unwrap().contains(&bos), "chat is encoded without added specials");
    let raising = model("{{ raise_exception('roles must alternate') }}");
    assert!(raising.chat_ids(&chat(&TURNS[..2])).unwrap_err().contains("roles must alternate"));
    assert!(ModelTokenizer::new("{}", None, None).is_err());
    assert!(ModelTokenizer::new(&tokenizer_json(), Some(r#"{"chat_template": 3}"#), None).is_err());
    let listed = r#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ messages[0].content }}"}]}"#;
    let t = ModelTokenizer::new(&tokenizer_json(), Some(listed), None).unwrap();
    assert_eq!(t.chat_ids(&chat(&[("user", "The")])).unwrap(), t.encode("The", false).unwrap());
}

#[test]
fn parse_with_uses_token_keys_when_the_model_has_a_tokenizer() {
    let cfg = HashConfig { block_tokens: 4, bytes_per_token: 4.0 };
    let mut set = TokenizerSet::default();
    let body = chat(&TURNS[..4]);
    let bytes = parse_with(&body, Endpoint::Chat, &cfg, &set).unwrap();
    assert_eq!(bytes, parse(&body, Endpoint::Chat, &cfg).unwrap(), "no tokenizer: the byte path, unchanged");
    assert_eq!(bytes.key_space, KeySpace::Bytes);
    let tok = Arc::new(model(CHATML));
    set.set("m", Some(tok.clone()));
    let r = parse_with(&body, Endpoint::Chat, &cfg, &set).unwrap();
    let ids = tok.chat_ids(&body).unwrap();
    assert_eq!(r.key_space, KeySpace::Tokens);
    assert_eq!(r.prompt_tokens, ids.len() as u64);
    assert_eq!(r.blocks, token_chain(&ids, 4, chain_root("m")));
    // Turn N+1's blocks start with all of turn N's full blocks.
    let next = parse_with(&chat(&TURNS[..6]), Endpoint::Chat, &cfg, &set).unwrap();
    assert_eq!(&next.blocks[..r.blocks.len()], &r.blocks[..]);
    // A salt changes every block.
    let mut salted: serde_json::Value = serde_json::from_slice(&body).unwrap();
    salted["cache_salt"] = "tenant-a".into();
    let s = parse_with(&serde_json::to_vec(&salted).unwrap(), Endpoint::Chat, &cfg, &set).unwrap();
    assert_eq!(s.blocks.len(), r.blocks.len());
    assert!(s.blocks.iter().zip(&r.blocks).all(|(a, b)| a != b));
    // Completions text through the tokenizer; token lists stay as they were.
    let c = parse_with(br#"{"model":"m","prompt":"The quick brown fox jumps"}"#, Endpoint::Completions, &cfg, &set).unwrap();
    assert_eq!(c.blocks, token_chain(&tok.encode_prompt("The quick brown fox jumps").unwrap(), 4, chain_root("m")));
    let t = parse_with(br#"{"model":"m","prompt":[1,2,3,4,5]}"#, Endpoint::Completions, &cfg, &set).unwrap();
    assert_eq!((t.key_space, t.blocks.len()), (KeySpace::Tokens, 1));
    // Image parts: routed on bytes, and the decision says why.
    let img = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x/a.png"}}]}]}"#;
    let f = parse_with(img, Endpoint::Chat, &cfg, &set).unwrap();
    assert_eq!(f.key_space, KeySpace::BytesFallback);
    assert_eq!(f.blocks, parse(img, Endpoint::Chat, &cfg).unwrap().blocks);
    set.set("m", None);
    assert!(set.is_empty());
}
