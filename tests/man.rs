//! The man pages in `man/` against the code they document: every command, flag and argument of
//! the command line (`corral::cli::Cli`) and every exit code in corral(1), every config key
//! (`corral::config::all_keys`) in corral.toml(5), all pages clean under `groff -ww`, and the
//! shell completion scripts well-formed.
//!
//! The pages are read the way a reader sees them: `\-` is `-`, font changes and other escapes
//! are gone, and the arguments of font macros (`.B`, `.BR`, ...) are their text.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory;
use corral::cli::{Cli, EXIT_CODES};

const PAGES: &[&str] = &[
    "corral.1",
    "corral.toml.5",
    "corral-generator.8",
    "corral-worker.7",
];

fn page_path(page: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(page)
}

/// One line of a page: the macro it starts with (`TP`, `B`, ...), if any, and its text.
#[derive(Debug)]
struct Line {
    mac: Option<String>,
    text: String,
}

struct Page {
    name: String,
    lines: Vec<Line>,
}

impl Page {
    fn read(page: &str) -> Page {
        let path = page_path(page);
        let roff = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Page {
            name: format!("man/{page}"),
            lines: roff.lines().filter_map(parse_line).collect(),
        }
    }

    /// The whole text, one line per source line.
    fn text(&self) -> String {
        join(&self.lines)
    }

    /// The lines of section `title` (`.SH title`), up to the next `.SH`.
    fn section(&self, title: &str) -> Option<&[Line]> {
        let start = self
            .lines
            .iter()
            .position(|l| l.mac.as_deref() == Some("SH") && l.text == title)?;
        let len = self.lines[start + 1..]
            .iter()
            .position(|l| l.mac.as_deref() == Some("SH"))
            .unwrap_or(self.lines.len() - start - 1);
        Some(&self.lines[start + 1..start + 1 + len])
    }

    fn section_or_fail(&self, title: &str) -> &[Line] {
        self.section(title)
            .unwrap_or_else(|| panic!("{} has no section `.SH {title}`", self.name))
    }
}

fn join(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Macros whose arguments are text in one font, and those alternating between two fonts
/// (whose arguments are joined without spaces).
const FONT_MACROS: &[&str] = &["B", "I", "SM", "SB"];
const ALTERNATING_MACROS: &[&str] = &["BR", "RB", "BI", "IB", "IR", "RI"];

fn parse_line(raw: &str) -> Option<Line> {
    if raw.starts_with(".\\\"") || raw.starts_with("'\\\"") {
        return None;
    }
    let Some(rest) = raw.strip_prefix('.').or_else(|| raw.strip_prefix('\'')) else {
        return Some(Line {
            mac: None,
            text: unescape(raw),
        });
    };
    let rest = rest.trim_start();
    let (mac, args) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let args = split_args(args);
    let text = if ALTERNATING_MACROS.contains(&mac) {
        args.concat()
    } else if FONT_MACROS.contains(&mac) || mac == "SH" || mac == "SS" {
        args.join(" ")
    } else {
        // Structural macros (.TP, .PP, .RS, .IP, .EX, ...): their arguments are not text.
        String::new()
    };
    Some(Line {
        mac: Some(mac.to_string()),
        text: unescape(&text),
    })
}

/// Macro arguments: separated by blanks, `"..."` quoting, `""` a quote inside quotes.
fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let Some(&first) = chars.peek() else {
            return args;
        };
        let mut arg = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.next_if_eq(&'"').is_some() {
                        arg.push('"');
                        continue;
                    }
                    break;
                }
                arg.push(c);
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ' && *c != '\t') {
                arg.push(c);
            }
        }
        args.push(arg);
    }
}

/// Roff text as printed: `\-` is `-`, font changes and zero-width escapes vanish, and named
/// characters become what they look like.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('-') => out.push('-'),
            Some('e') | Some('\\') => out.push('\\'),
            Some(' ') | Some('~') => out.push(' '),
            Some('&') | Some('%') | Some('c') | Some('/') | Some(',') | Some('|') | Some('^') => {}
            Some('f') => match chars.next() {
                Some('(') => {
                    chars.next();
                    chars.next();
                }
                Some('[') => for _ in chars.by_ref().take_while(|c| *c != ']') {},
                _ => {}
            },
            Some('(') => {
                let name: String = chars.by_ref().take(2).collect();
                out.push_str(match name.as_str() {
                    "dq" => "\"",
                    "aq" => "'",
                    "ga" => "`",
                    "em" | "en" => "-",
                    _ => " ",
                });
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `word` occurs in `text` as a whole word: `--worker` is not found in `--workers`, nor `-n`
/// in `--no-pager`.
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// `text` starts with `word` as a whole word.
fn starts_with_word(text: &str, word: &str) -> bool {
    text.strip_prefix(word)
        .is_some_and(|rest| !rest.starts_with(is_word_char))
}

/// A `.TP` entry: its tag line and the lines after it, up to the next `.TP` or the end.
struct Entry<'a> {
    tag: &'a str,
    body: &'a [Line],
}

