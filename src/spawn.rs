//! fork + exec of a worker. The only `unsafe` code in corral but ebpf.rs's bpf(2) lives here:
//! besides fork and exec, the two signal-disposition calls signals.rs decides on
//! ([`ignore_signal`], [`signal_is_default`]).
//!
//! Everything the child needs is allocated before `fork()`: argv, envp (with `LISTEN_PID=` and
//! `WATCHDOG_PID=` buffers that the child fills with its own pid), the fd plan. Between fork and
//! exec the child makes only async-signal-safe calls (signal-safety(7)): rt_sigaction, sigprocmask,
//! setpgid, prctl, getpid, getppid, fcntl, dup2, close_range, chdir, execve, write, _exit.
//! A close-on-exec pipe carries an exec failure (which step, which errno) back to the parent: the
//! parent reads EOF when exec succeeded, or 8 bytes when it did not — no exit code 127 guessing.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What to run and what it gets.
pub struct Command<'a> {
    /// The program, already resolved (see [`resolve_program`]).
    pub program: &'a Path,
    pub argv: &'a [String],
    /// `NAME=value` entries, without `LISTEN_PID` / `WATCHDOG_PID` (see `listen_pid`).
    pub env: &'a [CString],
    /// Adds `LISTEN_PID=<the child's pid>` (sd_listen_fds(3) checks it).
    pub listen_pid: bool,
    /// Adds `WATCHDOG_PID=<the child's pid>` (sd_watchdog_enabled(3)).
    pub watchdog_pid: bool,
    /// Placed at fds 3, 4, ... in this order.
    pub fds: &'a [RawFd],
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub directory: Option<&'a Path>,
    /// `PR_SET_PDEATHSIG`: SIGKILL when the supervisor dies (workers). The keeper, whose job
    /// is to outlive it, runs without.
    pub die_with_parent: bool,
    /// `RLIMIT_NOFILE` (soft, hard) for the child: corral raises its own soft limit for its
    /// pipes and connections; the workers get back the one corral was started with.
    pub nofile: Option<(u64, u64)>,
}

/// Which step of the child's set-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Fds = 1,
    Directory = 2,
    Exec = 3,
}

#[derive(Debug)]
pub enum SpawnError {
    /// The program was not found on PATH, before any fork.
    NotFound { program: String },
    /// A step in the child failed with this errno.
    Child {
        step: Step,
        errno: nix::errno::Errno,
        program: PathBuf,
        directory: Option<PathBuf>,
    },
    /// fork, pipe or an argument with a NUL byte.
    Setup(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NotFound { program } => {
                write!(
                    f,
                    "cannot run {program}: not found on PATH (No such file or directory)"
                )
            }
            SpawnError::Child {
                step,
                errno,
                program,
                directory,
            } => match step {
                Step::Exec => write!(f, "cannot run {}: {}", program.display(), errno.desc()),
                Step::Directory => write!(
                    f,
                    "cannot enter directory {}: {}",
                    directory.as_deref().unwrap_or(Path::new("?")).display(),
                    errno.desc()
                ),
                Step::Fds => write!(f, "cannot set up file descriptors: {}", errno.desc()),
            },
            SpawnError::Setup(e) => write!(f, "cannot start a worker: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

impl SpawnError {
    /// Whether the program cannot be run as configured, so that trying again will not change
    /// it: not found on PATH, or exec failed with ENOENT (no such file, or its interpreter is
    /// missing), EACCES (not executable, a directory on the way not searchable, a `noexec`
    /// mount), ENOEXEC (not a format the kernel runs), ENOTDIR, EISDIR, ELOOP, ENAMETOOLONG,
    /// ELIBBAD (a broken ELF interpreter), EPERM, E2BIG or EINVAL (execve(2)); or the worker's
    /// directory cannot be entered for one of the path errors (chdir(2)). Anything else may
    /// pass: EAGAIN (RLIMIT_NPROC), ENOMEM, EMFILE, ENFILE, ETXTBSY (the program is being
    /// written, as during an upgrade), EIO, and every failure of fork, pipe or descriptor
    /// set-up.
    pub fn cannot_execute(&self) -> bool {
        use nix::errno::Errno;
        match self {
            SpawnError::NotFound { .. } => true,
            SpawnError::Child {
                step: Step::Exec,
                errno,
                ..
            } => matches!(
                errno,
                Errno::ENOENT
                    | Errno::EACCES
                    | Errno::ENOEXEC
                    | Errno::ENOTDIR
                    | Errno::EISDIR
                    | Errno::ELOOP
                    | Errno::ENAMETOOLONG
                    | Errno::ELIBBAD
                    | Errno::EPERM
                    | Errno::E2BIG
                    | Errno::EINVAL
            ),
            SpawnError::Child {
                step: Step::Directory,
                errno,
                ..
            } => matches!(
                errno,
                Errno::ENOENT | Errno::EACCES | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG
            ),
            SpawnError::Child {
                step: Step::Fds, ..
            }
            | SpawnError::Setup(_) => false,
        }
    }
}

/// Finds `program` the way execvp(3) would, but before fork: a name with a `/` is used as it is
/// (relative to the worker's directory), anything else is looked up in `path`.
pub fn resolve_program(
    program: &str,
    path: Option<&OsStr>,
    directory: Option<&Path>,
) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path) {
        let dir = match (dir.is_relative(), directory) {
            (true, Some(base)) => base.join(dir),
            _ => dir,
        };
        let candidate = dir.join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(SpawnError::NotFound {
        program: program.to_string(),
    })
}

fn cstring(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| {
        SpawnError::Setup(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or variable contains a NUL byte",
        ))
    })
}

