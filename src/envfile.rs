//! systemd's `EnvironmentFile=` format (systemd.exec(5)), for the files of `environment_file`.
//!
//! A file is read the way systemd's own parser (`parse_env_file_internal()` in
//! `src/basic/env-file.c`, v254 and later) reads it, one character at a time through the same
//! states, so a file corral accepts means the same to `EnvironmentFile=`:
//!
//! - `NAME=value` per line; whitespace around the name and around `=` is dropped, and so is
//!   whitespace at the start and end of an unquoted value (not inside it). A name has letters,
//!   digits and `_`, and does not start with a digit. `NAME=` is an empty value.
//! - A line whose first character other than whitespace is `#` or `;` is a comment. A `#`
//!   later in a line is part of the value (`A=1 # no` is `1 # no`), as systemd has it.
//! - Unquoted, a backslash keeps the next character as it is (`\\` is `\`, `\ ` a space that is
//!   not dropped), and a backslash at the end of a line joins the next line to the value.
//! - `'...'` keeps everything as it is, newlines included, until the next `'`.
//! - `"..."` may span lines too; there `\"`, `\\`, `` \` `` and `\$` are the character, a
//!   backslash before a newline joins the lines, and a backslash before anything else stays.
//! - A value may mix the forms: `A="x"'y'z` is `xyz`; a quote after the first character of an
//!   unquoted value is an ordinary character (`A=x"y"` is `x"y"`).
//! - No expansion: `$HOME` is those five characters.
//! - The last assignment of a name wins.
//!
//! systemd skips silently, or logs and skips, what it cannot use. corral, which can refuse a
//! reload and keep the workers it has, refuses instead, naming the line: a line without `=`, a
//! name that is not valid (`export NAME=...` among them: systemd has no `export`), a quote
//! that is never closed (systemd would take the rest of the file as the value), and text that
//! is not UTF-8 or holds NUL, a byte order mark or a Unicode noncharacter (systemd drops the
//! variable, or stops reading at a NUL).
//!
//! Values are secrets as often as not: no message here quotes a value, a line, or a name that
//! is not a valid one (it might be a piece of a value that lost its `NAME=`). A [`Problem`] says
//! where, and what is wrong, and nothing of what the file holds beyond a valid variable name.

use std::fmt;

/// How many problems of one file [`parse`] keeps; the rest are only counted, so a file of
/// nothing but errors costs no more memory than this.
pub const MAX_PROBLEMS: usize = 100;

/// One `NAME=value` of a file. Its `Debug` form hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub value: String,
    /// The 1-based line the assignment starts on (where its name is).
    pub line: usize,
}

impl fmt::Debug for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assignment")
            .field("name", &self.name)
            .field(
                "value",
                &format_args!("<{} bytes, not shown>", self.value.len()),
            )
            .field("line", &self.line)
            .finish()
    }
}

/// What is wrong on one line (1-based), without the line's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// Everything wrong with a file: the first [`MAX_PROBLEMS`] problems, in the order of the
/// file, and how many there are in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems {
    pub listed: Vec<Problem>,
    pub total: usize,
}

impl Problems {
    fn new() -> Self {
        Problems {
            listed: Vec::new(),
            total: 0,
        }
    }

    fn add(&mut self, line: usize, message: impl Into<String>) {
        self.total += 1;
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(Problem {
                line,
                message: message.into(),
            });
        }
    }
}

/// The assignments of a file, in file order (a name may come more than once: the last one
/// wins), or every problem in it.
pub fn parse(bytes: &[u8]) -> Result<Vec<Assignment>, Problems> {
    parse_with(bytes, |_| None)
}

/// [`parse`], with `check` asked about each valid name: a message it returns is a problem on
/// that assignment's line (corral refuses the names it sets itself this way).
pub fn parse_with(
    bytes: &[u8],
    check: impl FnMut(&str) -> Option<String>,
) -> Result<Vec<Assignment>, Problems> {
    let mut problems = Problems::new();
    let Some(text) = text(bytes, &mut problems) else {
        return Err(problems);
    };
    let assignments = Parser::new(check, &mut problems).run(text);
    if problems.total == 0 {
        Ok(assignments)
    } else {
        Err(problems)
    }
}

