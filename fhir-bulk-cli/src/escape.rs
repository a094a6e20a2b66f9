//! Server text on the terminal: nothing a server sends reaches stdout or stderr raw. Control
//! characters (C0 including NUL, BEL, backspace, CR and ESC; DEL; C1) and the bidi overrides
//! and isolates (U+202A-U+202E, U+2066-U+2069) are shown escaped (`\x1b`, `\u{202e}`), and
//! echoed server text is cut to a few hundred characters, saying how much was cut.
//!
//! [`escape`] is applied to every line the CLI writes ([`crate::out`], the progress bars), so
//! no path can forget it; [`server_text`] also escapes newlines and caps the length, for text
//! quoted from a server (X-Progress, diagnostics, error bodies, `transactionTime`, `type`).
//! `log.ndjson` keeps the text as data (JSON-escaped by serde_json).

use std::borrow::Cow;
use std::fmt::Write;

/// The most characters of one piece of server text shown on the terminal.
pub(crate) const MAX_SERVER_TEXT: usize = 300;

/// Whether `c` must not reach a terminal raw.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    let n = u32::from(c);
    if n < 0x80 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{{{n:x}}}");
    }
}

/// `text` with every control character except newline (and tab) and every bidi override or
/// isolate escaped visibly. Borrowed when there is nothing to escape.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    escape_keeping(text, &['\n', '\t'])
}

fn escape_keeping<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !text.chars().any(|c| is_unsafe(c) && !keep.contains(&c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && !keep.contains(&c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text quoted from a server, for one line of the terminal: every control character (newlines
/// included) escaped, surrounding whitespace trimmed, and at most [`MAX_SERVER_TEXT`]
/// characters, followed by how many were cut.
pub(crate) fn server_text(text: &str) -> String {
    capped(text, MAX_SERVER_TEXT)
}

/// [`server_text`] with another cap.
pub(crate) fn capped(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    let total = text.chars().count();
    let (shown, cut) = if total > max_chars {
        let end = text
            .char_indices()
            .nth(max_chars)
            .map_or(text.len(), |(i, _)| i);
        (&text[..end], total - max_chars)
    } else {
        (text, 0)
    };
    let mut out = escape_keeping(shown, &[]).into_owned();
    if cut > 0 {
        let _ = write!(
            out,
            "... ({} more character{} cut)",
            crate::plural::thousands(cut as u64),
            if cut == 1 { "" } else { "s" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_visibly() {
        assert_eq!(escape("plain text"), "plain text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\x1b[31mred\x07\x08\r\0b"),
            "a\\x1b[31mred\\x07\\x08\\x0d\\x00b"
        );
        assert_eq!(escape("x\u{9b}y\u{7f}"), "x\\u{9b}y\\x7f");
        assert_eq!(
            escape("\u{202e}evil\u{2066}\u{2069}\u{202a}"),
            "\\u{202e}evil\\u{2066}\\u{2069}\\u{202a}"
        );
        assert_eq!(escape("two\nlines\tok"), "two\nlines\tok");
        assert_eq!(escape("ünïcödé ✓"), "ünïcödé ✓");
    }

    #[test]
    fn server_text_is_one_capped_line() {
        assert_eq!(
            server_text("  50%\r\nfake line  "),
            "50%\\x0d\\x0afake line"
        );
        let long = "é".repeat(100_000);
        let shown = server_text(&long);
        assert!(shown.starts_with(&"é".repeat(MAX_SERVER_TEXT)));
        assert!(
            shown.ends_with("... (99,700 more characters cut)"),
            "{}",
            &shown[shown.len() - 60..]
        );
        assert_eq!(capped("abcd", 3), "abc... (1 more character cut)");
        assert_eq!(capped("abc", 3), "abc");
    }
}