/// Room for `NAME=` plus the decimal digits of any pid and a NUL.
fn pid_buffer(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 22);
    v.extend_from_slice(name.as_bytes());
    v.resize(name.len() + 21, 0);
    v
}

/// Writes `n` in decimal followed by NUL at `buf[at..]`; no allocation, async-signal-safe.
fn write_decimal(buf: &mut [u8], at: usize, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[at + i] = digits[len - 1 - i];
    }
    buf[at + len] = 0;
}

/// Forks and execs. Returns the pid once exec succeeded, or why it did not.
pub fn spawn(cmd: &Command<'_>) -> Result<i32, SpawnError> {
    // ---- allocate everything before fork ----
    let program = cstring(cmd.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = cmd
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    let mut listen_pid = pid_buffer("LISTEN_PID=");
    let mut watchdog_pid = pid_buffer("WATCHDOG_PID=");
    let mut envp: Vec<*const libc::c_char> = cmd.env.iter().map(|e| e.as_ptr()).collect();
    if cmd.listen_pid {
        envp.push(listen_pid.as_ptr().cast());
    }
    if cmd.watchdog_pid {
        envp.push(watchdog_pid.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let listen_pid_ptr = listen_pid.as_mut_ptr();
    let listen_pid_len = listen_pid.len();
    let watchdog_pid_ptr = watchdog_pid.as_mut_ptr();
    let watchdog_pid_len = watchdog_pid.len();

    let directory = match cmd.directory {
        Some(d) => Some(cstring(d.as_os_str().as_bytes())?),
        None => None,
    };

    // Targets: 0, 1, 2, then 3.. for the listeners.
    let mut sources: Vec<RawFd> = vec![cmd.stdin, cmd.stdout, cmd.stderr];
    sources.extend_from_slice(cmd.fds);
    let n_targets = sources.len() as RawFd;
    // Scratch space for the child's temporary copies, sized now so the child never allocates.
    let mut temps: Vec<RawFd> = vec![-1; sources.len()];
    let temps_ptr = temps.as_mut_ptr();

    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::Setup(e.into()))?;
    let err_write_raw = err_write.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let sigmax = libc::SIGRTMAX();

    // Signals stay blocked across fork, so that no handler of the supervisor's runs in the
    // child before the child has reset them all.
    // SAFETY: sigfillset/sigprocmask on local sets; the old mask is restored below.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old_mask);
    }
    // SAFETY: after fork the child runs only async-signal-safe functions on memory allocated
    // above (fork copies it), and leaves through execve or _exit, never returning into Rust code.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    }
    if pid < 0 {
        return Err(SpawnError::Setup(io::Error::last_os_error()));
    }
    if pid == 0 {
        // ---- child ----
        unsafe {
            child(ChildPlan {
                parent,
                sigmax,
                err_write: err_write_raw,
                sources: &sources,
                temps: temps_ptr,
                n_targets,
                die_with_parent: cmd.die_with_parent,
                nofile: cmd.nofile,
                listen_pid: (cmd.listen_pid, listen_pid_ptr, listen_pid_len),
                watchdog_pid: (cmd.watchdog_pid, watchdog_pid_ptr, watchdog_pid_len),
                directory: directory.as_ref().map(|d| d.as_ptr()),
                program: program.as_ptr(),
                argv: argv_ptrs.as_ptr(),
                envp: envp.as_ptr(),
            })
        }
    }

    // ---- parent ----
    drop(err_write);
    let mut report = [0u8; 8];
    let mut got = 0;
    let file = std::fs::File::from(err_read);
    while got < report.len() {
        match io::Read::read(&mut &file, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SpawnError::Setup(e)),
        }
    }
    // Keep the buffers alive until the child has exec'd or failed (it has by now: EOF or data).
    drop((
        argv,
        argv_ptrs,
        envp,
        listen_pid,
        watchdog_pid,
        temps,
        sources,
    ));
    if got == 0 {
        return Ok(pid);
    }
    // The child failed before exec and _exit'ed: reap it here so no zombie is left.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    let step = match u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) {
        1 => Step::Fds,
        2 => Step::Directory,
        _ => Step::Exec,
    };
    let errno =
        nix::errno::Errno::from_raw(i32::from_ne_bytes(report[4..].try_into().expect("4 bytes")));
    Err(SpawnError::Child {
        step,
        errno,
        program: cmd.program.to_path_buf(),
        directory: cmd.directory.map(Path::to_path_buf),
    })
}

