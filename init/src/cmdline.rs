//! The kernel command line: `fluxnode.*` keys and a few kernel ones.
//!
//! The line is split by `fluxnode_lowlevel::cmdline`, which follows the
//! kernel's own `next_arg()` rules (double quotes group spaces:
//! `key="a b"`), so init, netd and every later daemon read the same line
//! the same way. Later keys win, as the kernel does for most parameters.
//! The parser never fails: a line the kernel accepted is ours to read,
//! whatever it holds. This wrapper keeps init's API (`from_file` is empty
//! when unreadable; `fluxnode_keys`).

use std::path::Path;

use fluxnode_lowlevel::cmdline::Cmdline as Parsed;

/// A parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline(Parsed);

impl Cmdline {
    /// Parses a command line (one trailing newline, as /proc adds, is dropped).
    pub fn parse(text: &str) -> Self {
        Cmdline(Parsed::parse(text))
    }

    /// Reads and parses `path` (normally `/proc/cmdline`); empty when
    /// unreadable: before /proc is mounted, init still boots on defaults.
    pub fn from_file(path: &Path) -> Self {
        Cmdline(Parsed::read(path).unwrap_or_default())
    }

    /// The value of `key` (`None` when absent or a bare flag).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    /// True when `key` appears, bare or with a value other than 0/no/false/off.
    pub fn flag(&self, key: &str) -> bool {
        self.0.flag(key)
    }

    /// The shared parser's view of the same line (for the code in
    /// `fluxnode_lowlevel` that reads it: the boot disk's UUIDs).
    pub fn as_lowlevel(&self) -> &Parsed {
        &self.0
    }

    /// Every `fluxnode.*` key with its value, the prefix removed, sorted.
    pub fn fluxnode_keys(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.with_prefix("fluxnode.")
    }
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

    #[test]
    fn an_unreadable_file_is_an_empty_line() {
        assert_eq!(
            Cmdline::from_file(Path::new("/nonexistent/cmdline")),
            Cmdline::default()
        );
    }
}
