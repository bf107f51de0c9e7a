//! CPU counting, for `workers = "auto"`.

use std::fs;
use std::path::{Component, Path};

// Not std::thread::available_parallelism(): it rounds a fractional cpu.max quota down, not up.
/// Number of CPUs this process may use: the smaller of its CPU affinity mask
/// and the cgroup v2 CPU quota (rounded up), at least 1.
pub fn available_cpus() -> u32 {
    let affinity = affinity_cpus().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    });
    let limit = cgroup_cpu_limit().unwrap_or(u32::MAX);
    affinity.min(limit).max(1)
}

fn affinity_cpus() -> Option<u32> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count();
    (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

fn cgroup_cpu_limit() -> Option<u32> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    cgroup_limit_under(Path::new("/sys/fs/cgroup"), path)
}

/// The smallest `cpu.max` limit of the cgroup at `path` (relative to the
/// cgroup2 mount `root`) and its ancestors up to the root.
fn cgroup_limit_under(root: &Path, path: &str) -> Option<u32> {
    let mut dir = root.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => dir.push(part),
            Component::RootDir | Component::CurDir => {}
            // Outside our cgroup namespace: only the visible root is known.
            Component::ParentDir | Component::Prefix(_) => {
                dir = root.to_path_buf();
                break;
            }
        }
    }
    let mut best: Option<u32> = None;
    loop {
        if let Some(limit) = fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|s| parse_cpu_max(&s))
        {
            best = Some(best.map_or(limit, |b| b.min(limit)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    best
}

/// `"QUOTA PERIOD"` -> ceil(QUOTA / PERIOD); `"max ..."` (no limit) -> None.
fn parse_cpu_max(s: &str) -> Option<u32> {
    let mut fields = s.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if period == 0 {
        return None;
    }
    Some(
        u32::try_from(quota.div_ceil(period))
            .unwrap_or(u32::MAX)
            .max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerCount;

    #[test]
    fn auto_workers_resolve() {
        let n = WorkerCount::Auto.resolve();
        let std_n = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(n >= 1);
        // std rounds a fractional cgroup quota down; corral rounds it up.
        assert!(n <= std_n + 1, "{n} CPUs, std says {std_n}");
        assert_eq!(available_cpus(), n);
        assert_eq!(WorkerCount::Count(7).resolve(), 7);
    }

    #[test]
    fn cgroup_cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(1));
        assert_eq!(parse_cpu_max("100000 0\n"), None);
        assert_eq!(parse_cpu_max("garbage"), None);

        let root = std::env::temp_dir().join(format!("corral-cgroup-test-{}", std::process::id()));
        let leaf = root.join("system.slice/app.service");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(root.join("system.slice/cpu.max"), "300000 100000\n").unwrap();
        fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "/system.slice/app.service"),
            Some(3)
        );
        fs::write(leaf.join("cpu.max"), "120000 100000\n").unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "/system.slice/app.service"),
            Some(2)
        );
        assert_eq!(cgroup_limit_under(&root, "/"), None);
        assert_eq!(cgroup_limit_under(&root, "/missing/group"), None);
        assert_eq!(cgroup_limit_under(&root, "/../.."), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