/// `bytes` as text, or `None` with a problem on each line that is not UTF-8 or holds what
/// systemd.exec(5) does not allow in the file: NUL, the byte order mark U+FEFF, and Unicode
/// noncharacters.
fn text<'a>(bytes: &'a [u8], problems: &mut Problems) -> Option<&'a str> {
    let mut line = 1;
    // One problem per line is enough to find it.
    let mut last = 0;
    let mut note = |problems: &mut Problems, line: usize, message: &str| {
        if line != last {
            problems.add(line, message);
            last = line;
        }
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => line += 1,
                '\0' => note(
                    problems,
                    line,
                    "holds a NUL byte, which no environment variable can (systemd would stop \
                     reading the file there)",
                ),
                '\u{FEFF}' => note(
                    problems,
                    line,
                    "holds a byte order mark (U+FEFF), which systemd does not skip: save the \
                     file as UTF-8 without it",
                ),
                c if noncharacter(c) => note(
                    problems,
                    line,
                    "holds a Unicode noncharacter (U+FDD0 to U+FDEF, or U+FFFE or U+FFFF in \
                     any plane), which systemd refuses",
                ),
                _ => {}
            }
        }
        if !chunk.invalid().is_empty() {
            note(problems, line, "is not valid UTF-8");
        }
    }
    if problems.total > 0 {
        return None;
    }
    // Checked just above, chunk by chunk.
    std::str::from_utf8(bytes).ok()
}

/// Unicode noncharacters, which systemd's `unichar_is_valid()` refuses.
fn noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

/// systemd's `NEWLINE`: a carriage return ends an assignment as a line feed does.
fn newline(c: char) -> bool {
    matches!(c, '\n' | '\r')
}

/// systemd's `WHITESPACE`.
fn whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// What a backslash keeps as the bare character inside double quotes (systemd's
/// `SHELL_NEED_ESCAPE`, as in a POSIX shell).
fn escapable_in_double_quotes(c: char) -> bool {
    matches!(c, '"' | '\\' | '`' | '$')
}

/// A valid variable name, as systemd's `env_name_is_valid()` has it (bash's rule).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The states of systemd's parser; `Comment` also stands for its `COMMENT_ESCAPE`, which
/// since v254 ends at a newline all the same.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
}

struct Parser<'p, C> {
    check: C,
    problems: &'p mut Problems,
    assignments: Vec<Assignment>,
    key: String,
    /// Where the whitespace at the end of `key` starts, if it ends with whitespace.
    key_trailing: Option<usize>,
    value: String,
    /// The same for an unquoted `value`.
    value_trailing: Option<usize>,
    /// The line the current assignment started on.
    key_line: usize,
    /// The line the open quote, if any, was opened on.
    quote_line: usize,
}

impl<'p, C: FnMut(&str) -> Option<String>> Parser<'p, C> {
    fn new(check: C, problems: &'p mut Problems) -> Self {
        Parser {
            check,
            problems,
            assignments: Vec::new(),
            key: String::new(),
            key_trailing: None,
            value: String::new(),
            value_trailing: None,
            key_line: 1,
            quote_line: 1,
        }
    }

