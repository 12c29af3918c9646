//! Request reading: one pass over the raw JSON body yields what routing needs (model, stream,
//! max_tokens, a prompt-token estimate) and the prompt's prefix as a chain of block hashes.
//!
//! The chain is computed over a *canonical byte stream*, not over the raw JSON: two turns of one
//! conversation serialise their shared leading messages identically after decoding (escapes,
//! whitespace and key order do not matter), so turn N+1's chain starts with all of turn N's
//! full blocks. Each block hash is xxh3 seeded with its parent's hash, so equal hashes at position
//! i mean equal prefixes up to i, which is what a KV cache shares.
use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3};

use crate::error::{CoreError, Result};
use crate::json_depth;
pub use crate::outcome::KeySpace;
use crate::tokenize::TokenizerSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "chat" => Ok(Endpoint::Chat),
            "completions" => Ok(Endpoint::Completions),
            "embeddings" => Ok(Endpoint::Embeddings),
            "responses" => Ok(Endpoint::Responses),
            other => Err(CoreError::config(format!(
                "unknown endpoint {other:?} (expected chat, completions, embeddings or responses)"
            ))),
        }
    }
}

/// How prompt bytes map onto KV blocks. vLLM caches whole blocks of `block_tokens` tokens; the core
/// has no tokenizer, so a text block is `block_tokens * bytes_per_token` bytes of canonical stream.
/// Token-list prompts are exact: a block is `block_tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HashConfig {
    pub block_tokens: u32,
    pub bytes_per_token: f64,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig { block_tokens: 16, bytes_per_token: 4.0 }
    }
}

impl HashConfig {
    pub fn new(block_tokens: u32, bytes_per_token: f64) -> Result<Self> {
        if block_tokens == 0 || block_tokens > 1 << 16 {
            return Err(CoreError::config("block_tokens must be in 1..=65536"));
        }
        if !(bytes_per_token.is_finite() && (0.25..=64.0).contains(&bytes_per_token)) {
            return Err(CoreError::config("bytes_per_token must be in 0.25..=64"));
        }
        Ok(HashConfig { block_tokens, bytes_per_token })
    }

    pub fn text_block_bytes(&self) -> usize {
        ((self.block_tokens as f64 * self.bytes_per_token).round() as usize).max(1)
    }

    fn tokens_for_bytes(&self, bytes: u64) -> u64 {
        (bytes as f64 / self.bytes_per_token).ceil() as u64
    }
}

/// Everything routing needs from one request body.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    /// Estimated prompt tokens (exact for token-list prompts).
    pub prompt_tokens: u64,
    /// Tokens per block in `blocks` (equal to HashConfig::block_tokens).
    pub block_tokens: u32,
    /// Chained hashes of the prompt's full blocks, root first.
    pub blocks: Vec<u64>,
    /// Hash of the leading system/developer messages (or of the first message / first block when
    /// there is none): what `prefix_hash` routes on.
    pub system_hash: u64,
    /// Whether `blocks` are keys of exact token ids or of the canonical byte stream.
    pub key_space: KeySpace,
}

// Separators of the canonical stream: bytes that never occur in UTF-8 text of a JSON string
// would be ideal; ASCII control characters are close enough and keep fields from running together.
const FIELD_SEP: &[u8] = b"\x1e";
const MSG_END: &[u8] = b"\x1d";

/// Streams bytes into fixed-size blocks and emits one chained hash per full block. Works on
/// borrowed slices; copies only the bytes that straddle a block boundary.
struct Chain {
    block: usize,
    parent: u64,
    buf: Vec<u8>,
    blocks: Vec<u64>,
    total: u64,
}

impl Chain {
    fn new(block: usize, root: u64, size_hint: usize) -> Self {
        Chain {
            block,
            parent: root,
            buf: Vec::with_capacity(block),
            blocks: Vec::with_capacity(size_hint / block + 1),
            total: 0,
        }
    }

    #[inline]
    fn emit(&mut self, data: &[u8]) {
        self.parent = xxh3_64_with_seed(data, self.parent);
        self.blocks.push(self.parent);
    }

