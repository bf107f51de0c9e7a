//! Listening sockets: taken from systemd (sd_listen_fds(3)) or bound here.
//!
//! The supervisor never accepts on them; it only keeps them open for its whole life, so that
//! workers can come and go while the socket and its accept queue stay. They are left in blocking
//! mode, as systemd passes them (O_NONBLOCK is shared by every process holding the socket).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::balance::Group;
use crate::config::{Address, Balance, Config, Listen};
use crate::error::Error;
use crate::supervisor::WorkerId;

/// One open listening socket. A unix socket file bound here is removed when the last
/// generation using it lets go (and it is still ours).
#[derive(Debug)]
pub struct ListenSocket {
    fd: OwnedFd,
    unix_path: Option<(PathBuf, u64, u64)>,
}

impl ListenSocket {
    /// A socket with no file of its own to clean up.
    pub fn new(fd: OwnedFd) -> ListenSocket {
        ListenSocket {
            fd,
            unix_path: None,
        }
    }
}

impl AsRawFd for ListenSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::os::fd::AsFd for ListenSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }
}

impl Drop for ListenSocket {
    fn drop(&mut self) {
        // Not while taking over from an earlier image: that one may be put back, and uses it.
        if crate::carry::adopting() {
            return;
        }
        if let Some((path, dev, ino)) = &self.unix_path {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.dev() == *dev && m.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// The listeners one generation hands its workers, in `[[listen]]` order.
#[derive(Clone, Default)]
pub struct Set {
    pub names: Vec<String>,
    /// One socket per listener: the one every worker shares, or, for a balanced listener, one
    /// of its group's (for what is the same for all of them: the address).
    pub sockets: Vec<Rc<ListenSocket>>,
    /// The balanced listeners' groups (balance.rs), where a worker gets a socket of its own.
    pub groups: Vec<Option<Rc<Group>>>,
    /// Each listener's backlog, for putting it back in listen().
    pub backlogs: Vec<i32>,
    /// Each listener's balancing as it is, and why it is not what the config asks, if not
    /// (for `corral status`).
    pub balance: Vec<(Balance, Option<String>)>,
}

impl Set {
    /// The sockets a new worker gets, in `[[listen]]` order: the shared ones, and one of its
    /// own from each balanced listener's group.
    pub fn sockets_for(&self, worker: WorkerId, slot: u32) -> io::Result<Vec<Rc<ListenSocket>>> {
        let mut out = Vec::new();
        for (shared, group) in self.sockets.iter().zip(&self.groups) {
            match group {
                Some(g) => match g.take(worker, slot) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        // What was taken goes back to the slot, with what waits on it.
                        self.release(worker, Some(slot));
                        return Err(e);
                    }
                },
                None => out.push(shared.clone()),
            }
        }
        Ok(out)
    }

    /// Puts back in listen() every listener a worker shut down (shutdown(2) on a shared
    /// listening socket stops it for every worker); returns the names of those it did.
    pub fn relisten(&self) -> Vec<String> {
        let mut fixed = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let done = match &self.groups[i] {
                Some(g) => g.relisten(),
                None => {
                    let s = &self.sockets[i];
                    !crate::balance::listening(s)
                        && socket2::SockRef::from(&**s)
                            .listen(self.backlogs[i])
                            .is_ok()
                }
            };
            if done {
                fixed.push(name.clone());
            }
        }
        fixed
    }

    /// Adds a listener: its shared socket (or, balanced, one of its group's), its group, its
    /// backlog, and its balancing as it is with why that is not what the config asks.
    fn push(
        &mut self,
        name: &str,
        socket: Rc<ListenSocket>,
        group: Option<Rc<Group>>,
        backlog: i32,
        balance: (Balance, Option<String>),
    ) {
        self.names.push(name.to_string());
        self.sockets.push(socket);
        self.groups.push(group);
        self.backlogs.push(backlog);
        self.balance.push(balance);
    }

