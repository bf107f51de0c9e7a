//! Whether a `.env` file an app loaded itself (PM2 never reads `env_file`; the app did, with
//! dotenv or the like) means the same when corral reads it as systemd's `EnvironmentFile=`
//! (src/envfile.rs). Where the two read a line differently, corral must not take the file
//! over silently: a `PORT=3000 # web` would become `3000 # web`.
//!
//! The lines are named by number only: a `.env` file holds secrets.

use crate::envfile;

/// The file's lines that dotenv reads differently from systemd, with why; or why the file
/// cannot be read as systemd reads it at all.
pub fn differences(bytes: &[u8]) -> Result<Vec<(usize, &'static str)>, String> {
    if let Err(problems) = envfile::parse(bytes) {
        let first = &problems.listed[0];
        return Err(format!(
            "line {}: {} ({} problem(s) in all)",
            first.line, first.message, problems.total
        ));
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    let mut in_quote: Option<char> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        // Inside a value quoted over several lines: only its end matters here.
        if let Some(q) = in_quote {
            if line.contains(q) {
                in_quote = None;
            }
            continue;
        }
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((_, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let body = &value[1..];
                if q == '"' && ["\\n", "\\r", "\\t"].iter().any(|e| body.contains(e)) {
                    out.push((n, "dotenv turns \\n in double quotes into a newline"));
                }
                if !body.contains(q) {
                    in_quote = Some(q);
                }
            }
            Some('`') => out.push((n, "dotenv takes `...` as quotes")),
            _ if value.contains(" #") => {
                out.push((n, "dotenv ends the value at ` #`, a comment"));
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_dotenv_and_systemd_read_alike_and_what_not() {
        let same = b"# secrets\nA=1\nB=\"two words\"\nC='x # y'\nD=\"multi\nline\"\n";
        assert_eq!(differences(same).unwrap(), vec![]);
        let differ = b"PORT=3000 # web\nKEY=\"a\\nb\"\nT=`x`\n";
        let lines: Vec<usize> = differences(differ).unwrap().iter().map(|d| d.0).collect();
        assert_eq!(lines, vec![1, 2, 3]);
        assert!(differences(b"export A=1\n").is_err());
    }
}