    fn feed(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if !self.buf.is_empty() {
            let need = self.block - self.buf.len();
            if data.len() < need {
                self.buf.extend_from_slice(data);
                return;
            }
            self.buf.extend_from_slice(&data[..need]);
            data = &data[need..];
            let buf = std::mem::take(&mut self.buf);
            self.emit(&buf);
            self.buf = buf;
            self.buf.clear();
        }
        while data.len() >= self.block {
            let (head, rest) = data.split_at(self.block);
            self.emit(head);
            data = rest;
        }
        self.buf.extend_from_slice(data);
    }
}

/// Public for benchmarks and tests: the chained block hashes of an arbitrary byte stream.
pub fn chain_hashes(data: &[u8], block: usize, root: u64) -> Vec<u64> {
    let mut c = Chain::new(block, root, data.len());
    c.feed(data);
    c.blocks
}

/// The chain of a token-id sequence: one key per full block of `block_tokens` ids, each xxh3 of the
/// block's ids (u32 little-endian) seeded with its parent's key, the first seeded with `root`. It is
/// the one definition of a block's identity in token space: token-list prompts, tokenized text
/// and the engine's KV events (`BlockStored.token_ids`, rehashed along the parent chain) all key
/// blocks with it, so an exact view never depends on the engine's own hash function.
pub fn token_chain(tokens: &[u32], block_tokens: usize, root: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block_tokens.max(1));
    let mut parent = root;
    let mut buf = Vec::with_capacity(block_tokens * 4);
    for block in tokens.chunks_exact(block_tokens.max(1)) {
        parent = token_block_key(block, parent, &mut buf);
        out.push(parent);
    }
    out
}

/// One block's key from its ids and its parent's key (`buf` is scratch).
#[inline]
pub fn token_block_key(block: &[u32], parent: u64, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    buf.extend(block.iter().flat_map(|x| x.to_le_bytes()));
    xxh3_64_with_seed(buf, parent)
}

/// Seed of a chain: the model name, because two models (or LoRA adapters) on one server never
/// share KV blocks.
pub fn chain_root(model: &str) -> u64 {
    xxh3_64(model.as_bytes()) ^ 0x6b76_726f_7574_6500
}

// ---- body shapes (borrowing: unescaped strings are not copied) ----

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    instructions: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Content<'a>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Default)]
enum Content<'a> {
    #[default]
    Empty,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    // Non-text parts enter the stream as their raw JSON: the same image URL twice is the same
    // prefix, which is all the cache cares about.
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_audio: Option<&'a RawValue>,
    #[serde(borrow, default)]
    file: Option<&'a RawValue>,
    #[serde(borrow, default)]
    video_url: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(Content::Empty)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(Content::Empty)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(p) = seq.next_element::<Part<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Completion prompts: a string, a token list, or a batch of either (the first element is used:
/// a batch goes to one backend, and its first prompt is the one that best predicts cache reuse).
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptRepr<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Tokens(Vec<u32>),
    TextBatch(#[serde(borrow)] Vec<Cow<'a, str>>),
    TokenBatch(Vec<Vec<u32>>),
}

impl Message<'_> {
    fn feed(&self, out: &mut dyn FnMut(&[u8])) {
        out(self.role.as_bytes());
        out(FIELD_SEP);
        if let Some(n) = &self.name {
            out(n.as_bytes());
            out(FIELD_SEP);
        }
        match &self.content {
            Content::Empty => {}
            Content::Text(t) => out(t.as_bytes()),
            Content::Parts(parts) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        out(t.as_bytes());
                    }
                    for raw in [&p.image_url, &p.input_audio, &p.file, &p.video_url].into_iter().flatten() {
                        out(raw.get().as_bytes());
                    }
                    out(FIELD_SEP);
                }
            }
        }
        if let Some(id) = &self.tool_call_id {
            out(FIELD_SEP);
            out(id.as_bytes());
        }
        if let Some(tc) = &self.tool_calls {
            out(FIELD_SEP);
            out(tc.get().as_bytes());
        }
        out(MSG_END);
    }

    fn is_system(&self) -> bool {
        self.role == "system" || self.role == "developer"
    }
}

