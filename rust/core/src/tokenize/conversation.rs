//! A chat body as vLLM 0.32 hands it to the chat template: messages in vLLM's "string" content
//! format (text parts joined by newlines; role, content, and name / tool_calls / tool_call_id when
//! set, with each tool call's JSON `arguments` decoded to an object), tools as
//! `ChatCompletionToolsParam.model_dump()` writes them, and the request's chat_template_kwargs.
//! Each message also gets a chained key (tools, kwargs and every message up to it), which is what
//! the prefix cache looks turns up by.
use minijinja::value::Value;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::to_value;

/// Why a chat could not be tokenized: the request then routes on its byte chain.
pub type Unsupported = String;

pub struct Conversation {
    pub messages: Vec<Value>,
    /// keys[k]: the conversation up to and including message k (with tools and kwargs).
    pub keys: Vec<u64>,
    pub tools: Value,
    pub kwargs: Vec<(String, Value)>,
    pub add_generation_prompt: bool,
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    chat_template_kwargs: Option<&'a RawValue>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    continue_final_message: Option<bool>,
}

// Variables a request may not override through chat_template_kwargs: the render sets them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

pub fn read(body: &[u8]) -> Result<Conversation, Unsupported> {
    let b: ChatBody = serde_json::from_slice(body).map_err(|e| format!("chat body: {e}"))?;
    if b.continue_final_message == Some(true) {
        // vLLM then trims the rendered text after the last message; not modelled.
        return Err("continue_final_message is not modelled".into());
    }
    let mut seed = xxh3_64_with_seed(b"kvroute-chat", 0);
    let tools = match b.tools {
        Some(raw) if raw.get() != "null" => {
            seed = xxh3_64_with_seed(raw.get().as_bytes(), seed);
            let list: Vec<Json> = serde_json::from_str(raw.get()).map_err(|_| "`tools` must be a list".to_owned())?;
            to_value(list.into_iter().map(vllm_tool).collect::<Result<Vec<_>, _>>()?)
        }
        _ => Value::from(()),
    };
    let mut kwargs = Vec::new();
    if let Some(raw) = b.chat_template_kwargs {
        seed = xxh3_64_with_seed(raw.get().as_bytes(), seed ^ 1);
        if let Json::Object(m) = serde_json::from_str(raw.get()).map_err(|e| format!("chat_template_kwargs: {e}"))? {
            kwargs.extend(m.into_iter().filter(|(k, _)| !RESERVED.contains(&k.as_str())).map(|(k, v)| (k, to_value(v))));
        } else if raw.get() != "null" {
            return Err("`chat_template_kwargs` must be an object".into());
        }
    }
    let mut messages = Vec::with_capacity(b.messages.len());
    let mut keys = Vec::with_capacity(b.messages.len());
    for raw in &b.messages {
        let m: Json = serde_json::from_str(raw.get()).map_err(|e| format!("message: {e}"))?;
        messages.push(to_value(template_message(m)?));
        seed = xxh3_64_with_seed(raw.get().as_bytes(), seed);
        keys.push(seed);
    }
    Ok(Conversation { messages, keys, tools, kwargs, add_generation_prompt: b.add_generation_prompt.unwrap_or(true) })
}

fn template_message(m: Json) -> Result<Json, Unsupported> {
    let Json::Object(mut m) = m else { return Err("a message must be an object".into()) };
    let role = match m.remove("role") {
        Some(Json::String(r)) => r,
        _ => return Err("a message needs a string `role`".into()),
    };
    let content = match m.remove("content") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s,
        Some(Json::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.get("type").and_then(Json::as_str), p.get("text").and_then(Json::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t.to_owned()),
                    // Images, audio, files: their placeholders and hashes are the engine's.
                    _ => return Err("non-text content parts are not tokenized".into()),
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err("message content must be a string or a list of parts".into()),
    };
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role));
    out.insert("content".into(), Json::String(content));
    for key in ["name", "tool_calls", "tool_call_id"] {
        match m.remove(key) {
            None | Some(Json::Null) => {}
            Some(Json::Array(calls)) if key == "tool_calls" => {
                out.insert(key.into(), Json::Array(calls.into_iter().map(decoded_arguments).collect()));
            }
            Some(v) => {
                out.insert(key.into(), v);
            }
        }
    }
    Ok(Json::Object(out))
}