    /// Each listener as `corral status` shows it.
    pub fn status(&self) -> Vec<crate::control::ListenerStatus> {
        (0..self.names.len())
            .map(|i| {
                let local = socket2::SockRef::from(&*self.sockets[i]).local_addr().ok();
                let address = local
                    .as_ref()
                    .and_then(|a| a.as_socket().map(|a| a.to_string()))
                    .or_else(|| {
                        let p = local.as_ref()?.as_pathname()?;
                        Some(p.display().to_string())
                    })
                    .unwrap_or_else(|| "?".into());
                crate::control::ListenerStatus {
                    name: self.names[i].clone(),
                    address,
                    balance: self.balance[i].0.as_str().into(),
                    sockets: self.groups[i].as_ref().map(|g| g.sockets()),
                    note: self.note(i),
                }
            })
            .collect()
    }

    /// Why listeners are not balanced as the config asks, one line each.
    pub fn notes(&self) -> Vec<String> {
        (0..self.names.len())
            .filter_map(|i| Some(format!("listener `{}`: {}", self.names[i], self.note(i)?)))
            .collect()
    }

    /// Why listener `i` is not balanced as the config asks, or not as well as it could be.
    fn note(&self, i: usize) -> Option<String> {
        self.balance[i]
            .1
            .clone()
            .or_else(|| self.groups[i].as_ref()?.at_random())
    }

    /// Whether any listener is balanced.
    pub fn balanced(&self) -> bool {
        self.groups.iter().any(Option::is_some)
    }

    /// The worker is gone: its own sockets are kept for `keep_for`'s next worker, or go.
    pub fn release(&self, worker: WorkerId, keep_for: Option<u32>) {
        for g in self.groups.iter().flatten() {
            g.release(worker, keep_for);
        }
    }

    /// Every socket the worker has, in `[[listen]]` order: the shared ones and its own.
    pub fn sockets_of(&self, worker: WorkerId) -> Vec<Rc<ListenSocket>> {
        self.sockets
            .iter()
            .zip(&self.groups)
            .filter_map(|(shared, g)| match g {
                Some(g) => g.socket_of(worker),
                None => Some(shared.clone()),
            })
            .collect()
    }

    /// The worker's own sockets (of the balanced listeners).
    pub fn own_sockets(&self, worker: WorkerId) -> Vec<Rc<ListenSocket>> {
        self.groups
            .iter()
            .flatten()
            .filter_map(|g| g.socket_of(worker))
            .collect()
    }
    /// The `LISTEN_FDNAMES` value.
    pub fn fdnames(&self) -> String {
        self.names.join(":")
    }
    /// What the Node.js preload needs to know of each listener (`CORRAL_NODE_LISTEN`): its
    /// name, the fd a worker finds it at, and the address it is bound to, as the kernel says.
    pub fn describe(&self) -> serde_json::Value {
        let each = self.names.iter().zip(&self.sockets).enumerate();
        let list: Vec<serde_json::Value> = each
            .map(|(i, (name, s))| {
                let mut v = serde_json::json!({ "name": name, "fd": 3 + i });
                match socket2::SockRef::from(&s.fd).local_addr() {
                    Ok(a) if a.as_socket().is_some() => {
                        let a = a.as_socket().expect("checked");
                        v["port"] = a.port().into();
                        v["host"] = a.ip().to_string().into();
                        v["address"] = a.to_string().into();
                    }
                    Ok(a) => {
                        if let Some(p) = a.as_pathname() {
                            v["path"] = p.to_string_lossy().into();
                        }
                    }
                    Err(_) => {}
                }
                v
            })
            .collect();
        serde_json::Value::Array(list)
    }

