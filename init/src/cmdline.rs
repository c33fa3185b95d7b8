//! The kernel command line: `fluxnode.*` keys and a few kernel ones.
//!
//! The format is the kernel's: words separated by spaces, `key=value` or a
//! bare `flag`, double quotes group spaces (`key="a b"`). Later keys win, as
//! the kernel does for most parameters. The parser never fails: a line the
//! kernel accepted is ours to read, whatever it holds.

use std::collections::BTreeMap;
use std::path::Path;

/// A parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    params: BTreeMap<String, Option<String>>,
}

impl Cmdline {
    /// Parses a command line.
    pub fn parse(text: &str) -> Self {
        let mut params = BTreeMap::new();
        for word in split_words(text) {
            match word.split_once('=') {
                Some((k, v)) => params.insert(k.to_string(), Some(v.to_string())),
                None => params.insert(word, None),
            };
        }
        Cmdline { params }
    }

    /// Reads and parses `path` (normally `/proc/cmdline`); empty when unreadable.
    pub fn from_file(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// The value of `key` (`None` when absent or a bare flag).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(|v| v.as_deref())
    }

    /// True when `key` appears, bare or with a value other than 0/no/false/off.
    pub fn flag(&self, key: &str) -> bool {
        match self.params.get(key) {
            None => false,
            Some(None) => true,
            Some(Some(v)) => !matches!(v.as_str(), "0" | "no" | "false" | "off"),
        }
    }

    /// Every `fluxnode.*` key with its value, the prefix removed.
    pub fn fluxnode_keys(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.params
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("fluxnode.").map(|k| (k, v.as_deref())))
    }
}

fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_flags_and_quotes() {
        let c = Cmdline::parse(
            "console=ttyS0 quiet fluxnode.slot=b fluxnode.verity=ab12 x=\"a b\" fluxnode.debug\n",
        );
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert!(c.flag("quiet"));
        assert_eq!(c.get("fluxnode.slot"), Some("b"));
        assert_eq!(c.get("x"), Some("a b"));
        assert!(c.flag("fluxnode.debug"));
        assert!(!c.flag("missing"));
        let keys: Vec<_> = c.fluxnode_keys().collect();
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
    fn later_wins_and_false_values() {
        let c = Cmdline::parse("a=1 a=2 b=0 c=off");
        assert_eq!(c.get("a"), Some("2"));
        assert!(!c.flag("b"));
        assert!(!c.flag("c"));
    }

    #[test]
    fn odd_input_does_not_panic() {
        for t in ["", "\"", "=", "==", "\"\"", "a=\"", " \t\n", "k=v=w"] {
            let _ = Cmdline::parse(t);
        }
        assert_eq!(Cmdline::parse("k=v=w").get("k"), Some("v=w"));
    }
}