fn tp_entries(lines: &[Line]) -> Vec<Entry<'_>> {
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.mac.as_deref() == Some("TP"))
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .filter_map(|(n, &i)| {
            let tag = lines.get(i + 1)?;
            let end = starts.get(n + 1).copied().unwrap_or(lines.len());
            Some(Entry {
                tag: tag.text.trim(),
                body: &lines[(i + 2).min(end)..end],
            })
        })
        .collect()
}

/// What the command line offers at one level: `corral` or `corral SUBCOMMAND`.
struct CliCommand {
    /// `corral run`
    path: String,
    /// `--control`, `-f`, ...
    flags: Vec<String>,
    /// Value names of the positional arguments and of the options' values.
    values: Vec<String>,
    /// Choices of value-enum arguments (`bash`, `zsh`, ...).
    choices: Vec<String>,
    is_root: bool,
}

fn cli_commands() -> Vec<CliCommand> {
    fn walk(cmd: &clap::Command, path: String, is_root: bool, out: &mut Vec<CliCommand>) {
        let mut c = CliCommand {
            path: path.clone(),
            flags: Vec::new(),
            values: Vec::new(),
            choices: Vec::new(),
            is_root,
        };
        for arg in cmd.get_arguments() {
            // --help/-h is clap's own on every command; --version/-V is checked like any flag.
            if arg.get_id() == "help" || arg.is_hide_set() {
                continue;
            }
            if let Some(long) = arg.get_long() {
                c.flags.push(format!("--{long}"));
            }
            if let Some(short) = arg.get_short() {
                c.flags.push(format!("-{short}"));
            }
            let takes_value = arg.get_action().takes_values();
            if arg.is_positional() || takes_value {
                match arg.get_value_names() {
                    Some(names) => c.values.extend(names.iter().map(|n| n.to_string())),
                    None => c.values.push(arg.get_id().as_str().to_uppercase()),
                }
                for v in arg.get_possible_values() {
                    if !v.is_hide_set() {
                        c.choices.push(v.get_name().to_string());
                    }
                }
            }
        }
        out.push(c);
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            walk(sub, format!("{path} {}", sub.get_name()), false, out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name().to_string(), true, &mut out);
    out
}

/// Fails, naming every problem, unless there are none.
fn fail_with(page: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{page} does not document the code as it is ({} problem(s)):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn corral_1_documents_every_command_flag_and_argument() {
    let page = Page::read("corral.1");
    let text = page.text();
    let synopsis = page.section_or_fail("SYNOPSIS");
    let commands = page.section_or_fail("COMMANDS");
    let command_tags = tp_entries(commands);
    let mut missing = Vec::new();
    let commands = cli_commands();
    assert!(
        commands.len() > 1,
        "walking Cli::command() found no subcommands"
    );
    for c in &commands {
        let everything = c.flags.iter().chain(&c.values).chain(&c.choices);
        for word in everything {
            if !mentions(&text, word) {
                missing.push(format!(
                    "missing `{word}` of `{}`, anywhere in the page",
                    c.path
                ));
            }
        }
        if c.is_root {
            let synopsis_text = join(synopsis);
            for flag in &c.flags {
                if !mentions(&synopsis_text, flag) {
                    missing.push(format!("missing `{} {flag}` in SYNOPSIS", c.path));
                }
            }
            continue;
        }
        // SYNOPSIS: one line for the command, with all its flags and arguments.
        match synopsis
            .iter()
            .find(|l| starts_with_word(l.text.trim(), &c.path))
        {
            None => missing.push(format!(
                "missing a SYNOPSIS line starting with `{}`",
                c.path
            )),
            Some(line) => {
                for word in c.flags.iter().chain(&c.values) {
                    if !mentions(&line.text, word) {
                        missing.push(format!(
                            "missing `{word}` in the SYNOPSIS line of `{}` (`{}`)",
                            c.path,
                            line.text.trim()
                        ));
                    }
                }
            }
        }
        // COMMANDS: a .TP entry for the command, whose text (up to the next command's entry)
        // names each of its flags and arguments.
        let Some(at) = command_tags
            .iter()
            .position(|e| starts_with_word(e.tag, &c.path))
        else {
            missing.push(format!(
                "missing a `.TP` entry in COMMANDS whose tag starts with `{}`",
                c.path
            ));
            continue;
        };
        let end = command_tags[at + 1..]
            .iter()
            .position(|e| starts_with_word(e.tag, "corral"))
            .map_or(command_tags.len(), |n| at + 1 + n);
        let entry: String = command_tags[at..end]
            .iter()
            .map(|e| format!("{}\n{}\n", e.tag, join(e.body)))
            .collect();
        for word in c.flags.iter().chain(&c.values).chain(&c.choices) {
            if !mentions(&entry, word) {
                missing.push(format!(
                    "missing `{word}` in the COMMANDS entry of `{}`",
                    c.path
                ));
            }
        }
    }
    fail_with("man/corral.1", missing);
}

#[test]
fn corral_1_documents_every_exit_code() {
    let page = Page::read("corral.1");
    let section = page.section_or_fail("EXIT STATUS");
    let entries = tp_entries(section);
    let mut missing = Vec::new();
    let mut codes = Vec::new();
    for line in EXIT_CODES.lines() {
        let line = line.trim();
        let Some((code, meaning)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        codes.push(code);
        let Some(entry) = entries.iter().find(|e| e.tag == code) else {
            missing.push(format!(
                "missing a `.TP` entry `{code}` in EXIT STATUS (for \"{line}\")"
            ));
            continue;
        };
        let body = join(entry.body).to_lowercase();
        for word in meaning
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            if !mentions(&body, &word.to_lowercase()) {
                missing.push(format!(
                    "missing the word `{word}` in EXIT STATUS entry `{code}` (EXIT_CODES says \"{line}\")"
                ));
            }
        }
    }
    assert!(
        !codes.is_empty(),
        "no exit codes found in corral::cli::EXIT_CODES:\n{EXIT_CODES}"
    );
    for e in &entries {
        if e.tag.bytes().all(|b| b.is_ascii_digit()) && !codes.contains(&e.tag) {
            missing.push(format!(
                "EXIT STATUS documents code {}, which corral::cli::EXIT_CODES does not have",
                e.tag
            ));
        }
    }
    fail_with("man/corral.1", missing);
}

#[test]
fn corral_toml_5_documents_every_config_key() {
    let page = Page::read("corral.toml.5");
    let keys = corral::config::all_keys();
    assert!(!keys.is_empty(), "corral::config::all_keys() is empty");
    let entries = tp_entries(&page.lines);
    let text = page.text();
    let mut missing = Vec::new();
    for key in &keys {
        if !entries.iter().any(|e| starts_with_word(e.tag, key)) {
            missing.push(format!(
                "missing a `.TP` entry for config key `{key}` (a tag line starting with `{key}`)"
            ));
        }
        if !mentions(&text, key) {
            missing.push(format!(
                "missing the config key `{key}`, anywhere in the page"
            ));
        }
    }
    // And the other way: an entry `KEY = TYPE` for a key the parser does not accept.
    for e in &entries {
        if let Some((name, _)) = e.tag.split_once(" = ") {
            let looks_like_key = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            if looks_like_key && !keys.iter().any(|k| k == name) {
                missing.push(format!(
                    "documents config key `{name}`, which corral::config::all_keys() does not have"
                ));
            }
        }
    }
    fail_with("man/corral.toml.5", missing);
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Runs `program args`; `None` when it is not installed.
fn run(program: &str, args: &[&str]) -> Option<Output> {
    match Command::new(program).args(args).env("LC_ALL", "C").output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

#[test]
fn pages_format_without_warnings() {
    let mut problems = Vec::new();
    for page in PAGES {
        let path = page_path(page);
        let path = path.to_str().expect("UTF-8 path");
        let Some(out) = run("groff", &["-man", "-ww", "-z", path]) else {
            assert!(
                !ci(),
                "groff is not installed, and CI=true: install it (apt-get install groff-base \
                 or groff) so that the man pages are checked"
            );
            // Straight to stderr: the harness captures what eprintln! prints.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr().lock(),
                b"SKIPPED: groff is not installed, so the man pages are not checked\n",
            );
            return;
        };
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !printed.is_empty() {
            problems.push(format!(
                "groff -man -ww -z man/{page} ({}):\n{printed}",
                out.status
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn completions(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["completions", shell])
        .output()
        .expect("cannot run corral");
    assert!(
        out.status.success(),
        "corral completions {shell} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("corral completions {shell} printed non-UTF-8: {e}"));
    assert!(
        !script.trim().is_empty(),
        "corral completions {shell} printed nothing"
    );
    script
}

/// Writes `script` to a temporary file and checks it with `program args FILE`; `false` when
/// the shell is not installed.
fn syntax_ok(shell: &str, script: &str, program: &str, args: &[&str]) -> bool {
    let file = std::env::temp_dir().join(format!(
        "corral-man-test-{}-completions.{shell}",
        std::process::id()
    ));
    std::fs::write(&file, script)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    let mut all: Vec<&str> = args.to_vec();
    all.push(file.to_str().expect("UTF-8 path"));
    let out = run(program, &all);
    let _ = std::fs::remove_file(&file);
    let Some(out) = out else {
        return false;
    };
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "`{program} {}` rejects the output of `corral completions {shell}` ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn completion_scripts_are_well_formed() {
    // Every shell corral offers prints something.
    let shells: Vec<String> = cli_commands()
        .into_iter()
        .find(|c| c.path == "corral completions")
        .expect("corral has a completions command")
        .choices;
    for shell in ["bash", "zsh", "fish"] {
        assert!(
            shells.iter().any(|s| s == shell),
            "corral completions does not offer {shell} (it offers {shells:?})"
        );
    }
    for shell in &shells {
        completions(shell);
    }
    let bash = completions("bash");
    assert!(
        syntax_ok("bash", &bash, "bash", &["-n"]),
        "bash is not installed, so `corral completions bash` cannot be checked"
    );
    // zsh and fish are checked where they are installed.
    syntax_ok("zsh", &completions("zsh"), "zsh", &["-n"]);
    syntax_ok("fish", &completions("fish"), "fish", &["--no-execute"]);
}