    /// The port of the one TCP listener, when there is exactly one port among them (PM2's
    /// `PORT`, where it is unambiguous).
    pub fn only_port(&self) -> Option<u16> {
        let mut ports: Vec<u16> = self
            .sockets
            .iter()
            .filter_map(|s| socket2::SockRef::from(&s.fd).local_addr().ok())
            .filter_map(|a| a.as_socket().map(|a| a.port()))
            .collect();
        ports.dedup();
        match ports[..] {
            [p] => Some(p),
            _ => None,
        }
    }
}

/// The listeners an upgrade in place hands over: every open socket once (by its index here),
/// the groups of balanced listeners, the pool, and each live generation's set (carry.rs).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Saved {
    sockets: Vec<SavedSocket>,
    groups: Vec<crate::balance::Saved>,
    pool: SavedPool,
    sets: Vec<(u32, SavedSet)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSocket {
    fd: i32,
    unix_path: Option<(PathBuf, u64, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum SavedPool {
    Systemd {
        inherited: Vec<(String, usize)>,
        groups: Vec<(String, usize)>,
    },
    Standalone {
        bound: Vec<(Address, usize)>,
        groups: Vec<(std::net::SocketAddr, usize)>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSet {
    names: Vec<String>,
    sockets: Vec<usize>,
    groups: Vec<Option<usize>>,
    backlogs: Vec<i32>,
    balance: Vec<(Balance, Option<String>)>,
}

impl Saved {
    /// Nothing: what is left where a saved set was taken.
    pub fn empty() -> Saved {
        Saved {
            sockets: Vec::new(),
            groups: Vec::new(),
            pool: SavedPool::Standalone {
                bound: Vec::new(),
                groups: Vec::new(),
            },
            sets: Vec::new(),
        }
    }
}

/// Numbers each socket once while saving, carrying its descriptor (carry.rs).
pub struct Sockets<'a> {
    carry: &'a mut crate::carry::Carry,
    list: Vec<Rc<ListenSocket>>,
    saved: Vec<SavedSocket>,
}

impl Sockets<'_> {
    /// The socket's number in the handover.
    pub fn index(&mut self, s: &Rc<ListenSocket>) -> io::Result<usize> {
        if let Some(i) = self.list.iter().position(|o| Rc::ptr_eq(o, s)) {
            return Ok(i);
        }
        let fd = self.carry.fd(&s.fd)?;
        self.list.push(s.clone());
        self.saved.push(SavedSocket {
            fd,
            unix_path: s.unix_path.clone(),
        });
        Ok(self.list.len() - 1)
    }

    /// Where other descriptors are carried (a group's eBPF dealer).
    pub fn carry(&mut self) -> &mut crate::carry::Carry {
        self.carry
    }
}

/// Numbers each socket and group once while saving.
struct Saver<'a> {
    sockets: Sockets<'a>,
    groups: Vec<Rc<Group>>,
    saved_groups: Vec<crate::balance::Saved>,
}

impl Saver<'_> {
    fn group(&mut self, g: &Rc<Group>) -> io::Result<usize> {
        if let Some(i) = self.groups.iter().position(|o| Rc::ptr_eq(o, g)) {
            return Ok(i);
        }
        let saved = g.save(&mut self.sockets)?;
        self.groups.push(g.clone());
        self.saved_groups.push(saved);
        Ok(self.groups.len() - 1)
    }

    fn set(&mut self, set: &Set) -> io::Result<SavedSet> {
        let mut sockets = Vec::new();
        for s in &set.sockets {
            sockets.push(self.sockets.index(s)?);
        }
        let mut groups = Vec::new();
        for g in &set.groups {
            groups.push(match g {
                Some(g) => Some(self.group(g)?),
                None => None,
            });
        }
        Ok(SavedSet {
            names: set.names.clone(),
            sockets,
            groups,
            backlogs: set.backlogs.clone(),
            balance: set.balance.clone(),
        })
    }
}

