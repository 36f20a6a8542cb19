//! Text that is safe to show: [`Escaped`] and [`escape_for_display`].
//!
//! Resource names, paths and host names come from users and from files
//! other people can write. Printed as they are, a name with a newline forges
//! an extra row in a table or a log line, and terminal control sequences or
//! Unicode direction overrides disguise what is shown. Every human-readable
//! output of lockyard (error messages, `Display` impls) escapes them, and
//! tools built on it can do the same with these helpers.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Shows a value's `Display` output with control characters escaped.
///
/// `\` becomes `\\`; `\n`, `\r` and `\t` are written as such; every other
/// control character (C0, DEL, C1) and every invisible formatting character
/// that can reorder or hide text (bidirectional overrides and isolates,
/// zero-width characters, the BOM) becomes `\u{..}`. Everything else,
/// including non-ASCII letters, is kept.
///
/// ```
/// use lockyard::Escaped;
///
/// assert_eq!(Escaped("nightly\nFAKE ROW").to_string(), "nightly\\nFAKE ROW");
/// assert_eq!(Escaped("\u{1b}[31mred").to_string(), "\\u{1b}[31mred");
/// assert_eq!(Escaped("modèle-模型").to_string(), "modèle-模型");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// `s` with control characters escaped as [`Escaped`] does; borrowed when
/// nothing needs escaping.
///
/// ```
/// use lockyard::escape_for_display;
///
/// assert_eq!(escape_for_display("plain-name"), "plain-name");
/// assert_eq!(escape_for_display("a\tb"), "a\\tb");
/// ```
pub fn escape_for_display(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| !needs_escape(c)) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(Escaped(s).to_string())
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width, LRM, RLM
            | '\u{2028}'..='\u{202E}' // line/paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, isolates
            | '\u{FEFF}')
}

struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_can_forge_or_hide_output() {
        for (raw, shown) in [
            ("job", "job"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("back\\slash", "back\\\\slash"),
            ("\u{7}\u{7f}\u{9b}", "\\u{7}\\u{7f}\\u{9b}"),
            ("evil\u{202E}txt.exe", "evil\\u{202e}txt.exe"),
            ("zero\u{200B}width", "zero\\u{200b}width"),
            ("\0", "\\u{0}"),
            ("ß模型", "ß模型"),
        ] {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
            assert_eq!(escape_for_display(raw), shown, "{raw:?}");
            assert!(!shown.chars().any(|c| c.is_control()));
        }
        assert!(matches!(escape_for_display("plain"), Cow::Borrowed(_)));
        // Through Display of another type (a path).
        let p = std::path::Path::new("/tmp/a\nb");
        assert_eq!(Escaped(p.display()).to_string(), "/tmp/a\\nb");
    }
}
