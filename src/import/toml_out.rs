//! Writes an app config the way a person would: the top-level keys, then one table per
//! concern, each setting with a comment saying where it came from.

/// One `key = value` line with its comment.
struct Line {
    key: String,
    value: String,
    comment: String,
}

/// A config being written: the top level, then tables in the order they were first used.
#[derive(Default)]
pub struct Doc {
    header: Vec<String>,
    top: Vec<Line>,
    tables: Vec<(String, Vec<Line>)>,
    /// `[[listen]]` tables, each a list of lines.
    listens: Vec<Vec<Line>>,
    /// Comment lines at the end.
    footer: Vec<String>,
}

impl Doc {
    /// A comment line at the top of the file.
    pub fn header(&mut self, text: &str) {
        self.header.push(text.to_string());
    }

    /// Removes the comment lines at the end.
    pub fn clear_footer(&mut self) {
        self.footer.clear();
    }

    /// A comment line at the end of the file.
    pub fn footer(&mut self, text: &str) {
        self.footer.push(text.to_string());
    }

    /// `key = value` in `table` ("" for the top level); `value` is TOML already.
    pub fn set(&mut self, table: &str, key: &str, value: String, comment: &str) {
        let line = Line {
            key: key.to_string(),
            value,
            comment: comment.to_string(),
        };
        if table.is_empty() {
            self.top.retain(|l| l.key != key);
            self.top.push(line);
            return;
        }
        match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => {
                lines.retain(|l| l.key != key);
                lines.push(line);
            }
            None => self.tables.push((table.to_string(), vec![line])),
        }
    }

    /// Whether `key` is set in `table`.
    pub fn has(&self, table: &str, key: &str) -> bool {
        if table.is_empty() {
            return self.top.iter().any(|l| l.key == key);
        }
        self.tables
            .iter()
            .any(|(t, lines)| t == table && lines.iter().any(|l| l.key == key))
    }

    /// A `[[listen]]` table.
    pub fn listen(&mut self, lines: Vec<(&str, String, &str)>) {
        self.listens.push(
            lines
                .into_iter()
                .map(|(key, value, comment)| Line {
                    key: key.to_string(),
                    value,
                    comment: comment.to_string(),
                })
                .collect(),
        );
    }

    /// Removes `key` from `table` ("" for the top level), and returns its value.
    pub fn remove(&mut self, table: &str, key: &str) -> Option<String> {
        let lines = if table.is_empty() {
            &mut self.top
        } else {
            &mut self.tables.iter_mut().find(|(t, _)| t == table)?.1
        };
        let at = lines.iter().position(|l| l.key == key)?;
        Some(lines.remove(at).value)
    }

    /// Removes every `[[listen]]` table.
    pub fn remove_listens(&mut self) {
        self.listens.clear();
    }

    #[cfg(test)]
    pub fn render(&self) -> String {
        self.render_mapped().0
    }

    /// The text, and for each setting its line (1-based) with its table ("listen" for a
    /// `[[listen]]`) and key: what a diagnostic of the checker points at.
    pub fn render_mapped(&self) -> (String, Vec<(usize, String, String)>) {
        let mut out = String::new();
        let mut at = Vec::new();
        for h in &self.header {
            out += &comment_line(h);
        }
        if !self.header.is_empty() {
            out.push('\n');
        }
        render_lines(&mut out, &mut at, "", &self.top);
        // The environment reads best next to the command, before the listeners.
        let (env, rest): (Vec<_>, Vec<_>) =
            self.tables.iter().partition(|(t, _)| t == "environment");
        for (table, lines) in env.into_iter().filter(|(_, l)| !l.is_empty()) {
            out += &format!("\n[{table}]\n");
            render_lines(&mut out, &mut at, table, lines);
        }
        for listen in &self.listens {
            out += "\n[[listen]]\n";
            render_lines(&mut out, &mut at, "listen", listen);
        }
        for (table, lines) in rest.into_iter().filter(|(_, l)| !l.is_empty()) {
            out += &format!("\n[{table}]\n");
            render_lines(&mut out, &mut at, table, lines);
        }
        if !self.footer.is_empty() {
            out.push('\n');
            for f in &self.footer {
                out += &comment_line(f);
            }
        }
        (out, at)
    }
}

/// Comment lines are wrapped here, so that a file reads in a terminal.
const WIDTH: usize = 96;

/// A comment, wrapped at spaces; a `- ` item's later lines are indented under its text.
fn comment_line(text: &str) -> String {
    if text.is_empty() {
        return "#\n".to_string();
    }
    let indent = if text.starts_with("- ") { "#   " } else { "# " };
    let mut out = String::new();
    let mut line = String::from("# ");
    for word in text.split(' ') {
        if line.len() + word.len() + 1 > WIDTH && line.trim_end() != "#" && line != indent {
            out += line.trim_end();
            out.push('\n');
            line = indent.to_string();
        }
        line += word;
        line.push(' ');
    }
    out += line.trim_end();
    out.push('\n');
    out
}

/// The lines of a table, their comments lined up after the longest setting (up to a point).
fn render_lines(
    out: &mut String,
    at: &mut Vec<(usize, String, String)>,
    table: &str,
    lines: &[Line],
) {
    let width = lines
        .iter()
        .map(|l| key(&l.key).len() + 3 + l.value.chars().count())
        .filter(|&w| w <= 40)
        .max()
        .unwrap_or(0);
    for l in lines {
        let setting = format!("{} = {}", key(&l.key), l.value);
        at.push((out.lines().count() + 1, table.to_string(), l.key.clone()));
        if l.comment.is_empty() {
            *out += &format!("{setting}\n");
        } else {
            let pad = width.saturating_sub(setting.chars().count());
            *out += &format!("{setting}{}  # {}\n", " ".repeat(pad), l.comment);
        }
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped (TOML 1.0,
/// "Basic strings").
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\t' => out += "\\t",
            '\r' => out += "\\r",
            c if c.is_control() => out += &format!("\\u{:04X}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings on one line.
pub fn strings(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| string(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// A bare key when it can be one, else a quoted one.
pub fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        string(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_keys_are_escaped_as_toml_says() {
        assert_eq!(string("a\"b\\c\nd\u{1b}"), "\"a\\\"b\\\\c\\nd\\u001B\"");
        assert_eq!(key("NODE_ENV"), "NODE_ENV");
        assert_eq!(key("a.b"), "\"a.b\"");
        assert_eq!(strings(&["x".into(), "y z".into()]), "[\"x\", \"y z\"]");
    }

    #[test]
    fn a_document_has_its_tables_in_order_with_comments() {
        let mut d = Doc::default();
        d.header("from PM2");
        d.set(
            "",
            "command",
            strings(&["node".into(), "a.js".into()]),
            "script",
        );
        d.set("stop", "timeout", string("3s"), "kill_timeout: 3000");
        d.set("", "workers", "4".into(), "instances: 4");
        d.listen(vec![
            ("name", string("http"), ""),
            ("address", string("3000"), "PORT"),
        ]);
        let text = d.render();
        let want = [
            "# from PM2",
            "",
            "command = [\"node\", \"a.js\"]  # script",
            "workers = 4                 # instances: 4",
            "",
            "[[listen]]",
            "name = \"http\"",
            "address = \"3000\"  # PORT",
            "",
            "[stop]",
            "timeout = \"3s\"  # kill_timeout: 3000",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
    }
}
