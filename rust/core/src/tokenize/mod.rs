//! Token-exact prompts: a model's HF tokenizer and chat template turn a request into the token ids
//! vLLM will see, so its block keys (`request::token_chain`) are the engine's own blocks.
//!
//! Everything arrives as strings (the binding's caller reads the model directory): tokenizer.json,
//! tokenizer_config.json and the chat template. Chats are rendered whole, then tokenized with the
//! prefix cache where the template and tokenizer allow it: a load-time probe checks that
//! tokenizing a rendered conversation in per-message pieces gives the same ids as tokenizing it
//! whole, and at run time a piece boundary is used only where the text after it starts with an
//! added token (which the tokenizer splits out before any normalizer or pre-tokenizer sees the text).
mod conversation;
mod prefix_cache;
mod pyjson;
mod strftime;
mod template;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::value::Value;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::error::{CoreError, Result};
use conversation::Conversation;
use prefix_cache::PrefixCache;
use template::{ChatTemplate, Vars};

pub use conversation::Unsupported;

/// Token ids the prefix cache holds per model by default (4 bytes each): about 16 MiB.
pub const DEFAULT_CACHE_IDS: usize = 1 << 22;

// transformers hands a template its special_tokens_map as plain strings.
const SPECIAL_TOKENS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    specials: Vec<(String, Value)>,
    /// Added tokens a piece boundary may sit in front of (not lstrip: those eat the text before).
    boundary_tokens: Vec<String>,
    per_message: bool,
    cache: Mutex<PrefixCache>,
    /// Text bytes encoded so far: what the prefix cache saves shows here.
    encoded_bytes: AtomicU64,
}

impl ModelTokenizer {
    /// `chat_template` (the model's chat_template.jinja, when it has one) wins over
    /// tokenizer_config.json's `chat_template`; with neither, only completions are tokenized.
    pub fn new(tokenizer_json: &str, tokenizer_config_json: Option<&str>, chat_template: Option<&str>) -> Result<Self> {
        Self::with_cache(tokenizer_json, tokenizer_config_json, chat_template, DEFAULT_CACHE_IDS)
    }