    fn run(mut self, text: &str) -> Vec<Assignment> {
        use State::*;
        let mut state = PreKey;
        let mut line = 1;
        for c in text.chars() {
            state = match state {
                PreKey if c == '#' || c == ';' => Comment,
                PreKey if whitespace(c) => PreKey,
                PreKey => {
                    self.key_line = line;
                    self.key.clear();
                    self.key.push(c);
                    self.key_trailing = None;
                    Key
                }
                Key if newline(c) => {
                    self.no_equals();
                    PreKey
                }
                Key if c == '=' => {
                    self.value.clear();
                    self.value_trailing = None;
                    PreValue
                }
                Key => {
                    if !whitespace(c) {
                        self.key_trailing = None;
                    } else if self.key_trailing.is_none() {
                        self.key_trailing = Some(self.key.len());
                    }
                    self.key.push(c);
                    Key
                }
                PreValue | Value if newline(c) => {
                    self.push(state == Value);
                    PreKey
                }
                PreValue if c == '\'' => {
                    self.quote_line = line;
                    SingleQuote
                }
                PreValue if c == '"' => {
                    self.quote_line = line;
                    DoubleQuote
                }
                PreValue if c == '\\' => ValueEscape,
                PreValue if whitespace(c) => PreValue,
                PreValue => {
                    self.value.push(c);
                    Value
                }
                Value if c == '\\' => {
                    self.value_trailing = None;
                    ValueEscape
                }
                Value => {
                    if !whitespace(c) {
                        self.value_trailing = None;
                    } else if self.value_trailing.is_none() {
                        self.value_trailing = Some(self.value.len());
                    }
                    self.value.push(c);
                    Value
                }
                // A backslash before a newline joins the lines; before anything else, keeps it.
                ValueEscape => {
                    if !newline(c) {
                        self.value.push(c);
                    }
                    Value
                }
                SingleQuote if c == '\'' => PreValue,
                SingleQuote => {
                    self.value.push(c);
                    SingleQuote
                }
                DoubleQuote if c == '"' => PreValue,
                DoubleQuote if c == '\\' => DoubleQuoteEscape,
                DoubleQuote => {
                    self.value.push(c);
                    DoubleQuote
                }
                DoubleQuoteEscape => {
                    if escapable_in_double_quotes(c) {
                        self.value.push(c);
                    } else if c != '\n' {
                        self.value.push('\\');
                        self.value.push(c);
                    }
                    DoubleQuote
                }
                Comment if newline(c) => PreKey,
                Comment => Comment,
            };
            if c == '\n' {
                line += 1;
            }
        }
        match state {
            PreValue | Value | ValueEscape => self.push(state == Value),
            SingleQuote | DoubleQuote | DoubleQuoteEscape => {
                let which = if state == SingleQuote {
                    "single"
                } else {
                    "double"
                };
                self.problems.add(
                    self.quote_line,
                    format!(
                        "the {which} quote opened on this line is never closed (systemd would \
                         take the rest of the file as the value)"
                    ),
                );
            }
            Key => self.no_equals(),
            PreKey | Comment => {}
        }
        self.assignments
    }

    /// A line that ended while still in the name.
    fn no_equals(&mut self) {
        let message = if self.key.starts_with('=') {
            "nothing before '=': an assignment is NAME=value"
        } else {
            "no '=' on this line: an assignment is NAME=value, and a comment starts with '#' \
             or ';' (systemd would ignore this line)"
        };
        self.problems.add(self.key_line, message);
    }

    /// The end of an assignment; `unquoted_end` when it ended in an unquoted part, whose
    /// trailing whitespace is dropped.
    fn push(&mut self, unquoted_end: bool) {
        if let Some(at) = self.key_trailing.take() {
            self.key.truncate(at);
        }
        if unquoted_end {
            if let Some(at) = self.value_trailing.take() {
                self.value.truncate(at);
            }
        }
        self.value_trailing = None;
        let name = std::mem::take(&mut self.key);
        let value = std::mem::take(&mut self.value);
        if let Some(message) = name_problem(&name) {
            self.problems.add(self.key_line, message);
            return;
        }
        if let Some(message) = (self.check)(&name) {
            self.problems.add(self.key_line, message);
            return;
        }
        self.assignments.push(Assignment {
            name,
            value,
            line: self.key_line,
        });
    }
}

