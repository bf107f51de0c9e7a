//! How long the systemd generator takes for many apps (it runs at every boot and
//! `daemon-reload`, so it must take milliseconds): `cargo bench --bench generator`.

use std::time::{Duration, Instant};

fn main() {
    let apps: usize = std::env::var("APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base = std::env::temp_dir().join(format!("corral-bench-gen-{}", std::process::id()));
    let (etc, out) = (base.join("etc"), base.join("out"));
    std::fs::create_dir_all(&etc).unwrap();
    for i in 0..apps {
        let config = format!(
            "command = [\"/usr/bin/node\", \"server.js\"]\nworkers = \"auto\"\n\
             environment = {{ NODE_ENV = \"production\" }}\n\
             [[listen]]\nname = \"http\"\naddress = \"127.0.0.1:{}\"\n\
             [[listen]]\nname = \"admin\"\naddress = \"/run/app{i}/admin.sock\"\nmode = \"0660\"\n\
             [stop]\ntimeout = \"20s\"\n[service]\nuser = \"app{i}\"\n",
            10000 + i
        );
        std::fs::write(etc.join(format!("app{i}.toml")), config).unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..20 {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        let report = corral::generator::generate(&etc, &out);
        runs.push(t.elapsed());
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.written.len(), apps * 3);
    }
    runs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "generator: {apps} apps ({} files): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        apps * 3,
        ms(runs[runs.len() / 2]),
        ms(runs[0]),
        ms(runs[runs.len() - 1]),
        runs.len()
    );
    let _ = std::fs::remove_dir_all(base);
}
