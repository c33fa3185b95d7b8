//! The kernel command line, read the way the kernel reads it.
//!
//! The kernel splits its command line with `next_arg()` (lib/cmdline.c).
//! Every fluxnode daemon reads `fluxnode.*` keys from the same line, so
//! they must all split it exactly that way; [`split`] is a line-for-line
//! port, quirks included, and [`Cmdline`] is the lookup table built from
//! it. The rules, as `next_arg()` has them:
//!
//! - words are separated by the kernel's `isspace()`: space, `\t`, `\n`,
//!   `\v`, `\f`, `\r`, and also the byte `0xA0` (Latin-1 no-break space,
//!   which lib/ctype.c classes as space). Bytes are parsed, not chars, as
//!   the kernel does; a piece that is not UTF-8 is read lossily;
//! - a double quote toggles quoting anywhere in a word, and whitespace
//!   inside quotes does not split: `a="b c"` and `a=b" "c` are one word;
//! - the key ends at the first `=` after the first byte (an `=` in the
//!   first byte is part of the key: `=x` is a bare key `=x`);
//! - quotes are removed only in two places: when the value *starts* with
//!   a quote, that quote and a quote at the very end of the word go
//!   (`a="b c"` → `b c`; `a="b"c` → `b"c`); and when the word starts with
//!   a quote, that quote and a quote at the very end go (`"a=b c"` → key
//!   `a`, value `b c`; `"a b"` → bare key `a b`). Other quotes stay:
//!   `"a b"=c` is key `a b"` with value `c`, and `a=b"c d"` has the value
//!   `b"c d"`;
//! - an unterminated quote runs to the end of the line: `a="b c` → `b c`;
//! - there is no escape character: a literal `"` cannot be quoted.
//!
//! `/proc/cmdline` adds one `\n` that the kernel's own copy does not have;
//! [`Cmdline::parse`] removes it, so an unterminated quote does not swallow
//! it. Parsing never fails: a line the kernel booted with is ours to read.
//! Keys are compared exactly (the kernel's `-`/`_` equivalence applies to
//! its own parameters, not to the ones it passes on), and `--` is an
//! ordinary bare key here. When a key repeats, the last one wins, as it
//! does for most kernel parameters and as init and netd always did.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// Reading the file (normally `/proc/cmdline`) failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One parameter as `next_arg()` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    /// The part before the first `=` (or the whole word).
    pub key: Cow<'a, str>,
    /// The part after the first `=`; `None` for a bare key (`quiet`),
    /// `Some("")` for `key=`.
    pub value: Option<Cow<'a, str>>,
}

/// The kernel's `isspace()` (lib/ctype.c): ASCII whitespace and 0xA0.
fn is_kernel_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_kernel_space(b)).count();
    &s[n..]
}

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Splits a command line into parameters, in order, as the kernel does.
/// The line ends at the first NUL byte, as the kernel's C string would.
pub fn split(line: &[u8]) -> Split<'_> {
    let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    Split {
        rest: skip_spaces(&line[..end]),
    }
}

/// The iterator of [`split`].
#[derive(Debug, Clone)]
pub struct Split<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Split<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let (param, rest) = next_arg(self.rest);
        self.rest = skip_spaces(rest);
        Some(param)
    }
}

