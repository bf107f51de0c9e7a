//! What `/proc` says about processes (proc(5)): a process's parent, group and usage, and the
//! process trees of workers.
//!
//! A worker is its whole process tree: a shell wrapper's `exec`-less child, gunicorn's or
//! hypercorn's worker processes, `npm start`'s node. A tree is walked down through
//! `/proc/PID/task/TID/children` (proc(5)), which costs a read per process of the tree; where
//! the kernel lacks that file (it needs CONFIG_PROC_CHILDREN), from one pass over every
//! `/proc/*/stat`. Every read here is of a small pseudo-file, and every walk is bounded.
//!
//! The text parsers are pure functions, tested on captured text.

use std::collections::{HashMap, HashSet};

/// The fields of `/proc/PID/stat` corral uses (proc(5), fields 1-24).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    /// The process group (field 5).
    pub pgrp: i32,
    /// User and system CPU time in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks (field 22): with the pid, names one process.
    pub start_ticks: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
    /// `Z`: a zombie holds no memory and runs no code.
    pub zombie: bool,
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields after it are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    // rest[0] is field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
    Some(Stat {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
        rss_pages: num(21)?,
        zombie: *f.first()? == "Z",
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process visible in `/proc` now.
pub fn all_stats() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// How deep a chain of parents is followed before giving up (a shell, `npm`, `sh -c`, the
/// program: real chains are a handful deep).
pub const MAX_DEPTH: usize = 64;

/// Follows `pid`'s parents (itself first) until `is_root` says yes to one, and returns that
/// one; `None` when the chain reaches pid 1, `stop_at` (the supervisor itself), a process that
/// is gone, or [`MAX_DEPTH`].
pub fn ancestor_where(
    pid: i32,
    stop_at: i32,
    mut parent_of: impl FnMut(i32) -> Option<i32>,
    mut is_root: impl FnMut(i32) -> bool,
) -> Option<i32> {
    let mut p = pid;
    for _ in 0..MAX_DEPTH {
        if is_root(p) {
            return Some(p);
        }
        if p <= 1 || p == stop_at {
            return None;
        }
        p = parent_of(p)?;
    }
    None
}

/// The process trees of `roots`: each root with every process below it, and every process in
/// its process group (a child whose parent exited is reparented, but keeps its group). A
/// process belongs to the first root that claims it. Roots that are gone get an empty tree.
pub fn trees(roots: &[i32], stats: &[Stat]) -> HashMap<i32, Vec<Stat>> {
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    let mut by_group: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, s) in stats.iter().enumerate() {
        children.entry(s.ppid).or_default().push(i);
        by_group.entry(s.pgrp).or_default().push(i);
    }
    let mut claimed: HashSet<i32> = HashSet::new();
    let mut out = HashMap::new();
    for &root in roots {
        let mut tree = Vec::new();
        let mut queue: Vec<usize> = stats
            .iter()
            .position(|s| s.pid == root)
            .into_iter()
            .collect();
        // Group members whose parent is outside the tree (orphans) start a walk of their own.
        queue.extend(by_group.get(&root).into_iter().flatten().copied());
        while let Some(i) = queue.pop() {
            let s = &stats[i];
            if !claimed.insert(s.pid) {
                continue;
            }
            tree.push(s.clone());
            queue.extend(children.get(&s.pid).into_iter().flatten().copied());
        }
        out.insert(root, tree);
    }
    out
}

/// CPU seconds and resident bytes of a tree, as `corral status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub processes: u32,
}

pub fn usage(tree: &[Stat]) -> Usage {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let live = tree.iter().filter(|s| !s.zombie);
    Usage {
        cpu_seconds: tree.iter().map(|s| s.cpu_ticks).sum::<u64>() as f64 / hz,
        rss_bytes: live.clone().map(|s| s.rss_pages).sum::<u64>() * page,
        processes: live.count() as u32,
    }
}

/// The usage of each worker's tree now.
pub fn usage_of(workers: &[i32]) -> HashMap<i32, Usage> {
    trees_now(workers)
        .into_iter()
        .map(|(root, tree)| (root, usage(&tree)))
        .collect()
}

/// At most this many processes are read for one tree.
pub const MAX_TREE: usize = 4096;

/// The children of `pid`, from each of its threads' `children` file; `None` where the kernel
/// has no such file.
pub fn children(pid: i32) -> Option<Vec<i32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        any = true;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    any.then_some(out)
}

/// A signal mask line of `/proc/PID/status` (`SigIgn:`, `SigCgt:`, `SigBlk:`; proc(5)): bit
/// `n - 1` is signal `n`.
pub fn parse_sig_mask(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(v.trim(), 16).ok()
    })
}

/// The signals this process ignores now (`SigIgn` in `/proc/self/status`).
pub fn own_ignored_signals() -> Option<u64> {
    use std::io::Read;
    // A pseudo-file of a few kilobytes; read at most 64 KiB of it.
    let mut text = String::new();
    std::fs::File::open("/proc/self/status")
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut text)
        .ok()?;
    parse_sig_mask(&text, "SigIgn")
}

/// Whether this kernel has the `children` files (CONFIG_PROC_CHILDREN).
fn children_files() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let me = std::process::id();
        std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
    })
}

