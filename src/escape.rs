//! Others' text as corral shows it on a terminal: a worker's `STATUS=`, a key name from a
//! config file. A control character in it could move the cursor, clear the screen or retitle
//! the terminal of whoever runs `corral status` or `corral check` (console_codes(4)); it is
//! shown as an escape instead, as systemctl shows a unit's status.

use std::borrow::Cow;

/// `s` with control characters shown as escapes: `\n`, `\t`, `\x1b`; and `\` as `\\`, so that
/// what is shown says unambiguously what was there.
pub fn controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `s` as [`controls`] shows it if it holds a control character, else as it is: for text
/// most of which was made safe where it was written (a config diagnostic quotes values with
/// Rust's escapes), which would otherwise show its backslashes doubled. One that holds a control
/// character all the same (a key name, a path, put in as they are) is escaped whole.
pub fn if_controls(s: &str) -> Cow<'_, str> {
    if s.contains(char::is_control) {
        Cow::Owned(controls(s))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(controls("plain 😀 é"), "plain 😀 é");
        assert_eq!(
            controls("a\u{1b}[2J\u{7}\n\tb\\c\u{7f}\u{9b}"),
            "a\\x1b[2J\\x07\\n\\tb\\\\c\\x7f\\x9b"
        );
    }

    #[test]
    fn text_without_control_characters_is_left_as_it_is() {
        assert!(matches!(if_controls("a \\t b"), Cow::Borrowed("a \\t b")));
        assert_eq!(if_controls("`\u{1b}[2J` \\"), "`\\x1b[2J` \\\\");
    }
}
