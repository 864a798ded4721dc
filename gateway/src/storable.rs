//! Which text may reach the database: the character rules checked at the edge.
//!
//! Postgres cannot store U+0000 in `text` (error 22021) nor in a `jsonb` string
//! or key (22P05). A message that only fails there has already been confirmed,
//! delivered and given a seq, so it must be refused before it is accepted: every
//! client-supplied text that is stored passes one of the checks below first.
//! SQLite stores U+0000, but the rules are the same in both modes so a client
//! sees one behaviour.
//!
//! Lone surrogates (U+D800–U+DFFF) cannot occur: a Rust `String` is valid UTF-8,
//! and serde_json refuses an escaped lone surrogate (`"\ud800"`) as bad JSON.
//!
//! Beyond U+0000 (the one character that cannot be stored):
//! - **message text** may hold tab, line feed and carriage return, and no other
//!   control character (Unicode category Cc: U+0000–U+001F, U+007F–U+009F).
//!   They have no use in chat text, and escape sequences such as `ESC [ 2 J`
//!   rewrite the terminal of a client that prints messages (the `chat` example);
//! - **temp ids and room names** are one-line identifiers and labels: no control
//!   character at all, like user ids (`chatter_shared::auth::validate_user_id`);
//! - **metadata** is the application's own JSON, stored and returned as is: only
//!   U+0000 is refused, in any key or string at any depth.

/// True if `text` is fit to be a message's text: no control character but tab,
/// line feed and carriage return.
pub fn is_message_text(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// True if `text` holds no control character (temp ids, room names).
pub fn is_one_line(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// True if no key or string anywhere in `value` holds U+0000. Iterative, so the
/// depth of the document (already bounded by serde_json's recursion limit of 128
/// when it was parsed) costs no stack.
pub fn json_is_storable(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) if text.contains('\0') => return false,
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => {
                if fields.keys().any(|key| key.contains('\0')) {
                    return false;
                }
                pending.extend(fields.values());
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_text_keeps_line_breaks_and_refuses_other_controls() {
        assert!(is_message_text("line 1\r\n\tline 2 — ünïcødé 👋"));
        for bad in ["a\0b", "\u{7}", "\u{1b}[2J", "\u{7f}", "\u{9b}"] {
            assert!(!is_message_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn one_line_text_has_no_controls() {
        assert!(is_one_line("cli-123-7 Flat 4B"));
        for bad in ["a\0", "two\nlines", "tab\t", "\u{85}"] {
            assert!(!is_one_line(bad), "{bad:?}");
        }
    }

    #[test]
    fn json_is_searched_at_every_depth_keys_included() {
        assert!(json_is_storable(&json!({"a": [1, "two\n", {"b": null}]})));
        assert!(!json_is_storable(&json!({"a": [1, {"b": ["\u{0}"]}]})));
        assert!(!json_is_storable(&json!({"k\u{0}": 1})));
        assert!(!json_is_storable(&json!("\u{0}")));
    }
}
