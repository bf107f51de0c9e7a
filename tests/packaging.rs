//! The Debian and RPM packages: what `packaging/build` makes, what lintian and rpmlint say,
//! and what installing, upgrading under load and purging do in a booted systemd.

mod common;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{http_get, Load};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// One build at a time: both tests use the same target directory.
static BUILD: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs packaging/build (for `version`, if given) and returns (the .deb, the .rpm).
fn build(version: Option<&str>) -> (PathBuf, PathBuf) {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("packaging/build"));
    if let Some(v) = version {
        cmd.env("CORRAL_DEB_VERSION", v);
    }
    let out = cmd.output().expect("run packaging/build");
    assert!(
        out.status.success(),
        "packaging/build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The exact file names: the default version gets the "-1" revision; an override is whole.
    let (deb_version, rpm_version) = match version {
        None => (format!("{VERSION}-1"), format!("{VERSION}-1")),
        Some(v) => (v.to_string(), format!("{v}-1")),
    };
    let find = |dir: &str, prefix: String| {
        std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .unwrap_or_else(|| panic!("no {prefix}* in {dir}"))
    };
    // cargo-deb replaces an earlier .deb: keep each build's packages aside.
    let keep = root().join("target/packages-test").join(&deb_version);
    std::fs::create_dir_all(&keep).unwrap();
    let aside = |p: PathBuf| {
        let to = keep.join(p.file_name().unwrap());
        std::fs::copy(&p, &to).unwrap();
        to
    };
    let deb = aside(find("target/debian", format!("corral_{deb_version}_")));
    let rpm = aside(find(
        "target/generate-rpm",
        format!("corral-{rpm_version}."),
    ));
    (deb, rpm)
}