impl Pool {
    /// The pool and the sets of the live generations, for an upgrade in place.
    pub fn save(&self, sets: &[(u32, &Set)], carry: &mut crate::carry::Carry) -> io::Result<Saved> {
        let mut s = Saver {
            sockets: Sockets {
                carry,
                list: Vec::new(),
                saved: Vec::new(),
            },
            groups: Vec::new(),
            saved_groups: Vec::new(),
        };
        let mut saved_sets = Vec::new();
        for (gen, set) in sets {
            saved_sets.push((*gen, s.set(set)?));
        }
        let pool = match self {
            Pool::Systemd(inherited, groups) => {
                let mut i = Vec::new();
                for (name, sock) in inherited {
                    i.push((name.clone(), s.sockets.index(sock)?));
                }
                let mut g = Vec::new();
                for (name, group) in groups.borrow().iter() {
                    g.push((name.clone(), s.group(group)?));
                }
                SavedPool::Systemd {
                    inherited: i,
                    groups: g,
                }
            }
            Pool::Standalone(bound, groups) => {
                // Only what a live generation still uses: the rest is closed already.
                let mut b = Vec::new();
                for (address, weak) in bound.borrow().iter() {
                    if let Some(sock) = weak.upgrade() {
                        b.push((address.clone(), s.sockets.index(&sock)?));
                    }
                }
                let mut g = Vec::new();
                for (addr, weak) in groups.borrow().iter() {
                    if let Some(group) = weak.upgrade() {
                        g.push((*addr, s.group(&group)?));
                    }
                }
                SavedPool::Standalone {
                    bound: b,
                    groups: g,
                }
            }
        };
        Ok(Saved {
            sockets: s.sockets.saved,
            groups: s.saved_groups,
            pool,
            sets: saved_sets,
        })
    }

    /// What [`Pool::save`] saved, as it was: the pool and each generation's set.
    pub fn restore(
        saved: Saved,
        take: &mut crate::carry::Take,
    ) -> io::Result<(Pool, Vec<(u32, Set)>)> {
        let mut sockets = Vec::new();
        for s in saved.sockets {
            sockets.push(Rc::new(ListenSocket {
                fd: take.fd(s.fd)?,
                unix_path: s.unix_path,
            }));
        }
        let socket = |i: usize| {
            sockets
                .get(i)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("no socket {i} in the handover")))
        };
        let mut groups = Vec::new();
        for g in saved.groups {
            groups.push(Group::restore(g, &socket, take)?);
        }
        let group = |i: usize| {
            groups
                .get(i)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("no group {i} in the handover")))
        };
        let mut sets = Vec::new();
        for (gen, s) in saved.sets {
            let mut set = Set::default();
            for (i, name) in s.names.iter().enumerate() {
                let (Some(&sock), Some(g), Some(&backlog), Some(balance)) = (
                    s.sockets.get(i),
                    s.groups.get(i),
                    s.backlogs.get(i),
                    s.balance.get(i),
                ) else {
                    return Err(io::Error::other(
                        "a listener set of the handover is cut short",
                    ));
                };
                let g = match g {
                    Some(g) => Some(group(*g)?),
                    None => None,
                };
                set.push(name, socket(sock)?, g, backlog, balance.clone());
            }
            sets.push((gen, set));
        }
        let pool = match saved.pool {
            SavedPool::Systemd {
                inherited,
                groups: g,
            } => {
                let mut i = Vec::new();
                for (name, x) in inherited {
                    i.push((name, socket(x)?));
                }
                let mut gs = Vec::new();
                for (name, x) in g {
                    gs.push((name, group(x)?));
                }
                Pool::Systemd(i, RefCell::new(gs))
            }
            SavedPool::Standalone { bound, groups: g } => {
                let mut b = Vec::new();
                for (address, x) in bound {
                    b.push((address, Rc::downgrade(&socket(x)?)));
                }
                let mut gs = Vec::new();
                for (addr, x) in g {
                    gs.push((addr, Rc::downgrade(&group(x)?)));
                }
                Pool::Standalone(RefCell::new(b), RefCell::new(gs))
            }
        };
        Ok((pool, sets))
    }
}

