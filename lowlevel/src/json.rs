//! JSON string literals for hand-written JSON output.
//!
//! init's `ctl status --json` and netd's `--print-config --json` print a
//! handful of fields; serde_json would cost PID 1 more code than all of
//! its JSON output together, so the objects are written by hand and only
//! the strings need care. Escaping follows RFC 8259 §7: `"` and `\`, and
//! every control character below U+0020 (the common ones in their short
//! form). Everything else, non-ASCII included, is valid as it is.

/// `s` as a JSON string literal, quotes included.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

/// Appends `s` as a JSON string literal, quotes included, to `out`.
pub fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
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
            c if (c as u32) < 0x20 => {
                let b = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_only_quoted() {
        assert_eq!(json_str(""), "\"\"");
        assert_eq!(json_str("eth0"), "\"eth0\"");
        assert_eq!(json_str("héllo ☃"), "\"héllo ☃\"");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(json_str("a\"b"), r#""a\"b""#);
        assert_eq!(json_str("C:\\x"), r#""C:\\x""#);
        assert_eq!(json_str("\\\""), r#""\\\"""#);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(json_str("a\nb\r\tc"), r#""a\nb\r\tc""#);
        assert_eq!(json_str("\u{08}\u{0c}"), r#""\b\f""#);
        assert_eq!(
            json_str("\0\u{1}\u{1b}\u{1f}"),
            r#""\u0000\u0001\u001b\u001f""#
        );
        // DEL and U+0080.. are not control characters to JSON.
        assert_eq!(json_str("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn push_appends() {
        let mut s = String::from("{\"k\":");
        push_json_str(&mut s, "v");
        s.push('}');
        assert_eq!(s, r#"{"k":"v"}"#);
    }
}
