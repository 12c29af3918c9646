//! How deeply a JSON body nests. serde_json limits the depth of what it deserializes (128) but
//! skips unknown fields with no limit, so a body with a 100,000-level array in an unread field
//! would pass the core and reach the engine, whose parser may fail on it in its own way. The
//! gateway answers such a body itself, with a 400.
use memchr::memchr2;

/// The same limit serde_json applies to the fields the core reads.
pub const MAX_DEPTH: usize = 128;

/// Whether `body` opens more than `max` arrays or objects inside each other. Assumes nothing about
/// validity (the parser judges that); string contents are skipped with memchr, so the scan costs
/// little next to the parse.
pub fn deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Skip to the closing quote, stepping over escaped characters.
                i += 1;
                loop {
                    match memchr2(b'"', b'\\', &body[i..]) {
                        None => return false,
                        Some(k) if body[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                    }
                    if i >= body.len() {
                        return false;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(!deeper_than(nested(127).as_bytes(), MAX_DEPTH));
        assert!(deeper_than(nested(128).as_bytes(), MAX_DEPTH));
        let quoted = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(!deeper_than(quoted.as_bytes(), MAX_DEPTH));
        assert!(!deeper_than(b"{\"a\":\"unterminated [[[", 1));
        assert!(!deeper_than(b"\"\\", 0));
    }
}