/// Where listeners come from for the supervisor's whole life.
pub enum Pool {
    /// systemd passed these (socket activation); they are matched to the config by name.
    /// Several of one name (a balanced listener's socket unit) make a group, made once.
    Systemd(
        Vec<(String, Rc<ListenSocket>)>,
        RefCell<Vec<(String, Rc<Group>)>>,
    ),
    /// corral binds what the config says; sockets (and groups of balanced listeners) still
    /// used by some generation are reused.
    Standalone(
        RefCell<Vec<(Address, Weak<ListenSocket>)>>,
        RefCell<Vec<(std::net::SocketAddr, Weak<Group>)>>,
    ),
}

/// Reads `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES` (sd_listen_fds(3)) and takes the fds, which
/// are then made close-on-exec so they reach workers only where corral places them. The variables
/// are removed from the environment: they were meant for corral, not for what it runs.
/// `None` when this process was not socket-activated.
pub fn take_systemd_fds() -> Result<Option<Vec<(String, OwnedFd)>>, Error> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let Some(fds) = fds else { return Ok(None) };
    // sd_listen_fds(3): the variables are for the process whose pid LISTEN_PID names.
    if pid.as_deref().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds
        .parse()
        .map_err(|_| Error::Listen(format!("LISTEN_FDS={fds:?} is not a number")))?;
    let names: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for i in 0..n {
        let fd = 3 + i;
        let owned = crate::spawn::adopt_inherited_fd(fd)
            .map_err(|e| Error::io(format!("LISTEN_FDS: fd {fd} is not open"), e))?;
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| Error::io(format!("LISTEN_FDS: fd {fd}"), e.into()))?;
        // systemd names unnamed sockets "unknown" (sd_listen_fds_with_names(3)).
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        out.push((name, owned));
    }
    Ok(Some(out))
}

impl Pool {
    pub fn new(inherited: Option<Vec<(String, OwnedFd)>>) -> Pool {
        match inherited {
            Some(list) => Pool::Systemd(
                list.into_iter()
                    .map(|(n, fd)| {
                        (
                            n,
                            Rc::new(ListenSocket {
                                fd,
                                unix_path: None,
                            }),
                        )
                    })
                    .collect(),
                RefCell::new(Vec::new()),
            ),
            None => Pool::Standalone(RefCell::new(Vec::new()), RefCell::new(Vec::new())),
        }
    }