/// One step of lib/cmdline.c `next_arg()`: the first parameter of `args`
/// (which starts with a non-space byte) and what follows its separator.
fn next_arg(args: &[u8]) -> (Param<'_>, &[u8]) {
    let quoted = args.first() == Some(&b'"');
    let args = if quoted { &args[1..] } else { args };
    let mut in_quote = quoted;
    // `equals` is an index; the kernel uses 0 for "none", so an `=` at
    // index 0 never counts as the separator.
    let mut equals = 0;
    let mut i = 0;
    while i < args.len() {
        let b = args[i];
        if is_kernel_space(b) && !in_quote {
            break;
        }
        if equals == 0 && b == b'=' {
            equals = i;
        }
        if b == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let word = &args[..i];
    // The kernel writes NUL over the byte after the word; skip it.
    let rest = args.get(i + 1..).unwrap_or(&[]);
    // `quoted && args[i-1] == '"'`: the closing quote of a quoted word.
    let ends_in_quote = quoted && word.last() == Some(&b'"');
    let param = if equals == 0 {
        let key = if ends_in_quote { &word[..i - 1] } else { word };
        Param {
            key: text(key),
            value: None,
        }
    } else {
        let mut start = equals + 1;
        let mut end = i;
        // "Don't include quotes in value."
        if word.get(start) == Some(&b'"') {
            start += 1;
            if word.last() == Some(&b'"') {
                end = i - 1;
            }
        }
        if ends_in_quote {
            end = i - 1;
        }
        // `a="`: the kernel's value points past the NUL it just wrote,
        // at an empty string.
        let end = end.max(start);
        let value = word.get(start..end).unwrap_or(&[]);
        Param {
            key: text(&word[..equals]),
            value: Some(text(value)),
        }
    };
    (param, rest)
}

/// A parsed command line: each key with its last value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    params: BTreeMap<String, Option<String>>,
}

impl Cmdline {
    /// Parses a command line as the kernel would; one trailing `\n` (the
    /// one `/proc/cmdline` adds) is not part of it.
    pub fn parse(text: &str) -> Self {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`parse`](Self::parse) for raw bytes: the kernel does not promise
    /// UTF-8, and a stray byte must not cost the other keys.
    pub fn parse_bytes(line: &[u8]) -> Self {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        // Inserted one by one, not collected: BTreeMap's FromIterator
        // sorts a Vec first, and that sort is 5 KiB of code in PID 1.
        let mut params = BTreeMap::new();
        for p in split(line) {
            params.insert(p.key.into_owned(), p.value.map(Cow::into_owned));
        }
        Cmdline { params }
    }

    /// Reads and parses `path` (normally `/proc/cmdline`; a parameter so
    /// that tests can pass a file of their own).
    pub fn read(path: &Path) -> Result<Self, CmdlineError> {
        std::fs::read(path)
            .map(|b| Self::parse_bytes(&b))
            .map_err(|source| CmdlineError::Read {
                path: path.into(),
                source,
            })
    }