struct ChildPlan<'a> {
    parent: libc::pid_t,
    sigmax: libc::c_int,
    err_write: RawFd,
    sources: &'a [RawFd],
    temps: *mut RawFd,
    n_targets: RawFd,
    die_with_parent: bool,
    nofile: Option<(u64, u64)>,
    listen_pid: (bool, *mut u8, usize),
    watchdog_pid: (bool, *mut u8, usize),
    directory: Option<*const libc::c_char>,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// Reports `(step, errno)` to the parent and exits. Async-signal-safe.
unsafe fn fail(err_write: RawFd, step: Step) -> ! {
    let errno = *libc::__errno_location();
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(err_write, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

unsafe fn child(plan: ChildPlan<'_>) -> ! {
    // Signal dispositions: handlers are reset by exec, but "ignored" survives it (signal(7)),
    // and the Rust runtime ignores SIGPIPE, corral many more (signals.rs). A worker must start
    // with every signal at its default, unblocked; through the system call, which also reaches
    // the two glibc keeps to itself.
    for sig in 1..=plan.sigmax {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            set_disposition(sig, libc::SIG_DFL);
        }
    }
    // Its own process group, so a kill of the group reaches the worker's children too, and a
    // Ctrl-C on a terminal reaches only the supervisor, which then stops workers gracefully.
    libc::setpgid(0, 0);

    // Signals were blocked across fork; the worker starts with none blocked.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

    // Die with the supervisor, even on SIGKILL. The parent may already have died between fork
    // and prctl; then the death signal was never armed, so check and leave (prctl(2)).
    if plan.die_with_parent {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    if libc::getppid() != plan.parent {
        libc::_exit(1);
    }
    // CAP_BPF is corral's alone (the generator's drop-in gives it for ebpf.rs): out of the
    // ambient set, exec gives a worker of a non-root user none of it (capabilities(7)); it
    // stays inheritable, which only a file's capabilities could use, and NoNewPrivileges=
    // ignores those. What else the unit makes ambient was meant for the workers, and stays.
    const CAP_BPF: libc::c_ulong = 39;
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
        CAP_BPF,
        0,
        0,
    );
    if let Some((soft, hard)) = plan.nofile {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
            fail(plan.err_write, Step::Fds);
        }
    }

    let me = libc::getpid() as u32;
    for (wanted, ptr, len) in [plan.listen_pid, plan.watchdog_pid] {
        if wanted {
            let buf = std::slice::from_raw_parts_mut(ptr, len);
            let at = buf.iter().position(|&b| b == b'=').map_or(0, |p| p + 1);
            write_decimal(buf, at, me);
        }
    }

    // The error pipe and every source are first copied above all targets, so that placing one
    // fd never overwrites another that is still to be placed.
    let err_fd = libc::fcntl(plan.err_write, libc::F_DUPFD_CLOEXEC, plan.n_targets);
    if err_fd < 0 {
        fail(plan.err_write, Step::Fds);
    }
    for (i, &src) in plan.sources.iter().enumerate() {
        let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.n_targets);
        if t < 0 {
            fail(err_fd, Step::Fds);
        }
        *plan.temps.add(i) = t;
    }
    for i in 0..plan.sources.len() {
        // dup2 clears FD_CLOEXEC on the new descriptor: exactly these survive exec.
        if libc::dup2(*plan.temps.add(i), i as RawFd) < 0 {
            fail(err_fd, Step::Fds);
        }
    }
    // Anything else the supervisor had open must not reach the worker: mark every fd above the
    // targets close-on-exec (Linux 5.11). Rust and tokio open all fds O_CLOEXEC anyway; this also
    // covers anything a library or an inherited environment left without it.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    libc::syscall(
        libc::SYS_close_range,
        plan.n_targets as libc::c_uint,
        libc::c_uint::MAX,
        CLOSE_RANGE_CLOEXEC,
    );

    if let Some(dir) = plan.directory {
        if libc::chdir(dir) < 0 {
            fail(err_fd, Step::Directory);
        }
    }
    libc::execve(plan.program, plan.argv, plan.envp);
    fail(err_fd, Step::Exec)
}