    /// The listener set for `config`, binding what is new. On error nothing is kept open
    /// that was not open before.
    pub fn set_for(&self, config: &Config) -> Result<Set, Error> {
        let mut set = Set::default();
        match self {
            Pool::Systemd(inherited, groups) => {
                if config.listen.is_empty() {
                    // No [[listen]]: hand on whatever the socket unit passed, as systemd would.
                    for (name, s) in inherited {
                        set.push(
                            name,
                            s.clone(),
                            None,
                            libc::SOMAXCONN,
                            (Balance::Shared, None),
                        );
                    }
                    return Ok(set);
                }
                let passed: Vec<&str> = inherited.iter().map(|(n, _)| n.as_str()).collect();
                let mut missing = Vec::new();
                for l in &config.listen {
                    let named: Vec<Rc<ListenSocket>> = inherited
                        .iter()
                        .filter(|(n, _)| *n == l.name)
                        .map(|(_, s)| s.clone())
                        .collect();
                    let Some(first) = named.first().cloned() else {
                        missing.push(l.name.as_str());
                        continue;
                    };
                    let tcp = socket2::SockRef::from(&*first)
                        .local_addr()
                        .is_ok_and(|a| a.as_socket().is_some());
                    if named.len() < 2 || !tcp {
                        let why = l.balance.per_worker().then(|| {
                            format!(
                                "balance = \"{}\" asked, but the socket unit passes one socket: \
                                 the workers share it (`systemctl daemon-reload` and a restart \
                                 of the socket unit give a socket per worker)",
                                l.balance.as_str()
                            )
                        });
                        set.push(&l.name, first, None, backlog(l), (Balance::Shared, why));
                        continue;
                    }
                    // A socket per worker: balanced, whatever the config says, or connections
                    // the kernel spreads over them would wait on sockets no worker takes.
                    let mode = match l.balance {
                        Balance::Shared => Balance::Even,
                        b => b,
                    };
                    let existing = groups
                        .borrow()
                        .iter()
                        .find(|(n, _)| *n == l.name)
                        .map(|(_, g)| g.clone());
                    let group = match existing {
                        Some(g) => {
                            g.set_mode(mode);
                            g
                        }
                        None => {
                            let g = Group::adopt(named.clone(), backlog(l), mode)
                                .map_err(|e| listen_error(config, l, e))?;
                            groups.borrow_mut().push((l.name.clone(), g.clone()));
                            g
                        }
                    };
                    let why = (l.balance == Balance::Shared).then(|| {
                        format!(
                            "balance = \"shared\" asked, but the socket unit passes {} sockets: \
                             balanced until `systemctl daemon-reload` and a restart of the \
                             socket unit",
                            named.len()
                        )
                    });
                    set.push(&l.name, group.any(), Some(group), backlog(l), (mode, why));
                }
                if !missing.is_empty() {
                    return Err(Error::Listen(format!(
                        "{}: [[listen]] name(s) {} not among the sockets systemd passed \
                         (LISTEN_FDNAMES={}); the socket unit's FileDescriptorName= must match \
                         each [[listen]] name",
                        config.path.display(),
                        missing.join(", "),
                        passed.join(":")
                    )));
                }
            }
            Pool::Standalone(bound, groups) => {
                for l in &config.listen {
                    let shared_there = bound
                        .borrow()
                        .iter()
                        .any(|(a, w)| *a == l.address && w.strong_count() > 0);
                    let group_there = |addr: &std::net::SocketAddr| {
                        groups
                            .borrow()
                            .iter()
                            .find(|(a, _)| a == addr)
                            .and_then(|(_, w)| w.upgrade())
                    };
                    let switched = match &l.address {
                        Address::Tcp(_) if l.balance.per_worker() => shared_there,
                        Address::Tcp(a) => group_there(a).is_some(),
                        Address::Unix(_) => false,
                    };
                    if switched {
                        return Err(listen_error(
                            config,
                            l,
                            io::Error::other(
                                "listen.balance changed: the socket is open the other way, and \
                                 changing it takes a restart of corral",
                            ),
                        ));
                    }
                    if let (true, Address::Tcp(addr)) = (l.balance.per_worker(), &l.address) {
                        let group = match group_there(addr) {
                            Some(g) => {
                                g.set_backlog(backlog(l))
                                    .map_err(|e| listen_error(config, l, e))?;
                                g.set_mode(l.balance);
                                g
                            }
                            None => {
                                let g = Group::bind(*addr, backlog(l), l.balance)
                                    .map_err(|e| listen_error(config, l, e))?;
                                let mut gs = groups.borrow_mut();
                                gs.retain(|(_, w)| w.strong_count() > 0);
                                gs.push((*addr, Rc::downgrade(&g)));
                                g
                            }
                        };
                        set.push(
                            &l.name,
                            group.any(),
                            Some(group),
                            backlog(l),
                            (l.balance, None),
                        );
                        continue;
                    }
                    let existing = bound
                        .borrow()
                        .iter()
                        .find(|(a, _)| *a == l.address)
                        .and_then(|(_, w)| w.upgrade());
                    let sock = match existing {
                        Some(s) => {
                            adjust(&s, l).map_err(|e| listen_error(config, l, e))?;
                            s
                        }
                        None => {
                            let s = Rc::new(bind(l).map_err(|e| listen_error(config, l, e))?);
                            let mut b = bound.borrow_mut();
                            b.retain(|(_, w)| w.strong_count() > 0);
                            b.push((l.address.clone(), Rc::downgrade(&s)));
                            s
                        }
                    };
                    set.push(&l.name, sock, None, backlog(l), (Balance::Shared, None));
                }
            }
        }
        Ok(set)
    }
}