    pub fn with_cache(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
        chat_template: Option<&str>,
        cache_ids: usize,
    ) -> Result<Self> {
        let mut tokenizer =
            Tokenizer::from_str(tokenizer_json).map_err(|e| CoreError::config(format!("tokenizer.json: {e}")))?;
        // transformers ignores a tokenizer.json's own truncation and padding unless asked: so does vLLM.
        tokenizer.with_truncation(None).map_err(|e| CoreError::config(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let config: Json = match tokenizer_config_json {
            Some(s) => serde_json::from_str(s).map_err(|e| CoreError::config(format!("tokenizer_config.json: {e}")))?,
            None => Json::Null,
        };
        let specials = SPECIAL_TOKENS
            .iter()
            .filter_map(|&k| token_text(config.get(k)?).map(|t| (k.to_owned(), Value::from(t))))
            .collect();
        let source = match chat_template {
            Some(t) => Some(t.to_owned()),
            None => config_template(&config)?,
        };
        let template = match source {
            Some(src) => Some(ChatTemplate::new(&src).map_err(CoreError::config)?),
            None => None,
        };
        let mut boundary_tokens: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| !t.lstrip && !t.single_word && !t.content.is_empty())
            .map(|t| t.content.clone())
            .collect();
        boundary_tokens.sort();
        let mut m = ModelTokenizer {
            tokenizer,
            template,
            specials,
            boundary_tokens,
            per_message: false,
            cache: Mutex::new(PrefixCache::new(cache_ids)),
            encoded_bytes: AtomicU64::new(0),
        };
        // Per message only where the probe agreed and found a boundary to cache at.
        m.per_message = m.template.is_some() && m.pieces_agree_with_whole() && m.cached_ids() > 0;
        // The probe's entries are not anyone's conversation.
        m.cache = Mutex::new(PrefixCache::new(cache_ids));
        Ok(m)
    }

    /// Whether chats are tokenized per message through the prefix cache (the load-time probe agreed).
    pub fn per_message(&self) -> bool {
        self.per_message
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes.load(Ordering::Relaxed)
    }

    /// Token ids the prefix cache holds now.
    pub fn cached_ids(&self) -> usize {
        self.lock().held_ids()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A completions prompt: vLLM encodes it with the tokenizer's special tokens (BOS...).
    pub fn encode_prompt(&self, text: &str) -> std::result::Result<Vec<u32>, Unsupported> {
        self.encode(text, true)
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, Unsupported> {
        if text.is_empty() && !add_special_tokens {
            return Ok(Vec::new());
        }
        self.encoded_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        let enc = self.tokenizer.encode_fast(text, add_special_tokens).map_err(|e| format!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A chat body's prompt ids: the rendered template, encoded without special tokens (the
    /// template writes its own, as transformers' apply_chat_template does for vLLM).
    pub fn chat_ids(&self, body: &[u8]) -> std::result::Result<Vec<u32>, Unsupported> {
        let conv = conversation::read(body)?;
        self.conversation_ids(&conv, self.per_message)
    }

    fn render(&self, conv: &Conversation, upto: usize, add_generation_prompt: bool) -> std::result::Result<String, Unsupported> {
        let template = self.template.as_ref().ok_or("the model has no chat template")?;
        let mut extra = self.specials.clone();
        extra.extend(conv.kwargs.iter().cloned());
        let vars = Vars { tools: &conv.tools, add_generation_prompt, extra: &extra };
        template.render(&conv.messages[..upto], &vars)
    }

    fn boundary_ok(&self, text: &str, at: usize) -> bool {
        let rest = &text[at..];
        self.boundary_tokens.iter().any(|t| rest.starts_with(t.as_str()))
    }

    fn conversation_ids(&self, conv: &Conversation, per_message: bool) -> std::result::Result<Vec<u32>, Unsupported> {
        let n = conv.messages.len();
        let full = self.render(conv, n, conv.add_generation_prompt)?;
        if !per_message {
            return self.encode(&full, false);
        }
        let hit = self.lock().longest(&conv.keys, &full).filter(|h| self.boundary_ok(&full, h.text_len));
        let (parent, mut from, mut ids) = match hit {
            Some(h) => (Some(h.key), h.text_len, h.ids),
            None => (None, 0, Vec::new()),
        };
        if parent != conv.keys.last().copied() {
            // Render the conversation without the generation prompt: the next turn starts with it.
            let prefix = self.render(conv, n, false)?;
            if prefix.len() >= from && full.starts_with(&prefix) && self.boundary_ok(&full, prefix.len()) {
                let seg = self.encode(&prefix[from..], false)?;
                ids.extend_from_slice(&seg);
                self.lock().insert(conv.keys[n - 1], parent, &prefix, seg);
                from = prefix.len();
            }
        }
        ids.extend(self.encode(&full[from..], false)?);
        Ok(ids)
    }

    /// Tokenizes a probe conversation turn by turn through the cache and whole, and says whether
    /// every turn agreed. Templates that refuse a system turn are probed without one.
    fn pieces_agree_with_whole(&self) -> bool {
        let turns = [
            ("system", "You are terse.  Answer in one line.\n"),
            ("user", "Hello there! What's 2+2?  "),
            ("assistant", " It is 4.\n\n"),
            ("user", "Et en français ? Ça fait quatre ✓"),
            ("assistant", "Oui: quatre.\t"),
            ("user", "thanks"),
        ];
        let start = [0usize, 1];
        'probe: for first in start {
            for upto in [first + 2, first + 4, turns.len()] {
                let msgs: Vec<String> = turns[first..upto]
                    .iter()
                    .map(|(r, c)| serde_json::json!({"role": r, "content": c}).to_string())
                    .collect();
                let body = format!(r#"{{"messages":[{}]}}"#, msgs.join(","));
                let Ok(conv) = conversation::read(body.as_bytes()) else { return false };
                let whole = match self.conversation_ids(&conv, false) {
                    Ok(ids) => ids,
                    Err(_) if upto == first + 2 => continue 'probe,
                    Err(_) => return false,
                };
                match self.conversation_ids(&conv, true) {
                    Ok(pieces) if pieces == whole => {}
                    _ => return false,
                }
            }
            return true;
        }
        false
    }
}

/// tokenizer_config.json's `chat_template`: a string, or a list of {name, template} from which
/// transformers picks "default".
fn config_template(config: &Json) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Json::as_str))
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| CoreError::config("tokenizer_config.json: chat_template lists no template named 'default'")),
        Some(_) => Err(CoreError::config("tokenizer_config.json: chat_template must be a string or a list")),
    }
}

// A special token in tokenizer_config.json is its text or a serialized AddedToken.
fn token_text(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(m) => m.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// The tokenizers a router uses, by the model name requests carry (a LoRA adapter's name maps to
/// its base model's tokenizer). Cloning shares the map; a change builds a new one, so a route
/// holds its copy without a lock while it tokenizes.
#[derive(Clone, Default)]
pub struct TokenizerSet {
    by_model: Arc<HashMap<String, Arc<ModelTokenizer>>>,
}

impl TokenizerSet {
    pub fn set(&mut self, model: &str, tokenizer: Option<Arc<ModelTokenizer>>) {
        let mut m = (*self.by_model).clone();
        match tokenizer {
            Some(t) => m.insert(model.to_owned(), t),
            None => m.remove(model),
        };
        self.by_model = Arc::new(m);
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelTokenizer>> {
        self.by_model.get(model)
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    pub fn models(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_model.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A serde value (a parsed JSON body part) as a template value.
pub(crate) fn to_value<T: serde::Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

#[cfg(test)]
mod tests;