/// The kernel's `struct sigaction` for rt_sigaction(2) on the architectures where it is
/// handler, flags, restorer, mask (asm/signal.h); glibc's own `struct sigaction` is laid out
/// differently. SIG_DFL and SIG_IGN run no code, so flags, restorer and mask stay zero.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: libc::sighandler_t,
    mask: u64,
}

/// Sets `sig`'s disposition to SIG_DFL or SIG_IGN through the system call, not glibc's
/// sigaction(3), which refuses signals 32 and 33 with EINVAL: glibc keeps them below
/// `SIGRTMIN()` for its threads (nptl(7)), yet the kernel delivers them, by default fatally.
/// Returns the raw result (0, or -1 with errno set). Async-signal-safe: one system call.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) -> libc::c_long {
    let act = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let sigset_size = std::mem::size_of::<u64>();
    libc::syscall(
        libc::SYS_rt_sigaction,
        sig,
        &act as *const KernelSigaction,
        std::ptr::null_mut::<KernelSigaction>(),
        sigset_size,
    )
}

/// Elsewhere, glibc's sigaction(3): signals 32 and 33 stay as they are.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) -> libc::c_long {
    let mut act: libc::sigaction = std::mem::zeroed();
    act.sa_sigaction = handler;
    libc::sigaction(sig, &act, std::ptr::null_mut()) as libc::c_long
}

/// Ignores `sig` from now on (SIG_IGN, sigaction(2)): the kernel discards it when it is sent.
/// Whatever handler `sig` had (the Rust runtime's for SIGSEGV and SIGBUS) is replaced.
pub fn ignore_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN installs no code in the process, so no handler can break an invariant;
    // the structure passed is a local one, read by the kernel during the call only.
    match unsafe { set_disposition(sig, libc::SIG_IGN) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether `sig` is at its default disposition (no handler, not ignored).
pub fn signal_is_default(sig: libc::c_int) -> io::Result<bool> {
    // SAFETY: a query: `act` is null, so nothing is changed; `old` is a local the kernel (or
    // glibc) fills during the call.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let handler = unsafe {
        let mut old: KernelSigaction = std::mem::zeroed();
        let r = libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KernelSigaction>(),
            &mut old as *mut KernelSigaction,
            std::mem::size_of::<u64>(),
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        old.handler
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let handler = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        old.sa_sigaction
    };
    Ok(handler == libc::SIG_DFL)
}

/// Takes ownership of a descriptor this process inherited (systemd's `LISTEN_FDS`), after
/// checking it is open. The caller guarantees nothing else in the process owns it.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: only used for the duration of this F_GETFD call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the fd is open (checked above) and was handed to this process by its service
    // manager for it to own; nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the calling thread (the event loop's, which takes every signal: signals.rs) an