    /// The value of `key`; `None` when absent or a bare key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(|v| v.as_deref())
    }

    /// True when `key` appears, bare or with any value.
    pub fn contains(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// True when `key` appears bare or with a value other than
    /// `0`/`no`/`false`/`off`: the way a boolean switch reads naturally
    /// both as `fluxnode.debug` and as `fluxnode.debug=0`.
    pub fn flag(&self, key: &str) -> bool {
        match self.params.get(key) {
            None => false,
            Some(None) => true,
            Some(Some(v)) => !matches!(v.as_str(), "0" | "no" | "false" | "off"),
        }
    }

    /// Every key with its value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Every key that starts with `prefix`, the prefix removed, sorted.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `split` as (key, value) strings, for short assertions.
    fn words(line: &str) -> Vec<(String, Option<String>)> {
        split(line.as_bytes())
            .map(|p| (p.key.into_owned(), p.value.map(Cow::into_owned)))
            .collect()
    }

    fn kv(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn plain_words_flags_and_empty_values() {
        assert_eq!(
            words("  console=ttyS0 quiet  a= k=v=w "),
            vec![
                kv("console", Some("ttyS0")),
                kv("quiet", None),
                kv("a", Some("")),
                kv("k", Some("v=w")),
            ]
        );
        assert!(words("").is_empty());
        assert!(words(" \t\n").is_empty());
    }

    #[test]
    fn every_kernel_space_separates() {
        assert_eq!(
            words("a\tb\nc\x0bd\x0ce\rf"),
            ["a", "b", "c", "d", "e", "f"]
                .iter()
                .map(|k| kv(k, None))
                .collect::<Vec<_>>()
        );
        // 0xA0 is a space to the kernel's ctype, even mid-UTF-8.
        let p: Vec<_> = split(b"a=1\xa0b=2").collect();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].key, "b");
    }

    #[test]
    fn quoted_values() {
        assert_eq!(
            words("a=\"b c\" d"),
            vec![kv("a", Some("b c")), kv("d", None)]
        );
        // Only a leading quote and the last byte are stripped.
        assert_eq!(words("a=\"b\"c"), vec![kv("a", Some("b\"c"))]);
        assert_eq!(words("a=b\"c d\""), vec![kv("a", Some("b\"c d\""))]);
        assert_eq!(words("a=\"\""), vec![kv("a", Some(""))]);
        assert_eq!(words("a=\""), vec![kv("a", Some(""))]);
        // A quote anywhere toggles quoting: the space does not split.
        assert_eq!(
            words("a=x\" \"y z"),
            vec![kv("a", Some("x\" \"y")), kv("z", None)]
        );
    }

    #[test]
    fn quoted_words_and_keys() {
        assert_eq!(words("\"a b\""), vec![kv("a b", None)]);
        assert_eq!(
            words("\"a=b c\" d"),
            vec![kv("a", Some("b c")), kv("d", None)]
        );
        // The closing quote of a quoted key is not removed: the kernel
        // only strips the word's last byte, which here is the value's.
        assert_eq!(words("\"a b\"=c"), vec![kv("a b\"", Some("c"))]);
        assert_eq!(words("\"\""), vec![kv("", None)]);
        assert_eq!(words("\""), vec![kv("", None)]);
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        assert_eq!(words("a=\"b c d=e"), vec![kv("a", Some("b c d=e"))]);
        assert_eq!(words("x \"y z"), vec![kv("x", None), kv("y z", None)]);
        // /proc/cmdline's newline is not the kernel's: parse drops it.
        let c = Cmdline::parse("a=\"b c\n");
        assert_eq!(c.get("a"), Some("b c"));
    }

    #[test]
    fn equals_at_the_start_is_part_of_the_key() {
        assert_eq!(words("=x"), vec![kv("=x", None)]);
        assert_eq!(words("=x=y"), vec![kv("=x", Some("y"))]);
        assert_eq!(words("="), vec![kv("=", None)]);
        assert_eq!(words("a=="), vec![kv("a", Some("="))]);
    }

    #[test]
    fn nul_ends_the_line_and_bad_utf8_is_lossy() {
        assert_eq!(split(b"a=1\0b=2").count(), 1);
        let c = Cmdline::parse_bytes(b"k=\xff ok=1");
        assert_eq!(c.get("k"), Some("\u{fffd}"));
        assert_eq!(c.get("ok"), Some("1"));
    }

    #[test]
    fn later_keys_win() {
        let c = Cmdline::parse("a=1 a=2 f f=0 g=0 g");
        assert_eq!(c.get("a"), Some("2"));
        assert!(!c.flag("f"));
        assert!(c.flag("g"));
        assert_eq!(c.get("g"), None);
        assert!(c.contains("g"));
    }

    #[test]
    fn lookups_flags_and_prefixes() {
        let c = Cmdline::parse(
            "console=ttyS0 quiet fluxnode.slot=b fluxnode.verity=ab12 x=\"a b\" fluxnode.debug c=off\n",
        );
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.get("x"), Some("a b"));
        assert!(c.flag("quiet") && c.flag("fluxnode.debug"));
        assert!(!c.flag("c") && !c.flag("missing"));
        let keys: Vec<_> = c.with_prefix("fluxnode.").collect();
        assert_eq!(
            keys,
            vec![
                ("debug", None),
                ("slot", Some("b")),
                ("verity", Some("ab12"))
            ]
        );
    }

    #[test]
    fn read_names_the_file() {
        let e = Cmdline::read(Path::new("/nonexistent/cmdline")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/cmdline: "),
            "{e}"
        );
    }

    #[test]
    fn odd_input_never_panics() {
        for t in [
            "",
            "\"",
            "=",
            "==",
            "\"\"",
            "a=\"",
            "\"=",
            "\"=\"",
            "=\"",
            " \t\n",
            "\"a\"=\"",
            "a\"=b",
            "\u{a0}é\u{a0}",
        ] {
            let _ = Cmdline::parse(t);
            let _ = split(t.as_bytes()).count();
        }
    }
}