/// Parse a request body. Pure function: same bytes, same result.
pub fn parse(body: &[u8], endpoint: Endpoint, cfg: &HashConfig) -> Result<Request> {
    // serde would also read a struct from a JSON array (fields by position): only objects are bodies.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(diagnose(body, None));
    }
    if json_depth::deeper_than(body, json_depth::MAX_DEPTH) {
        let msg = format!("request body nests arrays or objects deeper than {} levels", json_depth::MAX_DEPTH);
        return Err(CoreError::malformed(None, msg));
    }
    let top: Top = match serde_json::from_slice(body) {
        Ok(t) => t,
        Err(e) => return Err(diagnose(body, Some(e))),
    };
    let model = match top.model {
        Some(m) if !m.is_empty() => m.into_owned(),
        Some(_) => return Err(CoreError::malformed(Some("model"), "`model` must not be empty")),
        None => return Err(CoreError::malformed(Some("model"), "missing required field `model`")),
    };
    let root = chain_root(&model);
    let text_block = cfg.text_block_bytes();
    let mut key_space = KeySpace::Bytes;
    let (prompt_tokens, blocks, system_hash) = match endpoint {
        Endpoint::Chat => {
            let messages = top
                .messages
                .ok_or_else(|| CoreError::malformed(Some("messages"), "missing required field `messages`"))?;
            if messages.is_empty() {
                return Err(CoreError::malformed(Some("messages"), "`messages` must not be empty"));
            }
            let mut chain = Chain::new(text_block, root, body.len());
            if let Some(tools) = top.tools {
                // Chat templates render tool definitions ahead of the conversation.
                chain.feed(tools.get().as_bytes());
                chain.feed(MSG_END);
            }
            let mut sys = Xxh3::new();
            let n_sys = messages.iter().take_while(|m| m.is_system()).count();
            for (i, m) in messages.iter().enumerate() {
                if i < n_sys.max(1) {
                    m.feed(&mut |b: &[u8]| {
                        sys.update(b);
                        chain.feed(b)
                    });
                } else {
                    m.feed(&mut |b: &[u8]| chain.feed(b));
                }
            }
            (cfg.tokens_for_bytes(chain.total), chain.blocks, sys.digest())
        }
        Endpoint::Completions => {
            let raw =
                top.prompt.ok_or_else(|| CoreError::malformed(Some("prompt"), "missing required field `prompt`"))?;
            let repr: PromptRepr = serde_json::from_str(raw.get()).map_err(|_| {
                CoreError::malformed(Some("prompt"), "`prompt` must be a string, a token list, or a list of either")
            })?;
            let first_text = |t: &str| {
                let c = chain_hashes(t.as_bytes(), text_block, root);
                let sh = c.first().copied().unwrap_or_else(|| xxh3_64(t.as_bytes()));
                (cfg.tokens_for_bytes(t.len() as u64), c, sh)
            };
            let tokens = |t: &[u32]| {
                let c = token_chain(t, cfg.block_tokens as usize, root);
                let sh = c.first().copied().unwrap_or_else(|| {
                    let bytes: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
                    xxh3_64(&bytes)
                });
                (t.len() as u64, c, sh)
            };
            if matches!(repr, PromptRepr::Tokens(_) | PromptRepr::TokenBatch(_)) {
                key_space = KeySpace::Tokens;
            }
            match repr {
                PromptRepr::Text(t) => first_text(&t),
                PromptRepr::Tokens(t) => tokens(&t),
                PromptRepr::TextBatch(b) => first_text(b.first().map(|c| c.as_ref()).unwrap_or("")),
                PromptRepr::TokenBatch(b) => tokens(b.first().map(|v| v.as_slice()).unwrap_or(&[])),
            }
        }
        Endpoint::Embeddings | Endpoint::Responses => {
            let raw = top.input.ok_or_else(|| CoreError::malformed(Some("input"), "missing required field `input`"))?;
            let mut chain = Chain::new(text_block, root, body.len());
            let mut sys = Xxh3::new();
            if let Some(instr) = &top.instructions {
                sys.update(instr.as_bytes());
                chain.feed(b"system");
                chain.feed(FIELD_SEP);
                chain.feed(instr.as_bytes());
                chain.feed(MSG_END);
            }
            let text = raw.get();
            if let Ok(s) = serde_json::from_str::<Cow<str>>(text) {
                chain.feed(s.as_bytes());
            } else if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) {
                // Responses input items look like chat messages; when they are, canonicalise them
                // like chat so conversations continue their chains; otherwise use the raw JSON.
                for item in items {
                    match serde_json::from_str::<Message>(item.get()) {
                        Ok(m) => m.feed(&mut |b: &[u8]| chain.feed(b)),
                        Err(_) => {
                            chain.feed(item.get().as_bytes());
                            chain.feed(MSG_END);
                        }
                    }
                }
            } else {
                return Err(CoreError::malformed(Some("input"), "`input` must be a string or an array"));
            }
            if top.instructions.is_none() {
                sys.update(&chain.blocks.first().copied().unwrap_or(chain.parent).to_le_bytes());
            }
            (cfg.tokens_for_bytes(chain.total), chain.blocks, sys.digest())
        }
    };
    let max_tokens = top.max_completion_tokens.or(top.max_tokens).or(top.max_output_tokens);
    Ok(Request {
        endpoint,
        model,
        stream: top.stream.unwrap_or(false),
        max_tokens,
        prompt_tokens,
        block_tokens: cfg.block_tokens,
        blocks,
        system_hash,
        key_space,
    })
}

