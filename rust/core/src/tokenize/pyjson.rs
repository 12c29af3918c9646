//! `tojson` as transformers defines it for chat templates: Python's `json.dumps` (with
//! `ensure_ascii=False` by default), not Jinja's HTML-safe `tojson` and not serde_json's compact
//! form. The spacing (`", "`, `": "`) and escapes are part of the rendered prompt, so they change
//! the token ids.
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

pub struct Style {
    pub ensure_ascii: bool,
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Style {
    /// The filter's keyword arguments, with Python's defaults (an indent switches the item
    /// separator to "," as json.dumps does).
    pub fn from_kwargs(kwargs: &Kwargs) -> Result<Self, Error> {
        let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
        let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
        let indent = match kwargs.get::<Option<Value>>("indent")? {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => match v.as_str() {
                Some(s) => Some(s.to_owned()),
                None => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
            },
        };
        let (mut item_sep, mut key_sep) = if indent.is_some() { (",", ": ") } else { (", ", ": ") };
        let seps: Option<Vec<String>> = kwargs.get("separators")?;
        let seps_ref;
        if let Some(s) = seps {
            if s.len() != 2 {
                return Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair"));
            }
            seps_ref = s;
            item_sep = &seps_ref[0];
            key_sep = &seps_ref[1];
        }
        let style = Style { ensure_ascii, indent, item_sep: item_sep.to_owned(), key_sep: key_sep.to_owned(), sort_keys };
        kwargs.assert_all_used()?;
        Ok(style)
    }
}

pub fn dumps(v: &Value, style: &Style) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, v, style, 0)?;
    Ok(out)
}

fn newline(out: &mut String, style: &Style, depth: usize) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_value(out: &mut String, v: &Value, style: &Style, depth: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_seq(out, &items, style, depth)?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, depth + 1);
                match k.as_str() {
                    Some(s) => write_str(out, s, style.ensure_ascii),
                    // json.dumps turns non-string keys into strings.
                    None => write_str(out, &k.to_string(), style.ensure_ascii),
                }
                out.push_str(&style.key_sep);
                write_value(out, &v.get_item(k)?, style, depth + 1)?;
            }
            newline(out, style, depth);
            out.push('}');
        }
        _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson cannot serialize {}", v.kind()))),
    }
    Ok(())
}

fn write_seq(out: &mut String, items: &[Value], style: &Style, depth: usize) -> Result<(), Error> {
    if items.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    out.push('[');
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        newline(out, style, depth + 1);
        write_value(out, it, style, depth + 1)?;
    }
    newline(out, style, depth);
    out.push(']');
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if let Ok(i) = i64::try_from(v.clone()) {
        if !v.is_integer() {
            // A float with an integral value: Python writes "2.0".
            out.push_str(&format!("{i}.0"));
        } else {
            out.push_str(&i.to_string());
        }
        return;
    }
    if v.is_integer() {
        out.push_str(&v.to_string());
        return;
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&python_float_repr(f));
    }
}

/// Python's repr of a float: shortest round-trip digits, exponent form below 1e-4 and from 1e16,
/// with a signed two-digit exponent ("1e-05").
fn python_float_repr(f: f64) -> String {
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}"); // shortest digits, e.g. "1e-5", "1.5e20"
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        return format!("{mant}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::to_value;

    fn plain() -> Style {
        Style { ensure_ascii: false, indent: None, item_sep: ", ".into(), key_sep: ": ".into(), sort_keys: false }
    }

    #[test]
    fn matches_python_json_dumps() {
        let v = to_value(serde_json::json!({"b": [1, 2.5, 2.0, null, true], "a": "x\"\n é", "c": {}}));
        // json.dumps({"b": [1, 2.5, 2.0, None, True], "a": "x\"\n é", "c": {}}, ensure_ascii=False)
        assert_eq!(dumps(&v, &plain()).unwrap(), r#"{"b": [1, 2.5, 2.0, null, true], "a": "x\"\n é", "c": {}}"#);
        let style = Style { ensure_ascii: true, indent: Some("  ".into()), item_sep: ",".into(), sort_keys: true, ..plain() };
        assert_eq!(dumps(&v, &style).unwrap(), "{\n  \"a\": \"x\\\"\\n \\u00e9\",\n  \"b\": [\n    1,\n    2.5,\n    2.0,\n    null,\n    true\n  ],\n  \"c\": {}\n}");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(1.5e20), "1.5e+20");
        assert_eq!(python_float_repr(0.1), "0.1");
        assert_eq!(python_float_repr(3.0), "3.0");
    }
}
