//! Structured chat conversations: the reader's two promises about chains, on arbitrary content.
//! - Spelling does not matter: the same messages sent compact or with every character escaped
//!   and spaces between tokens read as the same request.
//! - A conversation continues its chain: the full blocks of turn k are a prefix of turn k+1's.
#![no_main]
use arbitrary::Arbitrary;
use kvroute_core::{parse, Endpoint, HashConfig, Request};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Message {
    role: u8,
    content: String,
    name: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct Conversation {
    model: String,
    messages: Vec<Message>,
    block_tokens: u8,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn compact(model: &str, messages: &[Message]) -> Vec<u8> {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut v = serde_json::json!({"role": ROLES[m.role as usize % ROLES.len()], "content": m.content});
            if let Some(n) = &m.name {
                v["name"] = serde_json::Value::from(n.as_str());
            }
            v
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"model": model, "messages": messages})).expect("serialisable")
}

/// Every string character as a \u escape (surrogate pairs above the BMP), whitespace around every
/// structural character: the same JSON value spelled as differently as the grammar allows.
fn spelled_out(json: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(json).expect("serde_json writes UTF-8");
    let mut out = String::with_capacity(text.len() * 6);
    let mut in_string = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '"' => {
                    in_string = false;
                    out.push('"');
                }
                '\\' => {
                    // Keep serde_json's own escapes as they are: they already spell one character.
                    out.push('\\');
                    let kind = chars.next().expect("escape has a second character");
                    out.push(kind);
                    if kind == 'u' {
                        out.extend(chars.by_ref().take(4));
                    }
                }
                c => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
        } else {
            match c {
                '"' => {
                    in_string = true;
                    out.push('"');
                }
                '{' | '}' | '[' | ']' | ':' | ',' => {
                    out.push_str(" \n");
                    out.push(c);
                    out.push_str("\t ");
                }
                c => out.push(c),
            }
        }
    }
    out.into_bytes()
}

fn read(body: &[u8], cfg: &HashConfig) -> Request {
    parse(body, Endpoint::Chat, cfg).unwrap_or_else(|e| panic!("a well-formed chat body was refused: {e}"))
}

fuzz_target!(|c: Conversation| {
    if c.model.is_empty() || c.messages.is_empty() {
        return;
    }
    let cfg = HashConfig::new(c.block_tokens as u32 % 8 + 1, 1.0).expect("valid config");
    let mut previous: Option<Request> = None;
    for turn in 1..=c.messages.len() {
        let body = compact(&c.model, &c.messages[..turn]);
        let r = read(&body, &cfg);
        assert_eq!(read(&spelled_out(&body), &cfg), r, "spelling changed the request");
        if let Some(p) = &previous {
            assert!(r.blocks.starts_with(&p.blocks), "turn {turn} does not continue turn {}'s chain", turn - 1);
            assert!(r.prompt_tokens > p.prompt_tokens);
        }
        previous = Some(r);
    }
});