/// `parse`, then, when `tokenizers` has the request's model, the chat or completions prompt's
/// exact token ids as its blocks (`token_chain` from the model's root, salted by `cache_salt`) and
/// its exact token count. A prompt the tokenizer cannot take (a template error, image parts)
/// keeps the byte chain, and `key_space` says so.
pub fn parse_with(body: &[u8], endpoint: Endpoint, cfg: &HashConfig, tokenizers: &TokenizerSet) -> Result<Request> {
    let mut req = parse(body, endpoint, cfg)?;
    if req.key_space == KeySpace::Tokens || !matches!(endpoint, Endpoint::Chat | Endpoint::Completions) {
        return Ok(req);
    }
    let Some(tok) = tokenizers.get(&req.model) else { return Ok(req) };
    // `parse` accepted the body, so these fields have the shapes it checked.
    let extra: TokenFields = serde_json::from_slice(body).map_err(|e| CoreError::malformed(None, e.to_string()))?;
    let ids = match endpoint {
        Endpoint::Chat => tok.chat_ids(body),
        _ => match extra.prompt.map(|p| serde_json::from_str::<PromptRepr>(p.get())) {
            Some(Ok(PromptRepr::Text(t))) => tok.encode_prompt(&t),
            Some(Ok(PromptRepr::TextBatch(b))) => tok.encode_prompt(b.first().map(|c| c.as_ref()).unwrap_or("")),
            _ => Err("not a text prompt".to_owned()),
        },
    };
    match ids {
        Ok(ids) => {
            let mut root = chain_root(&req.model);
            if let Some(salt) = extra.cache_salt.filter(|s| !s.is_empty()) {
                // vLLM mixes the salt into the first block's hash, so every block of a salted
                // prompt differs from the unsalted one's: seeding the root does the same here.
                root = xxh3_64_with_seed(salt.as_bytes(), root);
            }
            req.blocks = token_chain(&ids, cfg.block_tokens as usize, root);
            req.prompt_tokens = ids.len() as u64;
            req.key_space = KeySpace::Tokens;
        }
        Err(_) => req.key_space = KeySpace::BytesFallback,
    }
    Ok(req)
}

#[derive(Deserialize)]
struct TokenFields<'a> {
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_salt: Option<Cow<'a, str>>,
}

/// Slow path, only on error: find which field is to blame so the client gets a useful `param`.
fn diagnose(body: &[u8], original: Option<serde_json::Error>) -> CoreError {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return CoreError::malformed(None, format!("request body is not valid JSON: {e}")),
    };
    let Some(obj) = v.as_object() else {
        return CoreError::malformed(None, "request body must be a JSON object");
    };
    type Check = (&'static str, fn(&serde_json::Value) -> bool, &'static str);
    let checks: [Check; 7] = [
        ("model", |v| v.is_string() || v.is_null(), "`model` must be a string"),
        ("stream", |v| v.is_boolean() || v.is_null(), "`stream` must be a boolean"),
        ("max_tokens", |v| v.is_u64() || v.is_null(), "`max_tokens` must be a non-negative integer"),
        (
            "max_completion_tokens",
            |v| v.is_u64() || v.is_null(),
            "`max_completion_tokens` must be a non-negative integer",
        ),
        ("max_output_tokens", |v| v.is_u64() || v.is_null(), "`max_output_tokens` must be a non-negative integer"),
        ("instructions", |v| v.is_string() || v.is_null(), "`instructions` must be a string"),
        (
            "messages",
            |v| v.is_null() || serde_json::from_value::<Vec<OwnedMessageCheck>>(v.clone()).is_ok(),
            "`messages` must be an array of messages, each with a string `role` and string or array `content`",
        ),
    ];
    for (field, ok, msg) in checks {
        if let Some(val) = obj.get(field) {
            if !ok(val) {
                return CoreError::malformed(Some(field), msg);
            }
        }
    }
    match original {
        Some(e) => CoreError::malformed(None, format!("invalid request body: {e}")),
        None => CoreError::malformed(None, "invalid request body"),
    }
}