/// Why `name` is not a valid variable name, in words that do not repeat it (it may be a piece
/// of a value).
fn name_problem(name: &str) -> Option<&'static str> {
    if valid_name(name) {
        return None;
    }
    if name.starts_with('=') {
        return Some("nothing before '=': an assignment is NAME=value");
    }
    if let Some(rest) = name.strip_prefix("export") {
        if rest.starts_with(whitespace) && valid_name(rest.trim_start_matches(whitespace)) {
            return Some(
                "`export` is shell syntax, which systemd's EnvironmentFile= does not have (it \
                 would ignore this line): write NAME=value without it",
            );
        }
    }
    Some(
        "the name before '=' is not a valid variable name: use letters, digits and '_', not \
         starting with a digit (systemd would ignore this line)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, value) of each assignment of a file that must parse.
    fn ok(text: &str) -> Vec<(String, String)> {
        match parse(text.as_bytes()) {
            Ok(a) => a.into_iter().map(|a| (a.name, a.value)).collect(),
            Err(p) => panic!("expected {text:?} to parse, got {p:#?}"),
        }
    }

    /// `[(name, value), ...]` as owned strings.
    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[track_caller]
    fn assert_parses(text: &str, expected: &[(&str, &str)]) {
        assert_eq!(ok(text), pairs(expected), "for {text:?}");
    }

    /// (line, message) of each problem of a file that must not parse.
    fn problems(bytes: &[u8]) -> Vec<(usize, String)> {
        match parse(bytes) {
            Ok(a) => panic!("expected problems in {bytes:?}, got {a:?}"),
            Err(p) => {
                assert_eq!(p.total, p.listed.len());
                p.listed.into_iter().map(|p| (p.line, p.message)).collect()
            }
        }
    }

    /// The one problem of a file, on `line`, whose message contains `contains`.
    #[track_caller]
    fn assert_problem(text: &str, line: usize, contains: &str) {
        let all = problems(text.as_bytes());
        assert_eq!(all.len(), 1, "one problem in {text:?}: {all:#?}");
        let (l, message) = &all[0];
        assert_eq!(*l, line, "line of {message:?} in {text:?}");
        assert!(
            message.contains(contains),
            "{message:?} does not contain {contains:?}"
        );
    }

    #[test]
    fn plain_assignments_whitespace_and_empty_values() {
        assert_parses("A=1\nB=two words\n", &[("A", "1"), ("B", "two words")]);
        // Whitespace around the name, around '=' and at the ends of the value is dropped;
        // inside the value it is kept as it is.
        assert_parses(
            "  A  =   x \t y  \t\n\tB\t=\t2\n",
            &[("A", "x \t y"), ("B", "2")],
        );
        assert_parses(
            "A=\nB=   \nC=\"\"\nD=''\n",
            &[("A", ""), ("B", ""), ("C", ""), ("D", "")],
        );
        // '=' in the value, no final newline, and names of every allowed kind.
        assert_parses(
            "URL=postgres://u:p@h/db?x=1\n_a1_B=2",
            &[("URL", "postgres://u:p@h/db?x=1"), ("_a1_B", "2")],
        );
        // No expansion of any kind.
        assert_parses("A=$HOME ${X} %h `id`\n", &[("A", "$HOME ${X} %h `id`")]);
        // Blank lines, and lines of whitespace only.
        assert_parses("\n\n   \n\t\nA=1\n\n", &[("A", "1")]);
        assert_parses("", &[]);
    }

    #[test]
    fn comments_start_a_line_only() {
        assert_parses(
            "# a comment\n; another\n   # indented\n\t; too\nA=1 # part of the value\nB=x;y\n",
            &[("A", "1 # part of the value"), ("B", "x;y")],
        );
        // A comment ending in a backslash does not continue on the next line (systemd v254).
        assert_parses("# c \\\nA=1\n; d \\\nB=2\n", &[("A", "1"), ("B", "2")]);
        // A quote in a comment is nothing.
        assert_parses("# it's \"\nA=1\n", &[("A", "1")]);
    }

    #[test]
    fn single_quotes_keep_everything() {
        assert_parses(
            "A='  x \\n \\\\ $HOME \"q\" # ;  '\n",
            &[("A", "  x \\n \\\\ $HOME \"q\" # ;  ")],
        );
        // Over several lines, newlines included; the next assignment's line is right.
        let a = parse(b"A='l1\nl2\n'\nB=2\n").unwrap();
        assert_eq!((a[0].value.as_str(), a[0].line), ("l1\nl2\n", 1));
        assert_eq!((a[1].name.as_str(), a[1].line), ("B", 4));
    }

    #[test]
    fn double_quotes_and_their_escapes() {
        // \" \\ \` \$ are the character; a backslash before anything else stays.
        assert_parses(
            r#"A="a \" b \\ c \` d \$ e \n f \x""#,
            &[("A", r#"a " b \ c ` d $ e \n f \x"#)],
        );
        // A backslash before a newline joins the lines; a bare newline is kept.
        assert_parses("A=\"x\\\ny\"\nB=\"x\ny\"\n", &[("A", "xy"), ("B", "x\ny")]);
        // Whitespace inside the quotes is kept, outside it is dropped.
        assert_parses("A=  \"  x  \"  \n", &[("A", "  x  ")]);
        // A '#' inside is nothing special either.
        assert_parses("A=\"# x\"\n", &[("A", "# x")]);
    }

    #[test]
    fn unquoted_escapes_and_line_continuation() {
        // A backslash keeps the next character; an escaped space at the end is not dropped.
        assert_parses(
            "A=a\\ b\\\\c\\#\\\"\nB=x\\ \n",
            &[("A", "a b\\c#\""), ("B", "x ")],
        );
        // A backslash at the end of a line joins the next one, its whitespace included; the
        // assignment keeps the line it started on, and the next one gets its own.
        let a = parse(b"A=foo\\\n   bar\nB=2\n").unwrap();
        assert_eq!(a[0].value, "foo   bar");
        assert_eq!((a[0].line, a[1].line), (1, 3));
        // A value may start on the next line.
        assert_parses("A=\\\nx\n", &[("A", "x")]);
        // A backslash at the very end of the file is dropped.
        assert_parses("A=1\\", &[("A", "1")]);
    }

    #[test]
    fn quoted_and_unquoted_parts_mix_as_systemd_has_it() {
        assert_parses("A=\"x\"'y'z\n", &[("A", "xyz")]);
        assert_parses("A=\"x\" \"y\"\n", &[("A", "xy")]);
        // A quote after the start of an unquoted value is an ordinary character.
        assert_parses("A=x\"y\" 'z'\n", &[("A", "x\"y\" 'z'")]);
    }

    #[test]
    fn carriage_returns_end_assignments_as_systemd_has_it() {
        let a = parse(b"A=1\r\nB=\"two\r\"\r\nC=3\r\n").unwrap();
        let got: Vec<(&str, &str, usize)> = a
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str(), a.line))
            .collect();
        // Lines are counted by line feeds, as editors count them.
        assert_eq!(got, [("A", "1", 1), ("B", "two\r", 2), ("C", "3", 3)]);
    }

    #[test]
    fn duplicate_names_are_all_returned_in_order() {
        let a = parse(b"A=1\nB=x\nA=2\n").unwrap();
        let got: Vec<(&str, &str, usize)> = a
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str(), a.line))
            .collect();
        assert_eq!(got, [("A", "1", 1), ("B", "x", 2), ("A", "2", 3)]);
    }

    /// The files of systemd's own tests (src/test/test-env-file.c) and what it reads in them,
    /// duplicates left out (those keep the last, which is [`duplicate_names_are_all_returned_in_order`]).
    #[test]
    fn systemds_own_test_files_read_the_same() {
        assert_parses(
            "a=a\na=b\na=b\na=a\nb=b\\\nc\nd= d\\\ne  \\\nf  \ng=g\\ \nh= ąęół\\ śćńźżμ \ni=i\\",
            &[
                ("a", "a"),
                ("a", "b"),
                ("a", "b"),
                ("a", "a"),
                ("b", "bc"),
                ("d", "de  f"),
                ("g", "g "),
                ("h", "ąęół śćńźżμ"),
                ("i", "i"),
            ],
        );
        assert_parses("a=a\\\n", &[("a", "a")]);
        let file_3 = "#SPAMD_ARGS=\"-d --socketpath=/var/lib/bulwark/spamd \\\n\
                      #--nouser-config                                     \\\n\
                      normal1=line\\\n\
                      111\n\
                      ;normal=ignored                                      \\\n\
                      normal2=line222\n";
        assert_parses(file_3, &[("normal1", "line111"), ("normal2", "line222")]);
        // Its last line has no '=': systemd ignores it, corral says where it is.
        let with_last =
            format!("{file_3}normal ignored                                       \\\n");
        assert_problem(&with_last, 7, "no '='");
        assert_parses(
            "# Generated\n\nHWMON_MODULES=\"coretemp f71882fg\"\n\n# For compatibility reasons\n\n\
             MODULE_0=coretemp\nMODULE_1=f71882fg",
            &[
                ("HWMON_MODULES", "coretemp f71882fg"),
                ("MODULE_0", "coretemp"),
                ("MODULE_1", "f71882fg"),
            ],
        );
        assert_parses("a=\nb=", &[("a", ""), ("b", "")]);
        assert_parses(
            "a=\\ \\n \\t \\x \\y \\' \nb= \\$'                  \n\
             c= ' \\n\\t\\$\\`\\\\\n'   \nd= \" \\n\\t\\$\\`\\\\\n\"   \n",
            &[
                ("a", " n t x y '"),
                ("b", "$'"),
                ("c", " \\n\\t\\$\\`\\\\\n"),
                ("d", " \\n\\t$`\\\n"),
            ],
        );
    }

    #[test]
    fn a_line_without_equals_is_refused_with_its_line() {
        assert_problem("A=1\nB\nC=3\n", 2, "no '=' on this line");
        assert_problem("A=1\n  just words here", 2, "no '=' on this line");
        assert_problem("=value\n", 1, "nothing before '='");
        assert_problem("A=1\n\n =x=y\n", 3, "nothing before '='");
    }

    #[test]
    fn invalid_names_are_refused_with_their_line() {
        for (text, line) in [
            ("1A=x\n", 1),
            ("A=1\nA-B=x\n", 2),
            ("A=1\n\nA B=x\n", 3),
            ("\"A\"=x\n", 1),
            ("A.B=x\n", 1),
            ("É=x\n", 1),
            ("A=1\nB=\"x\ny\"\n$C=z\n", 4),
        ] {
            assert_problem(text, line, "not a valid variable name");
        }
        assert_problem(
            "A=1\nexport B=2\n",
            2,
            "`export` is shell syntax, which systemd's EnvironmentFile= does not have",
        );
        assert_problem("export\tB=2\n", 1, "`export`");
        // Only `export NAME` is taken for the shell's export.
        assert_problem("export B C=2\n", 1, "not a valid variable name");
        // A name that is `export` alone is a name like any other.
        assert_parses(
            "export=1\nexporter=2\n",
            &[("export", "1"), ("exporter", "2")],
        );
    }

    #[test]
    fn an_unclosed_quote_is_refused_at_the_line_it_opened() {
        assert_problem(
            "A=1\nB=\"x\nC=3\n",
            2,
            "the double quote opened on this line",
        );
        assert_problem(
            "A=1\nB='x\n\nC=3\n",
            2,
            "the single quote opened on this line",
        );
        assert_problem("A=\"x\\", 1, "never closed");
        // Closed on a later line is fine.
        assert_parses("A='x\n'\n", &[("A", "x\n")]);
    }

    #[test]
    fn text_that_is_not_clean_utf8_is_refused_with_its_line() {
        assert_eq!(
            problems(b"A=1\nB=caf\xe9\nC=\xff\xfe\n"),
            [
                (2, "is not valid UTF-8".to_string()),
                (3, "is not valid UTF-8".to_string())
            ]
        );
        let nul = problems(b"A=1\nB=x\0y\n# \0\n");
        assert_eq!(nul.len(), 2, "{nul:?}");
        assert_eq!((nul[0].0, nul[1].0), (2, 3));
        assert!(nul[0].1.contains("NUL"), "{nul:?}");
        assert_problem("\u{FEFF}A=1\n", 1, "byte order mark");
        for nonchar in [
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{FDD0}',
            '\u{1FFFF}',
            '\u{10FFFE}',
        ] {
            assert_problem(&format!("A=1\nB=x{nonchar}\n"), 2, "noncharacter");
        }
        // Their neighbours are fine.
        assert_parses(
            "A=\u{FDCF}\u{FDF0}\u{FFFD}\n",
            &[("A", "\u{FDCF}\u{FDF0}\u{FFFD}")],
        );
    }

    #[test]
    fn every_problem_is_reported_in_order() {
        let all = problems(b"A=1\nno equals\n1B=2\nC=ok\nexport D=4\nE=\"open\n");
        let lines: Vec<usize> = all.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 5, 6], "{all:#?}");
    }

    #[test]
    fn a_check_refuses_names_at_their_line() {
        let reserved = |name: &str| (name == "LISTEN_FDS").then(|| "reserved".to_string());
        let p = parse_with(b"A=1\n\nLISTEN_FDS=3\nB=2\n", reserved).unwrap_err();
        assert_eq!(
            p.listed,
            [Problem {
                line: 3,
                message: "reserved".into()
            }]
        );
        // Only valid names are checked: an invalid one is refused for that already.
        let mut asked = Vec::new();
        let _ = parse_with(b"A=1\n1B=2\n", |n: &str| {
            asked.push(n.to_string());
            None
        });
        assert_eq!(asked, ["A"]);
    }

    #[test]
    fn problems_past_the_cap_are_counted_not_kept() {
        let text = "no equals\n".repeat(5000);
        let p = parse(text.as_bytes()).unwrap_err();
        assert_eq!(p.total, 5000);
        assert_eq!(p.listed.len(), MAX_PROBLEMS);
        assert_eq!(p.listed.last().unwrap().line, MAX_PROBLEMS);
    }

    /// Every way a file can be wrong, each around the same secret: no message shows it, nor
    /// any part of the line it is on.
    #[test]
    fn no_problem_quotes_the_file() {
        const SECRET: &str = "hunter2-Sup3rS3cret";
        let cases: Vec<Vec<u8>> = vec![
            format!("{SECRET}\n").into(),
            format!("DB_PASSWORD {SECRET}\n").into(),
            format!("={SECRET}\n").into(),
            format!("export DB_PASSWORD={SECRET}\n").into(),
            format!("{SECRET}=x\n").into(),
            format!("DB PASSWORD={SECRET}\n").into(),
            format!("DB_PASSWORD=\"{SECRET}\n").into(),
            format!("DB_PASSWORD='{SECRET}\n").into(),
            format!("DB_PASSWORD={SECRET}\0\n").into(),
            format!("DB_PASSWORD={SECRET}\u{FFFE}\n").into(),
            [format!("DB_PASSWORD={SECRET}").as_bytes(), b"\xff\n"].concat(),
            // A multi-line secret written without quotes: its lines lose their NAME=.
            format!("TLS_KEY=-----BEGIN KEY-----\n{SECRET}+/{SECRET}\n-----END KEY-----\n").into(),
        ];
        for bytes in cases {
            let found = problems(&bytes);
            assert!(!found.is_empty());
            for (_, message) in &found {
                for piece in [SECRET, "hunter2", "Sup3r", "DB PASSWORD", "BEGIN"] {
                    assert!(
                        !message.contains(piece),
                        "{message:?} shows {piece:?} of {bytes:?}"
                    );
                }
            }
        }
        // Nor does the Debug form of what was read.
        let a = parse(format!("DB_PASSWORD={SECRET}\n").as_bytes()).unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("DB_PASSWORD"), "{shown}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

        fn runner() -> TestRunner {
            let config = Config {
                cases: 512,
                failure_persistence: None,
                ..Config::default()
            };
            TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
        }

        /// Values as a file may hold them: anything but NUL, byte order marks and
        /// noncharacters, with the characters the syntax cares about often.
        fn value() -> impl Strategy<Value = String> {
            let special = prop_oneof![
                Just('"'),
                Just('\''),
                Just('\\'),
                Just('$'),
                Just('`'),
                Just('#'),
                Just(';'),
                Just('='),
                Just(' '),
                Just('\t'),
                Just('\n'),
                Just('\r'),
            ];
            let any_char = any::<char>().prop_filter("allowed in a file", |c| {
                *c != '\0' && *c != '\u{FEFF}' && !noncharacter(*c)
            });
            prop::collection::vec(prop_oneof![special, any_char], 0..24)
                .prop_map(|cs| cs.into_iter().collect())
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_problems_have_lines() {
            let bytes = prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'='),
                    Just(b'\n'),
                    Just(b'"'),
                    Just(b'\''),
                    Just(b'\\'),
                    Just(b'#'),
                    Just(b'A'),
                ],
                0..200,
            );
            runner()
                .run(&bytes, |bytes| {
                    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
                    match parse(&bytes) {
                        Ok(assignments) => {
                            for a in assignments {
                                prop_assert!(valid_name(&a.name));
                                prop_assert!((1..=lines).contains(&a.line));
                            }
                        }
                        Err(p) => {
                            prop_assert!(p.total >= p.listed.len() && p.total > 0);
                            for problem in p.listed {
                                prop_assert!((1..=lines).contains(&problem.line));
                            }
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }

        /// Any value, written in double quotes with `"`, `\`, `` ` `` and `$` escaped (as
        /// systemd's own `write_env_file()` writes it), reads back as it was.
        #[test]
        fn double_quoted_values_read_back_exactly() {
            runner()
                .run(&value(), |v| {
                    let mut quoted = String::from("SECRET=\"");
                    for c in v.chars() {
                        if escapable_in_double_quotes(c) {
                            quoted.push('\\');
                        }
                        quoted.push(c);
                    }
                    quoted.push_str("\"\nNEXT=1\n");
                    let a = parse(quoted.as_bytes())
                        .map_err(|p| TestCaseError::fail(format!("{quoted:?}: {p:?}")))?;
                    prop_assert_eq!(a.len(), 2);
                    prop_assert_eq!(&a[0].value, &v);
                    prop_assert_eq!(a[1].line, 2 + v.matches('\n').count());
                    Ok(())
                })
                .unwrap();
        }

        /// The same, single-quoted (values without a `'`), and unquoted with every character
        /// escaped (values without a newline or carriage return, which a backslash eats).
        #[test]
        fn single_quoted_and_escaped_values_read_back_exactly() {
            runner()
                .run(&value(), |v| {
                    if !v.contains('\'') {
                        let text = format!("A='{v}'\n");
                        let a = parse(text.as_bytes())
                            .map_err(|p| TestCaseError::fail(format!("{text:?}: {p:?}")))?;
                        prop_assert_eq!(&a[0].value, &v);
                    }
                    if !v.contains(['\n', '\r']) {
                        let escaped: String = v.chars().flat_map(|c| ['\\', c]).collect();
                        let text = format!("A={escaped}\n");
                        let a = parse(text.as_bytes())
                            .map_err(|p| TestCaseError::fail(format!("{text:?}: {p:?}")))?;
                        prop_assert_eq!(&a[0].value, &v);
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
}