/// alternate signal stack deep enough for each handled signal to interrupt the handler of
/// another (sigaltstack(2)). Once a handler runs on the alternate stack, every signal that
/// interrupts it is delivered there too, whatever its own flags: a burst of different signals
/// nests up to one frame per signal, each with the CPU's whole register state (several KiB
/// with AVX-512, about 11 KiB with AMX). The Rust runtime's alternate stack holds two or three:
/// past that the kernel cannot write the next frame and ends the process with SIGSEGV (a core
/// of it showed tokio's handler interrupting glibc's for its reserved signal 33, with 116
/// signals sent in a row). 2 MiB holds 64 of the largest, and is committed only as far as it
/// is used.
pub fn deep_signal_stack() -> io::Result<()> {
    const SIZE: usize = 2 << 20;
    let stack: &'static mut [u8] = Box::leak(vec![0u8; SIZE].into_boxed_slice());
    let ss = libc::stack_t {
        ss_sp: stack.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: SIZE,
    };
    // SAFETY: `ss` points to memory leaked for the life of the process, of the size given;
    // the old stack is not asked for.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocks signals 32 and 33 in the calling thread too, which glibc keeps for itself and its
/// `sigprocmask` leaves out of any mask (nptl(7)): through an exec, until the next image has a
/// handler for them, they would end it (their default action), and `kill -33` is enough to send
/// one. glibc unblocks them again in the next image once it has its handlers (at its first
/// thread), and in this one at its next `sigprocmask`, which leaves them out.
pub fn block_reserved_signals() -> io::Result<()> {
    let set: u64 = (1 << (32 - 1)) | (1 << (33 - 1));
    // SAFETY: rt_sigprocmask(2) reads a kernel sigset (8 bytes on Linux) from a live local, and
    // is given no old set to write.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::from_ref(&set),
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands the memory malloc holds unused back to the kernel, in every thread's arena.
///
/// Loading a config builds a whole TOML document, tens of megabytes for a 1 MiB file, on the
/// thread that loads it; glibc keeps what that thread frees in the thread's own arena for its
/// next allocations instead of giving it back (mallopt(3), M_ARENA_MAX; only the top of the main
/// arena is trimmed on its own). malloc_trim(3) releases the free pages of every arena (since
/// glibc 2.8), so one refused reload does not leave corral tens of megabytes larger for good.
/// Here, rather than beside the loading, because it is a foreign call (the crate's `unsafe`
/// lives in this file). Other C libraries give freed memory back by themselves: nothing to do.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and is safe to call from any thread at any time;
    // it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_pid_fits_and_terminates() {
        let mut b = pid_buffer("LISTEN_PID=");
        write_decimal(&mut b, 11, 4_194_304);
        assert_eq!(
            CString::from_vec_with_nul(b[..b.iter().position(|&c| c == 0).unwrap() + 1].to_vec())
                .unwrap()
                .to_str()
                .unwrap(),
            "LISTEN_PID=4194304"
        );
        write_decimal(&mut b, 11, 0);
        assert_eq!(&b[..13], b"LISTEN_PID=0\0");
    }

    #[test]
    fn resolves_like_execvp() {
        let p =
            resolve_program("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), None).unwrap();
        assert!(p.ends_with("sh") && p.is_absolute());
        assert!(matches!(
            resolve_program("no-such-program-xyz", None, None),
            Err(SpawnError::NotFound { .. })
        ));
        assert_eq!(
            resolve_program("./srv", None, None).unwrap(),
            PathBuf::from("./srv")
        );
    }

    /// `program` with no argument, environment or listener, its stdio on `devnull`.
    fn to_devnull<'a>(program: &'a Path, devnull: &std::fs::File) -> Command<'a> {
        static ARGV: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["program".into()]);
        let fd = devnull.as_raw_fd();
        Command {
            program,
            argv: &ARGV,
            env: &[],
            listen_pid: false,
            die_with_parent: true,
            nofile: None,
            watchdog_pid: false,
            fds: &[],
            stdin: fd,
            stdout: fd,
            stderr: fd,
            directory: None,
        }
    }

    #[test]
    fn exec_failure_is_reported_with_errno_text() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let cmd = Command {
            listen_pid: true,
            ..to_devnull(Path::new("/nonexistent/program"), &devnull)
        };
        let err = spawn(&cmd).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot run /nonexistent/program: No such file or directory"
        );
        let cmd = Command {
            directory: Some(Path::new("/nonexistent-dir")),
            program: Path::new("/bin/true"),
            ..cmd
        };
        let err = spawn(&cmd).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot enter directory /nonexistent-dir: No such file or directory"
        );
    }

    #[test]
    fn only_errors_that_trying_again_will_not_change_mean_the_program_cannot_execute() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        // A file that is not executable: EACCES at exec.
        let not_executable =
            std::env::temp_dir().join(format!("corral-noexec-{}", std::process::id()));
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let cmd = to_devnull(&not_executable, &devnull);
        let err = spawn(&cmd).unwrap_err();
        let _ = std::fs::remove_file(&not_executable);
        assert!(err.to_string().ends_with("Permission denied"), "{err}");
        assert!(err.cannot_execute());
        let not_found = SpawnError::NotFound {
            program: "nde".into(),
        };
        assert!(not_found.cannot_execute());
        for (step, errno, expected) in [
            (Step::Exec, nix::errno::Errno::ENOEXEC, true),
            (Step::Exec, nix::errno::Errno::EAGAIN, false),
            (Step::Exec, nix::errno::Errno::ENOMEM, false),
            (Step::Exec, nix::errno::Errno::ETXTBSY, false),
            (Step::Directory, nix::errno::Errno::ENOENT, true),
            (Step::Fds, nix::errno::Errno::EMFILE, false),
        ] {
            let e = SpawnError::Child {
                step,
                errno,
                program: "/srv/app".into(),
                directory: None,
            };
            assert_eq!(e.cannot_execute(), expected, "{step:?} {errno}");
        }
        let fork = SpawnError::Setup(io::Error::from_raw_os_error(libc::EAGAIN));
        assert!(!fork.cannot_execute());
    }
}