/// The package `deb` with its binary stamped with `version` (`common::stamped`).
fn stamp_deb(deb: &Path, version: &str) -> PathBuf {
    let dir = deb.with_extension("stamped");
    let _ = std::fs::remove_dir_all(&dir);
    run(
        "dpkg-deb",
        &["-R", deb.to_str().unwrap(), dir.to_str().unwrap()],
    );
    let bin = dir.join("usr/bin/corral");
    let bytes = common::stamped(std::fs::read(&bin).unwrap(), version);
    std::fs::write(&bin, &bytes).unwrap();
    // The package's own checksum of the file, if it lists them, as a build would have made it.
    let sums = dir.join("DEBIAN/md5sums");
    if sums.exists() {
        let digest = run("md5sum", &[bin.to_str().unwrap()]);
        let digest = digest.split_whitespace().next().unwrap();
        let text: String = std::fs::read_to_string(&sums)
            .unwrap()
            .lines()
            .map(|l| match l.split_once("  ") {
                Some((_, "usr/bin/corral")) => format!("{digest}  usr/bin/corral\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&sums, text).unwrap();
    }
    let out = deb.with_extension("stamped.deb");
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-b",
            dir.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

/// Whether the package tests can run here: the tools .ci/run installs. Missing ones make the
/// tests fail under CI=true and skip, with the reason, elsewhere (as the systemd sandbox does).
fn tools_present() -> bool {
    let missing: Vec<&str> = [
        ("cargo-deb", &["deb", "--version"][..]),
        ("cargo-generate-rpm", &["generate-rpm", "--version"][..]),
    ]
    .iter()
    .filter(|(_, args)| {
        !Command::new("cargo")
            .args(*args)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(|(name, _)| *name)
    .chain(["dpkg-deb", "lintian", "rpm"].into_iter().filter(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }))
    .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the package tests need {missing:?}: .ci/run installs them");
    }
    common::skipped(&format!(
        "the package tests need {missing:?} (.ci/run installs them)"
    ));
    false
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The regular files and symlinks a .deb installs, as absolute paths.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    run("dpkg-deb", &["-c", deb.to_str().unwrap()])
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let path = l.split_whitespace().nth(5).unwrap();
            path.trim_start_matches('.').to_string()
        })
        .collect()
}

#[test]
fn both_packages_hold_the_same_payload_and_pass_lintian_and_rpmlint() {
    if !tools_present() {
        return;
    }
    let (deb, rpm) = build(None);
    let field = |f: &str| run("dpkg-deb", &["-f", deb.to_str().unwrap(), f]);
    assert_eq!(field("Package").trim(), "corral");
    assert_eq!(
        field("Version").trim(),
        format!("{VERSION}-1"),
        "version from Cargo.toml"
    );
    let depends = field("Depends");
    assert!(
        depends.trim().starts_with("libc6 (>= ") && !depends.contains(','),
        "depends on libc only: {depends}"
    );
    let description = field("Description");
    assert!(description.contains("socket-activated listeners") && description.lines().count() > 3);

    let files = deb_files(&deb);
    for path in [
        "/usr/bin/corral",
        "/usr/lib/systemd/system/corral@.service",
        "/usr/lib/systemd/system/corral@.socket",
        "/usr/lib/systemd/system-generators/corral-generator",
        "/usr/share/man/man1/corral.1.gz",
        "/usr/share/man/man5/corral.toml.5.gz",
        "/usr/share/man/man8/corral-generator.8.gz",
        "/usr/share/man/man7/corral-worker.7.gz",
        "/usr/share/bash-completion/completions/corral",
        "/usr/share/zsh/vendor-completions/_corral",
        "/usr/share/fish/vendor_completions.d/corral.fish",
        "/etc/corral/README",
        "/usr/share/doc/corral/examples/api.toml",
        "/usr/share/doc/corral/copyright",
    ] {
        assert!(files.contains(path), "{path} not in the .deb: {files:#?}");
    }
    let listing = run("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    assert!(
        listing.contains(
            "./usr/lib/systemd/system-generators/corral-generator -> ../../../bin/corral"
        ),
        "the generator is a symlink to the binary: {listing}"
    );
    let conffiles = run("dpkg-deb", &["-I", deb.to_str().unwrap(), "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/corral/README");

    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian (.ci/run installs it)");
    let report = String::from_utf8_lossy(&lintian.stdout);
    let flagged: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        flagged.is_empty(),
        "lintian (overrides: packaging/lintian-overrides): {flagged:#?}"
    );

    // The RPM installs the same files; only each format's own license and changelog files
    // (and lintian's overrides) differ.
    let rpm_files: BTreeSet<String> = run("rpm", &["-qlp", rpm.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect();
    let deb_only = [
        "/usr/share/doc/corral/copyright",
        "/usr/share/doc/corral/changelog.Debian.gz",
        "/usr/share/lintian/overrides/corral",
    ];
    let rpm_only = ["/usr/share/licenses/corral/LICENSE"];
    let common_deb: BTreeSet<&String> = files
        .iter()
        .filter(|f| !deb_only.contains(&f.as_str()))
        .collect();
    let common_rpm: BTreeSet<&String> = rpm_files
        .iter()
        .filter(|f| !rpm_only.contains(&f.as_str()))
        .collect();
    assert_eq!(common_rpm, common_deb, "rpm -qlp and the .deb differ");
    let info = run("rpm", &["-qip", rpm.to_str().unwrap()]);
    assert!(info.contains(&format!("Version     : {VERSION}")), "{info}");
    let requires = run("rpm", &["-qp", "--requires", rpm.to_str().unwrap()]);
    for r in requires.lines() {
        let known = [
            "libc.so",
            "libgcc_s.so",
            "ld-linux",
            "rpmlib(",
            "rtld(",
            "/bin/sh",
            "config(corral)",
        ];
        assert!(
            known.iter().any(|k| r.starts_with(k)),
            "unexpected requirement {r:?}"
        );
    }

    // rpmlint, where it runs: no error but the ones packaging/rpmlint.toml explains.
    match Command::new("rpmlint")
        .arg("-c")
        .arg(root().join("packaging/rpmlint.toml"))
        .arg(&rpm)
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(" 0 errors"), "rpmlint: {text}");
        }
        Err(e) => eprintln!("rpmlint cannot run here ({e}): not checked"),
    }
}

const APP: &str = r#"
command = ["/usr/bin/python3", "{worker}"]
workers = 2
[[listen]]
name = "http"
address = "127.0.0.1:8080"
[stop]
timeout = "3s"
"#;

#[test]
fn install_upgrade_under_load_and_purge_in_a_booted_systemd() {
    if !tools_present() {
        return;
    }
    let (deb, _) = build(None);
    let (deb2, _) = build(Some(&format!("{VERSION}+upgrade")));
    let deb2 = stamp_deb(&deb2, &format!("{VERSION}+upgrade"));
    let Some(sb) = sandbox::boot() else { return };
    sb.install_workers();
    sb.copy_in(&deb, "/var/cache/corral-test/corral.deb", 0o644);
    sb.copy_in(&deb2, "/var/cache/corral-test/corral-upgrade.deb", 0o644);
    let out = sb.ok("dpkg -i /var/cache/corral-test/corral.deb");
    assert!(!out.contains("warning"), "{out}");
    assert_eq!(
        sb.ok("readlink /usr/lib/systemd/system-generators/corral-generator")
            .trim(),
        "../../../bin/corral"
    );
    sb.write(
        "/etc/corral/demo.toml",
        &APP.replace("{worker}", sandbox::WORKER_PY),
    );
    sb.ok("systemctl daemon-reload && systemctl enable --now corral@demo.socket && systemctl start corral@demo.service");
    let answer = sb
        .in_netns(|| http_get(8080, "/"))
        .expect("the installed package serves");
    assert_eq!(answer["app"], "demo");
    let old_pid = sb.prop("corral@demo.service", "MainPID");

    // Upgrade under load: the running app's supervisor re-executes the new binary in place;
    // its pid and its workers stay, no request fails, and systemd sees it active on the new
    // version.
    let workers = |unit_app: &str| -> Vec<i64> {
        let s: serde_json::Value =
            serde_json::from_str(&sb.ok(&format!("corral status {unit_app} --json"))).unwrap();
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_i64().unwrap())
            .collect()
    };
    // Two more apps whose supervisors cannot be upgraded in place (here, a new image that
    // fails to take over: corral puts the old one back). One is restarted, named; the other's
    // config no longer passes `corral check` by the time of the upgrade: it runs on as it is,
    // named.
    let fault = format!("[Service]\nEnvironment=CORRAL_TEST_FAIL_TAKE_OVER={VERSION}+upgrade\n");
    for (app, port) in [("other", "8081"), ("broken", "8082")] {
        sb.write(
            &format!("/etc/corral/{app}.toml"),
            &APP.replace("{worker}", sandbox::WORKER_PY)
                .replace("8080", port),
        );
        sb.write(
            &format!("/etc/systemd/system/corral@{app}.service.d/fault.conf"),
            &fault,
        );
    }
    sb.ok("systemctl daemon-reload && systemctl start corral@other.socket corral@other.service corral@broken.socket corral@broken.service");
    let pid = |app: &str| sb.prop(&format!("corral@{app}.service"), "MainPID");
    let (other_pid, broken_pid) = (pid("other"), pid("broken"));
    sb.write(
        "/etc/corral/broken.toml",
        "command = [\"x\"]\nworkers = \"lots\"\n",
    );

    let demo_workers = workers("demo");
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", sb.pid)).unwrap();
    let load = Load::start_in(Some(ns), 8080);
    sb.in_netns(|| http_get(8080, "/")).unwrap();
    let out = sb.ok("dpkg -i /var/cache/corral-test/corral-upgrade.deb 2>&1");
    assert!(
        out.contains(&format!(
            "corral: corral@demo.service: upgraded in place from corral {VERSION} to \
             {VERSION}+upgrade"
        )),
        "{out}"
    );
    sb.in_netns(|| http_get(8080, "/")).unwrap();
    load.finish_without_failures(6);
    assert_eq!(
        sb.prop("corral@demo.service", "MainPID"),
        old_pid,
        "the supervisor's pid is kept"
    );
    assert_eq!(workers("demo"), demo_workers, "every worker is kept");
    assert_eq!(
        sb.prop("corral@demo.service", "ActiveState"),
        "active",
        "systemd saw RELOADING=1 then READY=1"
    );
    let status = sb.ok("systemctl status corral@demo.service --no-pager");
    assert!(
        status.contains("active (running)")
            && status.contains(&format!("corral {VERSION}+upgrade")),
        "{status}"
    );
    assert_eq!(
        sb.ok("dpkg-query -W -f '${Version}' corral").trim(),
        format!("{VERSION}+upgrade")
    );
    // SIGUSR2 to the main process, as systemd sends it, does the same.
    let cursor = sb.cursor();
    sb.ok("systemctl kill --kill-whom=main --signal=USR2 corral@demo.service");
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        &format!("upgraded in place from corral {VERSION}+upgrade to {VERSION}+upgrade"),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(sb.prop("corral@demo.service", "MainPID"), old_pid);
    assert_eq!(workers("demo"), demo_workers);
    let s: serde_json::Value = serde_json::from_str(&sb.ok("corral status demo --json")).unwrap();
    assert_eq!(s["upgraded"]["count"], 2, "{s}");

    assert!(
        out.contains("corral: corral@other.service cannot be upgraded in place (")
            && out.contains("restarting it on the new version"),
        "{out}"
    );
    assert!(
        out.contains("corral: corral@broken.service cannot be upgraded in place (")
            && out.contains("and is not restarted"),
        "{out}"
    );
    assert_ne!(pid("other"), other_pid, "restarted");
    assert_eq!(pid("broken"), broken_pid, "left running, put back");
    sb.in_netns(|| http_get(8081, "/"))
        .expect("the restarted app serves");
    sb.in_netns(|| http_get(8082, "/"))
        .expect("the broken-config app still serves");

    // Purge: the running app is stopped, and said so; no file of the package is left; the
    // admin's config stays, and is named.
    let out = sb.ok("dpkg --purge corral");
    assert!(
        out.contains("corral: stopping") && out.contains("corral@demo.service"),
        "{out}"
    );
    assert!(
        out.contains("left in place: broken.toml demo.toml other.toml"),
        "{out}"
    );
    assert_eq!(sb.prop("corral@demo.service", "ActiveState"), "inactive");
    let left = sb.sh(
        "ls /usr/bin/corral /usr/lib/systemd/system-generators/corral-generator \
         /usr/lib/systemd/system/corral@.service /usr/share/man/man1/corral.1.gz \
         /etc/corral/README /usr/share/doc/corral \
         /etc/systemd/system/sockets.target.wants/corral@demo.socket 2>/dev/null",
    );
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "left behind: {left:?}"
    );
    assert!(
        sb.sh("dpkg -s corral").status.code() != Some(0),
        "the package is gone"
    );
    // With the admin's file gone too, a purge leaves no /etc/corral at all.
    sb.ok("rm /etc/corral/demo.toml /etc/corral/other.toml /etc/corral/broken.toml && dpkg -i /var/cache/corral-test/corral.deb && dpkg --purge corral");
    assert!(
        !sb.sh("test -e /etc/corral").status.success(),
        "/etc/corral removed on purge"
    );
}
