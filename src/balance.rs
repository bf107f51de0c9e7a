//! Balanced listeners: every worker accepts from a socket of its own, and corral tells the
//! kernel which of them each new connection goes to.
//!
//! A TCP `[[listen]]` that corral binds itself becomes a `SO_REUSEPORT` group (socket(7)): one
//! socket per worker, all bound to the address. A classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) picks, for each new connection, one of the sockets of the
//! workers that serve: at random, so that connections spread evenly however the workers'
//! event loops wake, and never to a worker that is starting, draining or stalled (the
//! decisions are supervisor_drain.rs's). A worker being replaced is thus steered away from and
//! drained before it is asked to stop. Classic BPF needs no privilege, unlike an eBPF socket
//! map, and is what a hardened unit may use.
//!
//! The program names sockets by their index in the kernel's group, which is the order they
//! started listening in; when one leaves the group, the last takes its place (the kernel's
//! `reuseport_detach_sock`). [`Group`] mirrors that order: sockets leave the group only through
//! [`Group::release`], which shuts them down (a listening socket leaves the group when it is
//! shut down, not when corral closes its copy: a worker's copy would keep it in). A worker that
//! shuts its own listener down (closing it is fine) takes it out of the group; corral notices
//! it no longer listens, puts it back in listen() (it rejoins at the end) and mends the mirror,
//! which holds when one such shutdown is seen at a time.
//!
//! A worker that crashed leaves its socket, and the connections queued on it, to the next
//! worker of its slot. Whether connections wait in a socket's queue is whether it polls
//! readable.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;

use socket2::{Domain, Socket, Type};

use crate::listen::ListenSocket;
use crate::supervisor::WorkerId;

