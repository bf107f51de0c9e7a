//! Golden files for unit generation: `tests/golden/APP.toml` renders to the files under
//! `tests/golden/APP/{generator,standalone}/`. `CORRAL_UPDATE_GOLDEN=1 cargo test` rewrites
//! them; review the diff like any other change.

use std::path::{Path, PathBuf};

use corral::config::Config;
use corral::units::{render, Flavor};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(app: &str) {
    let source = PathBuf::from(format!("/etc/corral/{app}.toml"));
    let text = std::fs::read_to_string(golden_dir().join(format!("{app}.toml"))).unwrap();
    let config = Config::parse(&source, &text).unwrap();
    let flavors = [
        ("generator", Flavor::Generator),
        (
            "standalone",
            Flavor::Standalone {
                binary: "/usr/bin/corral".into(),
                config: source.clone(),
            },
        ),
    ];
    for (name, flavor) in flavors {
        let dir = golden_dir().join(app).join(name);
        let files = render(&config, &source, &flavor);
        if std::env::var_os("CORRAL_UPDATE_GOLDEN").is_some() {
            let _ = std::fs::remove_dir_all(&dir);
            for f in &files {
                let p = dir.join(&f.path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, &f.contents).unwrap();
            }
        }
        let mut expected: Vec<PathBuf> = walk(&dir)
            .into_iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_path_buf())
            .collect();
        expected.sort();
        let mut got: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        got.sort();
        assert_eq!(got, expected, "{app}/{name}: the set of files differs");
        for f in &files {
            let want = std::fs::read_to_string(dir.join(&f.path)).unwrap();
            assert_eq!(
                f.contents,
                want,
                "{app}/{name}/{} differs",
                f.path.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn two_listeners_a_fixed_user_and_a_watchdog() {
    check("api");
}

#[test]
fn the_smallest_app() {
    check("hello");
}