/// Owned twin of `Message` used only by `diagnose` (serde_json::Value cannot lend borrowed strings).
#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedMessageCheck {
    role: String,
    #[serde(default)]
    content: Option<OwnedContentCheck>,
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum OwnedContentCheck {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HashConfig {
        HashConfig { block_tokens: 4, bytes_per_token: 4.0 } // 16-byte text blocks
    }

    fn chat(messages: &str) -> Vec<u8> {
        format!(r#"{{"model":"m","messages":{messages}}}"#).into_bytes()
    }

    fn param_of(e: CoreError) -> Option<String> {
        match e {
            CoreError::MalformedRequest { param, .. } => param,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn reads_model_stream_and_max_tokens() {
        let r = parse(
            br#"{"model":"llama","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"hi"}]}"#,
            Endpoint::Chat,
            &cfg(),
        )
        .unwrap();
        assert_eq!(r.model, "llama");
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(12));
        let r = parse(
            br#"{"model":"x","max_completion_tokens":3,"max_tokens":9,"messages":[{"role":"user","content":"a"}]}"#,
            Endpoint::Chat,
            &cfg(),
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(3));
        assert!(!r.stream);
    }

    #[test]
    fn malformed_bodies_name_the_param() {
        let c = cfg();
        assert_eq!(param_of(parse(b"{not json", Endpoint::Chat, &c).unwrap_err()), None);
        assert_eq!(param_of(parse(b"[1,2]", Endpoint::Chat, &c).unwrap_err()), None);
        assert_eq!(param_of(parse(br#"{"messages":[]}"#, Endpoint::Chat, &c).unwrap_err()).as_deref(), Some("model"));
        assert_eq!(
            param_of(parse(br#"{"model":3,"messages":[]}"#, Endpoint::Chat, &c).unwrap_err()).as_deref(),
            Some("model")
        );
        assert_eq!(param_of(parse(br#"{"model":"m"}"#, Endpoint::Chat, &c).unwrap_err()).as_deref(), Some("messages"));
        assert_eq!(
            param_of(parse(br#"{"model":"m","messages":"hi"}"#, Endpoint::Chat, &c).unwrap_err()).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(parse(br#"{"model":"m","messages":[{"content":"x"}]}"#, Endpoint::Chat, &c).unwrap_err())
                .as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(
                parse(
                    br#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
                    Endpoint::Chat,
                    &c
                )
                .unwrap_err()
            )
            .as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(
                parse(
                    br#"{"model":"m","max_tokens":-1,"messages":[{"role":"user","content":"x"}]}"#,
                    Endpoint::Chat,
                    &c
                )
                .unwrap_err()
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(parse(br#"{"model":"m"}"#, Endpoint::Completions, &c).unwrap_err()).as_deref(),
            Some("prompt")
        );
        assert_eq!(
            param_of(parse(br#"{"model":"m","prompt":{}}"#, Endpoint::Completions, &c).unwrap_err()).as_deref(),
            Some("prompt")
        );
        assert_eq!(
            param_of(parse(br#"{"model":"m"}"#, Endpoint::Embeddings, &c).unwrap_err()).as_deref(),
            Some("input")
        );
        assert_eq!(
            param_of(parse(br#"{"model":"m"}"#, Endpoint::Responses, &c).unwrap_err()).as_deref(),
            Some("input")
        );
    }

    #[test]
    fn next_turn_extends_the_chain() {
        let c = cfg();
        let t1 = chat(
            r#"[{"role":"system","content":"You are a helpful assistant who answers briefly."},{"role":"user","content":"What is the capital of France, and why?"}]"#,
        );
        let t2 = chat(
            r#"[{"role":"system","content":"You are a helpful assistant who answers briefly."},{"role":"user","content":"What is the capital of France, and why?"},{"role":"assistant","content":"Paris."},{"role":"user","content":"And of Spain?"}]"#,
        );
        let a = parse(&t1, Endpoint::Chat, &c).unwrap();
        let b = parse(&t2, Endpoint::Chat, &c).unwrap();
        assert!(a.blocks.len() >= 4);
        assert!(b.blocks.len() > a.blocks.len());
        assert_eq!(&b.blocks[..a.blocks.len()], &a.blocks[..]);
        assert_eq!(a.system_hash, b.system_hash);
    }

    #[test]
    fn json_spelling_does_not_matter() {
        let c = cfg();
        let a = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 and more text here to fill blocks"}]}"#,
            Endpoint::Chat,
            &c,
        )
        .unwrap();
        let b = parse("{ \"messages\" : [ { \"content\" : \"café and more text here to fill blocks\", \"role\" : \"user\" } ], \"model\" : \"m\" }".as_bytes(), Endpoint::Chat, &c).unwrap();
        assert_eq!(a.blocks, b.blocks);
    }

    #[test]
    fn multipart_and_tool_content_enter_the_stream() {
        let c = cfg();
        let plain =
            parse(&chat(r#"[{"role":"user","content":"describe this picture please"}]"#), Endpoint::Chat, &c).unwrap();
        let parts = parse(&chat(r#"[{"role":"user","content":[{"type":"text","text":"describe this picture please"},{"type":"image_url","image_url":{"url":"http://x/a.png"}}]}]"#), Endpoint::Chat, &c).unwrap();
        assert_ne!(plain.blocks, parts.blocks);
        assert!(parts.prompt_tokens > plain.prompt_tokens);
        let tool = parse(&chat(r#"[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny and warm all day long"}]"#), Endpoint::Chat, &c).unwrap();
        assert!(tool.prompt_tokens > 20);
        let other_tool = parse(&chat(r#"[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c2","type":"function","function":{"name":"w","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c2","content":"sunny and warm all day long"}]"#), Endpoint::Chat, &c).unwrap();
        assert_ne!(tool.blocks.last(), other_tool.blocks.last());
    }

    #[test]
    fn different_models_never_share_chains() {
        let c = cfg();
        let a =
            parse(br#"{"model":"a","prompt":"the same long prompt text for both models"}"#, Endpoint::Completions, &c)
                .unwrap();
        let b =
            parse(br#"{"model":"b","prompt":"the same long prompt text for both models"}"#, Endpoint::Completions, &c)
                .unwrap();
        assert_eq!(a.blocks.len(), b.blocks.len());
        assert_ne!(a.blocks[0], b.blocks[0]);
    }

    #[test]
    fn completion_prompt_forms() {
        let c = cfg();
        let t = parse(br#"{"model":"m","prompt":[1,2,3,4,5,6,7,8,9]}"#, Endpoint::Completions, &c).unwrap();
        assert_eq!(t.prompt_tokens, 9);
        assert_eq!(t.blocks.len(), 2); // 4-token blocks, the partial third is not cached by vLLM either
        let tb = parse(br#"{"model":"m","prompt":[[1,2,3,4,5,6,7,8,9],[3]]}"#, Endpoint::Completions, &c).unwrap();
        assert_eq!(tb.blocks, t.blocks);
        let s = parse(br#"{"model":"m","prompt":["abcdefghijklmnopqrstuvwxyz0123456789"]}"#, Endpoint::Completions, &c)
            .unwrap();
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(s.prompt_tokens, 9);
    }

    #[test]
    fn chain_is_prefix_stable_for_any_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = chain_hashes(&data, 64, 1);
        for split in [0usize, 1, 63, 64, 65, 500, 999] {
            let mut c = Chain::new(64, 1, 0);
            c.feed(&data[..split]);
            c.feed(&data[split..]);
            assert_eq!(c.blocks, whole, "split at {split}");
        }
        assert_eq!(whole.len(), 1000 / 64);
    }

    #[test]
    fn responses_and_embeddings() {
        let c = cfg();
        let r = parse(br#"{"model":"m","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hello there, how are you doing today"}]}],"max_output_tokens":5}"#, Endpoint::Responses, &c).unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert!(r.blocks.len() >= 2);
        let e =
            parse(br#"{"model":"m","input":"some text to embed, long enough for a block"}"#, Endpoint::Embeddings, &c)
                .unwrap();
        assert!(!e.blocks.is_empty());
        let e2 = parse(br#"{"model":"m","input":[[1,2,3],[4]]}"#, Endpoint::Embeddings, &c).unwrap();
        assert!(e2.prompt_tokens > 0);
    }
}
