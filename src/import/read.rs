//! Reading what PM2 users have: an ecosystem file (JavaScript evaluated with `node`, JSON, or
//! YAML) or PM2's saved process list (`pm2 save`, `~/.pm2/dump.pm2`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// An ecosystem file or a dump is at most this big (PM2's are a few KiB).
const MAX_FILE: u64 = 4 << 20;
/// What `node` prints for an ecosystem file is at most this big.
const MAX_OUTPUT: usize = 16 << 20;
/// How long evaluating an ecosystem file may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// What was read: the apps, and what else the file held.
pub struct Source {
    pub apps: Vec<App>,
    /// PM2's saved process list: one entry per process, flattened environment.
    pub dump: bool,
    /// The file's directory.
    pub file_dir: PathBuf,
    /// Top-level keys beside `apps` (`deploy`, ...), for the report.
    pub other_keys: Vec<String>,
    /// The file's `deploy` section, whose `deploy.NAME.env` PM2 applies with `--env NAME`.
    pub deploy: Option<Value>,
}

pub fn read(path: &Path) -> Result<Source, String> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{name} is {} bytes, more than an ecosystem file or dump may be ({MAX_FILE})",
            meta.len()
        ));
    }
    let file_dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let value = match ext.as_str() {
        "js" | "cjs" | "mjs" => evaluate_js(path)?,
        "yaml" | "yml" => yaml(path)?,
        _ => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
            serde_json::from_str(&text).map_err(|e| format!("{name} is not valid JSON: {e}"))?
        }
    };
    let dump = ext == "pm2" || looks_like_dump(&value);
    let deploy = value.get("deploy").cloned();
    let (apps, other_keys) = apps_of(value).map_err(|e| format!("{name}: {e}"))?;
    Ok(Source {
        apps,
        dump,
        file_dir,
        other_keys,
        deploy,
    })
}

/// A dump is an array of PM2's process records, which have `pm_exec_path`.
fn looks_like_dump(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e.get("pm_exec_path").is_some()))
}

/// The apps of an ecosystem (`{ apps: [...] }`, `{ apps: {...} }`, `[...]`, or one app).
/// One app's settings, as PM2 has them.
pub type App = Map<String, Value>;

fn apps_of(v: Value) -> Result<(Vec<App>, Vec<String>), String> {
    let objects = |items: Vec<Value>| -> Result<Vec<App>, String> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                other => Err(format!("app {i} is not an object but {}", kind(&other))),
            })
            .collect()
    };
    match v {
        Value::Array(items) => Ok((objects(items)?, Vec::new())),
        Value::Object(mut m) => match m.remove("apps") {
            Some(Value::Array(items)) => Ok((objects(items)?, m.keys().cloned().collect())),
            Some(Value::Object(app)) => Ok((vec![app], m.keys().cloned().collect())),
            Some(other) => Err(format!("`apps` is {}, not a list of apps", kind(&other))),
            None if m.contains_key("script") => Ok((vec![m], Vec::new())),
            None => Err("no `apps`, and no `script` for a single app".into()),
        },
        other => Err(format!("expected apps, found {}", kind(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The module an ecosystem file exports, as JSON: required (CommonJS) or imported (ES
/// module), as PM2 loads it, in this command's directory and environment. It is JavaScript:
/// it may compute values, `require` things, read `process.env`, print (dotenv does), and leave
/// timers or connections open. So the JSON goes between two copies of a mark no file can
/// guess, and node exits once it is written.
const EVALUATE: &str = r#"
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
const [file, mark] = process.argv.slice(1);
let config;
try {
  if (file.endsWith('.mjs')) throw Object.assign(new Error(), { code: 'ERR_REQUIRE_ESM' });
  config = createRequire(pathToFileURL(file).href)(file);
} catch (e) {
  if (e.code !== 'ERR_REQUIRE_ESM' && e.code !== 'ERR_REQUIRE_ASYNC_MODULE') throw e;
  config = (await import(pathToFileURL(file).href)).default;
}
const json = JSON.stringify(config ?? null);
process.stdout.write('\n' + mark + json + mark + '\n', () => process.exit(0));
"#;

/// A mark no ecosystem file can know in advance: from the seed std draws for each
/// `RandomState`.
fn mark() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("corral-import-{:016x}", h.finish())
}

fn evaluate_js(path: &Path) -> Result<Value, String> {
    let name = path.display();
    let file = std::fs::canonicalize(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mark = mark();
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", EVALUATE])
        .arg(&file)
        .arg(&mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{name} is JavaScript, which corral evaluates with node, and node is not \
                 installed (or not on PATH); install it, or write the apps as JSON"
            ),
            _ => format!("cannot run node for {name}: {e}"),
        })?;
    // Both pipes are read on threads, so that neither can fill up and stall node; each is
    // bounded.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + NODE_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "evaluating {name} with node took more than {}s",
                NODE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        // node's own report: the error and where, without its stack of internals.
        let report: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim_start().starts_with("at ") && !l.trim().is_empty())
            .filter(|l| !l.starts_with("Node.js v"))
            .take(8)
            .collect();
        return Err(format!(
            "cannot evaluate {name} with node ({status}):\n{}",
            report.join("\n")
        ));
    }
    if out.len() > MAX_OUTPUT {
        return Err(format!(
            "{name} evaluates to more than {MAX_OUTPUT} bytes of JSON"
        ));
    }
    let out = String::from_utf8_lossy(&out);
    let json = out
        .rfind(&mark)
        .and_then(|end| Some((out[..end].rfind(&mark)?, end)))
        .map(|(start, end)| &out[start + mark.len()..end])
        .ok_or_else(|| {
            format!("evaluating {name} with node gave no result (does it call process.exit?)")
        })?;
    serde_json::from_str(json).map_err(|e| format!("{name} does not evaluate to JSON data: {e}"))
}

fn yaml(path: &Path) -> Result<Value, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| format!("{name} is not valid YAML: {e}"))?;
    let doc = docs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{name} is empty"))?;
    yaml_to_json(doc).map_err(|e| format!("{name}: {e}"))
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(n) => Value::from(n),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Integer(n) => n.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("a key that is not a string: {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
    })
}