/// One classic BPF instruction (linux/filter.h `struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// linux/bpf_common.h and linux/filter.h.
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_ALU: u16 = 0x04;
const BPF_MOD: u16 = 0x90;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_RANDOM`: a load from here gives a random 32-bit number.
const SKF_AD_RANDOM: u32 = 0xffff_f000 + 56;
/// An index past every socket: the kernel then chooses by hash among all, as without a program.
pub const ANY: u32 = u32::MAX;

/// The program that sends each new connection to one of `indices`, at random; with none, to
/// the kernel's own choice.
pub fn program(indices: &[u32]) -> Vec<Insn> {
    let ret = |k| Insn {
        code: BPF_RET | BPF_K,
        jt: 0,
        jf: 0,
        k,
    };
    match indices {
        [] => vec![ret(ANY)],
        [one] => vec![ret(*one)],
        many => {
            let n = many.len() as u32;
            let mut p = vec![
                Insn {
                    code: BPF_LD | BPF_W | BPF_ABS,
                    jt: 0,
                    jf: 0,
                    k: SKF_AD_RANDOM,
                },
                Insn {
                    code: BPF_ALU | BPF_MOD | BPF_K,
                    jt: 0,
                    jf: 0,
                    k: n,
                },
            ];
            // A holds 0..n: "if A == i return indices[i]", the last without a test.
            for (i, &index) in many[..many.len() - 1].iter().enumerate() {
                p.push(Insn {
                    code: BPF_JMP | BPF_JEQ | BPF_K,
                    jt: 0,
                    jf: 1,
                    k: i as u32,
                });
                p.push(ret(index));
            }
            p.push(ret(many[many.len() - 1]));
            p
        }
    }
}

/// Runs `program` as the kernel would for a connection, given the random number it loads:
/// the socket index it returns. For the tests.
pub fn run(program: &[Insn], random: u32) -> u32 {
    let mut a = 0u32;
    let mut pc = 0;
    loop {
        let i = program[pc];
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => a = random,
            c if c == BPF_ALU | BPF_MOD | BPF_K => a %= i.k,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                pc += usize::from(if a == i.k { i.jt } else { i.jf });
            }
            c if c == BPF_RET | BPF_K => return i.k,
            other => panic!("not an instruction of ours: {other:#x}"),
        }
        pc += 1;
    }
}

fn attach(socket: &impl AsFd, program: &[Insn]) -> io::Result<()> {
    let mut filters: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(filters.len()).map_err(|_| io::Error::other("program too long"))?,
        filter: filters.as_mut_ptr(),
    };
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &fprog,
    )
    .map_err(io::Error::from)
}

/// Whether connections wait in a listening socket's accept queue: a listener polls readable
/// exactly then (poll(2) on a listening TCP socket).
pub fn waiting(socket: &impl AsFd) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN)))
}

/// A TCP listener of corral's own, as a group of sockets, one per worker.
pub struct Group {
    /// The address every socket is bound to (its port as the first one got it, for port 0).
    addr: SocketAddr,
    backlog: std::cell::Cell<i32>,
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Listening sockets in the kernel's group order.
    order: Vec<Rc<ListenSocket>>,
    by_worker: HashMap<WorkerId, Rc<ListenSocket>>,
    /// A crashed worker's socket, and the connections queued on it, for its slot's next one.
    kept: HashMap<u32, Rc<ListenSocket>>,
    /// Sockets no worker has taken yet (the first one, bound when the group is made).
    spare: Vec<Rc<ListenSocket>>,
    serving: Vec<WorkerId>,
}

impl Group {
    /// Binds the group's first socket, which the first worker will take.
    pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<Rc<Group>> {
        // SO_REUSEPORT would let this join a group another process of this user listens in:
        // an address in use must be an error, as for a shared listener. A plain bind says.
        if addr.port() != 0 {
            let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            probe.set_reuse_address(true)?;
            if addr.is_ipv6() {
                probe.set_only_v6(false)?;
            }
            probe.bind(&addr.into())?;
        }
        let first = listen_socket(addr, backlog)?;
        let addr = socket2::SockRef::from(&first)
            .local_addr()?
            .as_socket()
            .unwrap_or(addr);
        let first = Rc::new(ListenSocket::new(first.into()));
        let g = Group {
            addr,
            backlog: std::cell::Cell::new(backlog),
            inner: RefCell::new(Inner::default()),
        };
        {
            let mut i = g.inner.borrow_mut();
            i.order.push(first.clone());
            i.spare.push(first);
        }
        Ok(Rc::new(g))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A socket of the group, for what is the same for all of them (the address).
    pub fn any(&self) -> Rc<ListenSocket> {
        self.inner.borrow().order[0].clone()
    }

    /// The socket for a new worker of `slot`: the one its slot kept, an unused one, or a new one.
    pub fn take(&self, worker: WorkerId, slot: u32) -> io::Result<Rc<ListenSocket>> {
        let mut i = self.inner.borrow_mut();
        let s = match i.kept.remove(&slot).or_else(|| i.spare.pop()) {
            Some(s) => s,
            None => {
                let s = Rc::new(ListenSocket::new(
                    listen_socket(self.addr, self.backlog.get())?.into(),
                ));
                i.order.push(s.clone());
                s
            }
        };
        i.by_worker.insert(worker, s.clone());
        Ok(s)
    }

    /// The worker is gone. Its socket is kept for its slot's next worker (`keep_for`), or
    /// leaves the group.
    pub fn release(&self, worker: WorkerId, keep_for: Option<u32>) {
        let mut i = self.inner.borrow_mut();
        let Some(s) = i.by_worker.remove(&worker) else {
            return;
        };
        if let Some(slot) = keep_for {
            if let std::collections::hash_map::Entry::Vacant(e) = i.kept.entry(slot) {
                e.insert(s);
                return;
            }
        }
        // The last socket is about to take s's place: until the program says so, connections
        // go only to serving sockets that stay where they are.
        let last = i.order.last().cloned();
        let staying: Vec<u32> = serving_indices(&i)
            .into_iter()
            .filter(|&x| {
                last.as_ref()
                    .is_none_or(|l| !Rc::ptr_eq(&i.order[x as usize], l))
            })
            .collect();
        if !staying.is_empty() {
            attach_through(&i, &program(&staying), self.addr);
        }
        remove(&mut i, &s);
        drop(i);
        self.apply();
    }

    /// Puts back in listen() the sockets of the group that workers shut down: each leaves the
    /// group at its shutdown (its place taken by the last) and rejoins at the end; returns
    /// whether there was any.
    pub fn relisten(&self) -> bool {
        let any = self.mend();
        if any {
            self.apply();
        }
        any
    }

    /// See [`Group::relisten`]; the program is the caller's to attach.
    fn mend(&self) -> bool {
        let mut i = self.inner.borrow_mut();
        let mut any = false;
        while let Some(p) = i.order.iter().position(|s| !listening(s)) {
            tracing::warn!(
                "a listening socket on {} was shut down by a worker: listening again",
                self.addr
            );
            let s = i.order.swap_remove(p);
            if socket2::SockRef::from(&*s)
                .listen(self.backlog.get())
                .is_ok()
            {
                i.order.push(s);
            }
            any = true;
        }
        any
    }

    /// Sets the listen backlog of every socket (a reload that changed `listen.backlog`).
    pub fn set_backlog(&self, backlog: i32) -> io::Result<()> {
        self.backlog.set(backlog);
        for s in &self.inner.borrow().order {
            socket2::SockRef::from(&**s).listen(backlog)?;
        }
        Ok(())
    }

    /// New connections go to these workers' sockets (see [`program`]); sockets kept for slots
    /// at or above `slots` (scaled away) leave the group.
    pub fn steer(&self, serving: &[WorkerId], slots: u32) {
        {
            let mut i = self.inner.borrow_mut();
            i.serving = serving.to_vec();
            let gone: Vec<u32> = i.kept.keys().copied().filter(|&s| s >= slots).collect();
            for slot in gone {
                let s = i.kept.remove(&slot).expect("listed");
                remove(&mut i, &s);
            }
        }
        self.apply();
    }

    fn apply(&self) {
        // A socket that no longer listens left the kernel's group behind corral's back.
        self.mend();
        let i = self.inner.borrow();
        let indices = serving_indices(&i);
        attach_through(&i, &program(&indices), self.addr);
    }

    /// Whether connections wait in the worker's socket's queue.
    pub fn waiting(&self, worker: WorkerId) -> Option<bool> {
        let i = self.inner.borrow();
        waiting(&**i.by_worker.get(&worker)?).ok()
    }
}

/// The indices of the serving workers' sockets in the kernel's order.
fn serving_indices(i: &Inner) -> Vec<u32> {
    i.serving
        .iter()
        .filter_map(|w| i.by_worker.get(w))
        .filter_map(|s| i.order.iter().position(|o| Rc::ptr_eq(o, s)))
        .map(|p| p as u32)
        .collect()
}

/// Whether a socket is listening (`SO_ACCEPTCONN`, socket(7)).
pub fn listening(s: &ListenSocket) -> bool {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false)
}

/// Attaches `program` to the group through one of its sockets: the program belongs to the
/// group, but only a socket still in it reaches it.
fn attach_through(i: &Inner, program: &[Insn], addr: SocketAddr) {
    let Some(s) = i.order.first() else { return };
    if let Err(e) = attach(&**s, program) {
        tracing::warn!("cannot steer connections on {addr} (SO_ATTACH_REUSEPORT_CBPF): {e}");
    }
}

/// Takes `s` out of the group: shut down (which is what makes the kernel let go of it), and
/// out of the mirrored order the way the kernel does it.
fn remove(i: &mut Inner, s: &Rc<ListenSocket>) {
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&**s),
        nix::sys::socket::Shutdown::Both,
    );
    if let Some(p) = i.order.iter().position(|o| Rc::ptr_eq(o, s)) {
        i.order.swap_remove(p);
    }
}

/// A TCP socket listening on `addr` in the group of every socket bound there with
/// `SO_REUSEPORT` by this user. `SO_REUSEADDR` too, so a restart does not wait out TIME_WAIT.
fn listen_socket(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_cloexec(true)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // "PORT" means every address, IPv4 too (BindIPv6Only=both).
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_pick_only_among_the_serving_sockets_and_evenly() {
        assert_eq!(run(&program(&[]), 7), ANY);
        assert_eq!(run(&program(&[3]), 12345), 3);
        let p = program(&[4, 0, 2]);
        let mut counts = HashMap::new();
        for r in 0..3000u32 {
            *counts.entry(run(&p, u32::MAX - r)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (index, n) in counts {
            assert!([4, 0, 2].contains(&index));
            assert_eq!(n, 1000, "index {index}");
        }
        // 2 + 2 per serving socket but the last, + 1: within BPF_MAXINSNS (4096) for 1024.
        assert_eq!(
            program(&(0..1024).collect::<Vec<_>>()).len(),
            2 + 2 * 1023 + 1
        );
    }

    /// Makes `n` connections to `addr`; how many each of `sockets` then accepts.
    fn queues_after(addr: SocketAddr, n: usize, sockets: &[Rc<ListenSocket>]) -> Vec<u32> {
        let conns: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // The handshake is done when connect returns: the kernel queued it on a listener.
        let q = sockets.iter().map(|s| accept_all(s)).collect();
        drop(conns);
        q
    }

    /// Accepts what waits on `s`; how many.
    fn accept_all(s: &ListenSocket) -> u32 {
        let l = socket2::SockRef::from(s);
        l.set_nonblocking(true).unwrap();
        let mut n = 0;
        while l.accept().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_group_steers_to_the_serving_workers_and_mirrors_the_kernels_order() {
        let g = Group::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = g.addr();
        assert_ne!(addr.port(), 0);
        let a = g.take(1, 0).unwrap();
        let b = g.take(2, 1).unwrap();
        let c = g.take(3, 2).unwrap();
        let all = [a.clone(), b.clone(), c.clone()];
        g.steer(&[2], 3);
        assert_eq!(queues_after(addr, 5, &all), [0, 5, 0]);
        g.steer(&[1, 3], 3);
        let q = queues_after(addr, 40, &all);
        assert_eq!(q[1], 0, "{q:?}");
        assert!(q[0] > 5 && q[2] > 5 && q[0] + q[2] == 40, "{q:?}");
        // Worker 1 leaves: socket c takes a's place in the kernel's order; the program follows.
        g.release(1, None);
        g.steer(&[3], 3);
        assert_eq!(queues_after(addr, 4, &all[1..]), [0, 4]);
        // A crashed worker's socket is kept for its slot, connections and all.
        g.steer(&[2], 3);
        assert_eq!(g.waiting(2), Some(false));
        let conns: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert_eq!(g.waiting(2), Some(true));
        g.release(2, Some(1));
        let again = g.take(4, 1).unwrap();
        assert!(Rc::ptr_eq(&again, &b));
        assert_eq!(g.waiting(4), Some(true));
        assert_eq!(accept_all(&again), 2);
        drop(conns);
        assert_eq!(g.waiting(4), Some(false));
        assert_eq!(g.waiting(1), None);
    }
}