/// The process trees of `roots` (workers, children of this process) now, as [`trees`] makes
/// them, walked down from the roots rather than from every process there is.
pub fn trees_now(roots: &[i32]) -> HashMap<i32, Vec<Stat>> {
    if !children_files() {
        return trees(roots, &all_stats());
    }
    // Orphans of a worker's group reparented to this process (a child subreaper).
    let mine: Vec<Stat> = children(std::process::id() as i32)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !roots.contains(p))
        .filter_map(read_stat)
        .collect();
    let mut claimed: HashSet<i32> = HashSet::new();
    let mut out = HashMap::new();
    for &root in roots {
        let mut tree = Vec::new();
        let mut queue = vec![root];
        queue.extend(mine.iter().filter(|s| s.pgrp == root).map(|s| s.pid));
        while let Some(p) = queue.pop() {
            if tree.len() >= MAX_TREE || !claimed.insert(p) {
                continue;
            }
            let Some(s) = read_stat(p) else { continue };
            tree.push(s);
            queue.extend(children(p).unwrap_or_default());
        }
        out.insert(root, tree);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON: &str = "11899 (python3) S 11897 11897 1079 0 -1 4194304 2953 6532 18 1 5 1 5 1 \
        20 0 1 0 30261 17309696 3489 18446744073709551615 94015378587648 94015378587989 \
        140721295215968 0 0 0 0 16781318 0 1 0 0 17 0 0 0 0 0 0 94015378599344";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let s = parse_stat(PYTHON).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 11899,
                ppid: 11897,
                pgrp: 11897,
                cpu_ticks: 6,
                start_ticks: 30261,
                rss_pages: 3489,
                zombie: false,
            }
        );
        // A name with spaces and a ')' of its own.
        let odd = PYTHON.replace("(python3)", "(a) b (c)");
        assert_eq!(parse_stat(&odd).unwrap().ppid, 11897);
        let zombie = PYTHON.replace(") S ", ") Z ");
        assert!(parse_stat(&zombie).unwrap().zombie);
        assert_eq!(parse_stat("12 (x) S 1"), None, "truncated");
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn signal_masks_are_read_by_their_field_name() {
        let status = "Name:\tcorral\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
                      SigIgn:\t0000000180001001\nSigCgt:\t0000000000000440\n";
        let ign = parse_sig_mask(status, "SigIgn").unwrap();
        // SIGHUP (1), SIGPIPE (13), 32 and 33.
        let bits: Vec<u32> = (0..64)
            .filter(|b| ign >> b & 1 == 1)
            .map(|b| b + 1)
            .collect();
        assert_eq!(bits, [1, 13, 32, 33]);
        assert_eq!(parse_sig_mask(status, "SigCgt"), Some(0x440));
        assert_eq!(parse_sig_mask(status, "Sig"), None, "a whole field name");
        assert_eq!(parse_sig_mask("", "SigIgn"), None);
    }

    #[test]
    fn the_own_stat_file_parses() {
        let me = read_stat(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(me.rss_pages > 0);
    }

    fn st(pid: i32, ppid: i32, pgrp: i32) -> Stat {
        Stat {
            pid,
            ppid,
            pgrp,
            cpu_ticks: 10,
            start_ticks: 0,
            rss_pages: 1,
            zombie: false,
        }
    }

    #[test]
    fn a_descendant_is_found_through_its_parents_and_an_outsider_is_not() {
        // 100 corral; 200 a worker; 201 its shell child; 202 systemd-notify under the shell;
        // 300 someone else's process under pid 1.
        let parents: HashMap<i32, i32> =
            [(200, 100), (201, 200), (202, 201), (300, 1), (100, 1)].into();
        let parent = |p: i32| parents.get(&p).copied();
        let worker = |p: i32| p == 200;
        assert_eq!(ancestor_where(202, 100, parent, worker), Some(200));
        assert_eq!(ancestor_where(200, 100, parent, worker), Some(200));
        assert_eq!(ancestor_where(300, 100, parent, worker), None);
        // corral itself, and a process whose parent is gone.
        assert_eq!(ancestor_where(100, 100, parent, worker), None);
        assert_eq!(ancestor_where(999, 100, parent, worker), None);
        // A cycle (pids reused mid-walk) ends at the depth bound.
        let cyc = |p: i32| Some(if p == 5 { 6 } else { 5 });
        assert_eq!(ancestor_where(5, 100, cyc, worker), None);
    }

    #[test]
    fn a_tree_holds_descendants_and_orphans_of_the_group() {
        let stats = vec![
            st(100, 1, 100), // corral
            st(200, 100, 200),
            st(201, 200, 200),
            st(202, 201, 200),
            // An orphan of 200's group, reparented to corral (a subreaper).
            st(203, 100, 200),
            st(204, 203, 204), // its child, in a group of its own
            st(300, 100, 300), // another worker
            st(301, 300, 300),
            st(400, 1, 400), // unrelated
        ];
        let t = trees(&[200, 300, 999], &stats);
        let mut a: Vec<i32> = t[&200].iter().map(|s| s.pid).collect();
        a.sort();
        assert_eq!(a, [200, 201, 202, 203, 204]);
        let mut b: Vec<i32> = t[&300].iter().map(|s| s.pid).collect();
        b.sort();
        assert_eq!(b, [300, 301]);
        assert!(t[&999].is_empty());
        let u = usage(&t[&200]);
        assert_eq!(u.processes, 5);
        assert!(u.rss_bytes >= 5 * 4096);
    }

    #[test]
    fn a_live_tree_is_walked_down_from_its_root() {
        // This test process, a child of it and that child's child.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let sh = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let tree = loop {
            let t = trees_now(&[sh]);
            if t[&sh].len() == 2 {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "{t:?}");
            std::thread::yield_now();
        };
        assert_eq!(tree[&sh][0].pid, sh);
        assert_eq!(tree[&sh][1].ppid, sh, "the sleep under the shell");
        let gone = trees_now(&[i32::MAX - 1]);
        assert!(gone[&(i32::MAX - 1)].is_empty());
        assert!(trees_now(&[me])[&me].len() >= 3);
        child.kill().unwrap();
        let _ = child.wait();
    }
}
