//! Text that reaches a terminal: names, purposes and messages come from other agents and may
//! hold control characters (an escape sequence in a task name could rewrite the screen).

use std::borrow::Cow;

/// `s` with control characters escaped (`\n`, `\t`, `\u{1b}` ...) for human output; unchanged
/// (and not copied) when it has none.
///
/// ```
/// assert_eq!(maos_core::escape_controls("ok"), "ok");
/// assert_eq!(maos_core::escape_controls("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
/// ```
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `s` (control characters escaped), with `…` when cut: for
/// quoting untrusted input in an error message without echoing megabytes.
///
/// ```
/// assert_eq!(maos_core::excerpt("abcdef", 3), "abc…");
/// ```
pub fn excerpt(s: &str, max: usize) -> String {
    let esc = escape_controls(s);
    match esc.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &esc[..i]),
        None => esc.into_owned(),
    }
}
