//! README.md as a user reads it: "Try it" runs exactly as written, and every config in it is
//! one `corral check` accepts.

mod common;

use std::path::Path;
use std::process::Command;

use common::CORRAL;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced blocks of `lang` in `text`, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let body = &rest[i + open.len()..];
        let end = body.find("```").expect("a closed block");
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

#[test]
fn try_it_runs_as_written() {
    if !nix::unistd::geteuid().is_root() {
        common::skipped(
            "README's Try it needs root, to run in a network namespace of its own (port 8080 \
             may be taken here)",
        );
        return;
    }
    let text = readme();
    let section = &text[text.find("## Try it").expect("a Try it section")..];
    let script = blocks(section, "sh")
        .into_iter()
        .next()
        .expect("a sh block");
    // Its own network (port 8080 may be in use here) and its own /run (root's control
    // sockets go to /run/corral); then the block as written, and a wait for the job it
    // started, which the block's `kill %1` stops.
    let wrapped = format!(
        "set -e\nip link set lo up\nmount -t tmpfs tmpfs /run\ncd '{}'\n{script}\nwait %1\necho \"exit $?\"\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "bash", "-c", &wrapped])
        // The outer cargo's jobserver is not inherited: the inner build must not look for it.
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "{context}");
    // Seven answers, from more than one worker.
    let answers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("hello from worker"))
        .collect();
    assert_eq!(answers.len(), 7, "{context}");
    let mut workers: Vec<&str> = answers
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    workers.sort();
    workers.dedup();
    assert!(workers.len() > 1, "answers from several workers: {context}");
    assert!(
        stdout.contains("generation 2 serving: 4 worker(s) replaced"),
        "{context}"
    );
    // The status table lists the 4 workers of generation 2.
    let rows = stdout
        .lines()
        .filter(|l| l.contains(" ready ") && l.split_whitespace().nth(3) == Some("2"))
        .count();
    assert_eq!(rows, 4, "{context}");
    // kill %1 stopped it gracefully: every worker exited on its own, and corral with 0.
    assert!(stdout.trim_end().ends_with("exit 0"), "{context}");
    assert!(!stderr.contains("SIGKILL"), "{context}");
}

#[test]
fn every_config_in_the_readme_passes_corral_check() {
    let text = readme();
    let configs = blocks(&text, "toml");
    assert!(configs.len() >= 4, "{configs:#?}");
    let dir = std::env::temp_dir().join(format!("corral-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, config) in configs.iter().enumerate() {
        let path = dir.join(format!("app{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let out = Command::new(CORRAL)
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README config {i} is refused:\n{config}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