impl Pool {
    /// Under systemd, what the config asks of the listeners that the sockets systemd passed do
    /// not give: another address (the socket unit keeps the old one until `systemctl
    /// daemon-reload` and a restart of the socket), or balancing. Standalone: none.
    pub fn address_mismatches(&self, config: &Config) -> Vec<String> {
        let Pool::Systemd(inherited, _) = self else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for l in &config.listen {
            let Some((_, sock)) = inherited.iter().find(|(n, _)| *n == l.name) else {
                continue;
            };
            let Ok(actual) = socket2::SockRef::from(&sock.fd).local_addr() else {
                continue;
            };
            let same = match &l.address {
                Address::Tcp(a) => actual.as_socket() == Some(*a),
                Address::Unix(p) => actual.as_pathname() == Some(p.as_path()),
            };
            if !same {
                let actual = actual
                    .as_socket()
                    .map(|a| a.to_string())
                    .or_else(|| actual.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "?".into());
                out.push(format!(
                    "listener `{}`: the config says {}, but systemd's socket is {actual}; it \
                     stays until `systemctl daemon-reload` and a restart of the app's socket unit",
                    l.name, l.address
                ));
            }
        }
        out
    }
}

fn listen_error(config: &Config, l: &Listen, e: io::Error) -> Error {
    Error::Listen(format!(
        "{}:{}: cannot listen on {} (listener `{}`): {e}",
        config.path.display(),
        l.span_line,
        l.address,
        l.name
    ))
}

/// Binds and listens. TCP gets SO_REUSEADDR (so a restart does not wait out TIME_WAIT); a unix
/// path left over by a dead process is replaced, one a live process answers on is not.
fn bind(l: &Listen) -> io::Result<ListenSocket> {
    match &l.address {
        Address::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&(*addr).into())?;
            s.listen(backlog(l))?;
            Ok(ListenSocket {
                fd: s.into(),
                unix_path: None,
            })
        }
        Address::Unix(path) => {
            crate::rundir::remove_stale(path, nix::sys::socket::SockType::Stream)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            let ours = ListenSocket {
                fd: s.try_clone()?.into(),
                unix_path: std::fs::symlink_metadata(path)
                    .ok()
                    .map(|m| (path.clone(), m.dev(), m.ino())),
            };
            drop(s);
            if let Some(mode) = l.mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            chown(path, l)?;
            let s = socket2::SockRef::from(&ours.fd);
            s.listen(backlog(l))?;
            Ok(ours)
        }
    }
}

fn chown(path: &std::path::Path, l: &Listen) -> io::Result<()> {
    let uid = match &l.owner {
        Some(u) => Some(
            nix::unistd::User::from_name(u)?
                .ok_or_else(|| io::Error::other(format!("no user {u}")))?
                .uid,
        ),
        None => None,
    };
    let gid = match &l.group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .ok_or_else(|| io::Error::other(format!("no group {g}")))?
                .gid,
        ),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid)?;
    }
    Ok(())
}

/// A socket reused by a new generation takes its new backlog and mode (listen(2) on a listening
/// socket only updates the backlog).
fn adjust(s: &ListenSocket, l: &Listen) -> io::Result<()> {
    socket2::SockRef::from(&s.fd).listen(backlog(l))?;
    if let (Some(mode), Address::Unix(path)) = (l.mode, &l.address) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `listen.backlog` as listen(2) takes it (the config keeps it within 1..=65535).
fn backlog(l: &Listen) -> i32 {
    i32::try_from(l.backlog).unwrap_or(i32::MAX)
}
