//! A model's chat template, rendered as transformers' `apply_chat_template` renders it for vLLM
//! 0.32: Jinja2 with trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, Python's
//! `json.dumps` as `tojson`, Python string and dict methods, `{% generation %}` marks ignored.
use minijinja::value::{Kwargs, Value};
use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind};

use super::pyjson;
use super::strftime;

const NAME: &str = "chat";

pub struct ChatTemplate {
    env: Environment<'static>,
}

/// What a render fills in besides the messages.
pub struct Vars<'a> {
    pub tools: &'a Value,
    pub add_generation_prompt: bool,
    /// special tokens first, then the request's chat_template_kwargs (which win, as in transformers).
    pub extra: &'a [(String, Value)],
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| describe(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", |v: Value, kwargs: Kwargs| -> Result<String, Error> {
            pyjson::dumps(&v, &pyjson::Style::from_kwargs(&kwargs)?)
        });
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime::now(&fmt));
        env.add_template_owned(NAME, without_generation_marks(source)).map_err(|e| describe(&e))?;
        Ok(ChatTemplate { env })
    }

    pub fn render(&self, messages: &[Value], vars: &Vars) -> Result<String, String> {
        // Later entries win: the request's kwargs over the special tokens, the render's own last.
        let mut ctx: BTreeMap<&str, Value> = vars.extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        ctx.insert("messages", Value::from(messages.to_vec()));
        ctx.insert("tools", vars.tools.clone());
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(vars.add_generation_prompt));
        let ctx = Value::from(ctx);
        let tmpl = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        tmpl.render(ctx).map_err(|e| describe(&e))
    }
}

fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("chat template: {e} (line {line})"),
        None => format!("chat template: {e}"),
    }
}

/// HF templates may wrap assistant text in `{% generation %}...{% endgeneration %}` (training
/// masks); minijinja has no custom tags, so each becomes an `if true` block with the same
/// whitespace-control marks, which renders its body unchanged and trims exactly as the tag did.
fn without_generation_marks(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start..start + len + 2];
        let inner = tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        let word = match inner {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match word {
            Some(w) => {
                let open = &tag[..2 + tag[2..].len() - tag[2..].trim_start_matches(['-', '+']).len()];
                let body = tag.trim_end_matches("%}");
                let close_marks = &body[body.trim_end_matches(['-', '+']).len()..];
                out.push_str(open);
                out.push(' ');
                out.push_str(w);
                out.push(' ');
                out.push_str(close_marks);
                out.push_str("%}");
            }
            None => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::to_value;

    fn vars<'a>(tools: &'a Value, extra: &'a [(String, Value)]) -> Vars<'a> {
        Vars { tools, add_generation_prompt: true, extra }
    }

    #[test]
    fn generation_marks_render_their_body() {
        assert_eq!(without_generation_marks("a{%- generation -%}b{% endgeneration %}c"), "a{%- if true -%}b{% endif %}c");
        let t = ChatTemplate::new("{% for m in messages %}{% generation %}\n{{ m.content }}{% endgeneration %}\n{% endfor %}").unwrap();
        let msgs = [to_value(serde_json::json!({"role": "user", "content": "hi"}))];
        assert_eq!(t.render(&msgs, &vars(&Value::from(()), &[])).unwrap(), "hi");
    }

    #[test]
    fn transformers_globals_and_whitespace() {
        let src = "{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}\n  {% for m in messages %}\n<{{ m.role }}>{{ m.content | trim }}{{ eos_token }}\n  {% endfor %}\n{% if tools %}{{ tools | tojson }}{% endif %}{{ flavour }}{{ 'x'.upper() }}{{ strftime_now('%Y')|length }}";
        let t = ChatTemplate::new(src).unwrap();
        let msgs = [to_value(serde_json::json!({"role": "user", "content": " hi "}))];
        let tools = to_value(serde_json::json!([{"a": 1}]));
        let extra = [("eos_token".to_owned(), Value::from("</s>")), ("flavour".to_owned(), Value::from("mint"))];
        assert_eq!(t.render(&msgs, &vars(&tools, &extra)).unwrap(), "<user>hi</s>\n[{\"a\": 1}]mintX4");
        let sys = [to_value(serde_json::json!({"role": "system", "content": "x"}))];
        let err = t.render(&sys, &vars(&tools, &extra)).unwrap_err();
        assert!(err.contains("no system"), "{err}");
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