/// vLLM decodes a tool call's `arguments` string to an object for the template; anything that is
/// not a JSON object becomes `{}` (renderers/chat_utils.py).
fn decoded_arguments(mut call: Json) -> Json {
    if let Some(Json::Object(f)) = call.get_mut("function") {
        let decoded = match f.get("arguments") {
            Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
                Ok(o @ Json::Object(_)) => o,
                _ => Json::Object(Map::new()),
            },
            Some(o @ Json::Object(_)) => o.clone(),
            _ => Json::Object(Map::new()),
        };
        f.insert("arguments".into(), decoded);
    }
    call
}

/// One tool as vLLM's `ChatCompletionToolsParam.model_dump()` gives it to the template: its
/// declared fields in order with their defaults (`function.strict` and `function.defer_loading`
/// only when set; the outer `defer_loading` copied into the function when only it is set, and kept
/// outside only when set), extra keys dropped at both levels: vLLM 0.32's serializers keep only
/// `model_fields` and pop a `None` `defer_loading` (seen against real vLLM in the KV-event tier).
fn vllm_tool(t: Json) -> Result<Json, Unsupported> {
    let Json::Object(mut t) = t else { return Err("a tool must be an object".into()) };
    let Some(Json::Object(mut f)) = t.remove("function") else { return Err("a tool needs a `function` object".into()) };
    let outer_defer = t.remove("defer_loading").unwrap_or(Json::Null);
    let mut func = Map::new();
    match f.remove("name") {
        Some(n @ Json::String(_)) => func.insert("name".into(), n),
        _ => return Err("a tool function needs a string `name`".into()),
    };
    func.insert("description".into(), f.remove("description").unwrap_or(Json::Null));
    func.insert("parameters".into(), f.remove("parameters").unwrap_or(Json::Null));
    if let Some(s) = f.remove("strict").filter(|s| !s.is_null()) {
        func.insert("strict".into(), s);
    }
    match f.remove("defer_loading").filter(|d| !d.is_null()) {
        Some(d) => func.insert("defer_loading".into(), d),
        None if !outer_defer.is_null() => func.insert("defer_loading".into(), outer_defer.clone()),
        None => None,
    };
    let mut out = Map::new();
    out.insert("type".into(), t.remove("type").unwrap_or_else(|| Json::String("function".into())));
    out.insert("function".into(), Json::Object(func));
    if !outer_defer.is_null() {
        out.insert("defer_loading".into(), outer_defer);
    }
    Ok(Json::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_tools_and_keys() {
        let body = br#"{"model":"m","tools":[{"type":"function","function":{"name":"w","x":1}}],
            "chat_template_kwargs":{"enable_thinking":false,"messages":"ignored"},
            "messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                        {"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"w","arguments":"{\"c\":\"d\"}"}}]}]}"#;
        let c = read(body).unwrap();
        assert_eq!(c.messages[0].get_attr("content").unwrap().as_str(), Some("a\nb"));
        let call = c.messages[1].get_attr("tool_calls").unwrap().get_item_by_index(0).unwrap();
        let args = call.get_attr("function").unwrap().get_attr("arguments").unwrap().get_attr("c").unwrap();
        assert_eq!(args.as_str(), Some("d"));
        assert_eq!(c.kwargs.len(), 1);
        assert!(c.add_generation_prompt);
        let tool = serde_json::to_string(&c.tools).unwrap();
        assert_eq!(tool, r#"[{"type":"function","function":{"name":"w","description":null,"parameters":null}}]"#);
        let shorter = read(br#"{"tools":[{"type":"function","function":{"name":"w","x":1}}],"chat_template_kwargs":{"enable_thinking":false,"messages":"ignored"},"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_eq!(shorter.keys[0], c.keys[0], "same leading message, same tools and kwargs: same key");
        let no_tools = read(br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_ne!(no_tools.keys[0], c.keys[0]);
        assert!(read(br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#).is_err());
    }
}
