//! Balanced listeners: every worker accepts from a socket of its own, and corral tells the
//! kernel which of them each new connection goes to.
//!
//! A balanced TCP `[[listen]]` is a `SO_REUSEPORT` group (socket(7)): one socket per worker,
//! all bound to the address, by corral itself or by systemd (a socket unit with a
//! `ListenStream=` per socket and `ReusePort=yes`, whose sockets corral adopts in the order
//! systemd opened them). A classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) picks, for each new connection, one of the sockets of the
//! workers that serve, never one of a worker that is starting, draining or stalled (the
//! decisions are supervisor_drain.rs's): at random ("even"), so that connections spread evenly
//! however the workers' event loops wake, or by a hash of the client's address ("source"), so
//! that a client keeps its slot. A worker being replaced is thus steered away from and drained
//! before it is asked to stop.
//!
//! Why a socket per worker rather than per slot: during a reload a slot has two workers, the
//! old one finishing what it accepted and the new one taking new connections. With one socket
//! per slot the old worker would go on accepting until it stops, and servers that drop what
//! they accepted but had not read when their graceful stop begins (uvicorn, Node.js) would
//! fail those requests. A socket still outlives its worker where that matters: a crashed
//! worker's socket, and what waits on it, goes to its slot's next worker.
//!
//! Why classic BPF: an eBPF `SK_REUSEPORT` program with a socket map would name sockets by key
//! rather than by position, and could count; but loading one takes CAP_BPF (or CAP_SYS_ADMIN),
//! even with `kernel.unprivileged_bpf_disabled` at 0 (it is 2 on the project's machine, Linux
//! 6.18, Debian 12's default), and corral@.service runs with no
//! capability at all (`CapabilityBoundingSet=`, `systemd-analyze security` 1.1). Classic BPF
//! needs none, and gives a random number and the packet's IP header: enough for both modes.
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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::config::Balance;
use crate::ebpf::Dealer;
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
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_MEM: u16 = 0x60;
const BPF_ALU: u16 = 0x04;
const BPF_MUL: u16 = 0x20;
const BPF_AND: u16 = 0x50;
const BPF_RSH: u16 = 0x70;
const BPF_MOD: u16 = 0x90;
const BPF_XOR: u16 = 0xa0;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_TAX: u16 = 0x00;
/// `SKF_AD_OFF + SKF_AD_RANDOM`: a load from here gives a random 32-bit number.
const SKF_AD_RANDOM: u32 = 0xffff_f000 + 56;
/// `SKF_AD_OFF + SKF_AD_PROTOCOL`: the packet's ethertype, in host order.
const SKF_AD_PROTOCOL: u32 = 0xffff_f000;
/// `SKF_NET_OFF`: loads from here on read the IP header, wherever the program's view of the
/// packet starts (for a reuseport program, past the TCP header).
const SKF_NET_OFF: u32 = 0xfff0_0000;
const ETH_P_IPV6: u32 = 0x86dd;
/// Where an IP header has its source address (RFC 791, RFC 8200).
const IPV4_SRC: u32 = 12;
const IPV6_SRC: u32 = 8;
/// Knuth's multiplicative hashing constant, 2^32 / the golden ratio: spreads nearby addresses.
const GOLDEN: u32 = 0x9e37_79b1;
/// An index past every socket: the kernel then chooses by hash among all, as without a program.
pub const ANY: u32 = u32::MAX;

const fn insn(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program that sends each new connection to one of `indices`, at random; with none, to
/// the kernel's own choice.
pub fn program(indices: &[u32]) -> Vec<Insn> {
    match indices {
        [] => vec![insn(BPF_RET | BPF_K, ANY)],
        [one] => vec![insn(BPF_RET | BPF_K, *one)],
        many => {
            let mut p = vec![
                insn(BPF_LD | BPF_W | BPF_ABS, SKF_AD_RANDOM),
                insn(BPF_ALU | BPF_MOD | BPF_K, many.len() as u32),
            ];
            p.extend(lookup(many));
            p
        }
    }
}

/// The program that sends each new connection to a socket chosen by its source address:
/// `table[hash(address) % BUCKETS]`. IPv4 (also reaching an IPv6 socket) hashes its 4 bytes,
/// IPv6 its 16. Classic BPF has no tables, so the lookup is comparisons: first among 32 groups
/// of 32 buckets, then within the group, 32 comparisons on average where one chain would take
/// 512.
pub fn source_program(table: &[u32]) -> Vec<Insn> {
    assert_eq!(table.len(), BUCKETS, "a table of BUCKETS");
    let ld = |off: u32| insn(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + off);
    let mul = insn(BPF_ALU | BPF_MUL | BPF_K, GOLDEN);
    let xor_m0 = [
        insn(BPF_LDX | BPF_W | BPF_MEM, 0),
        insn(BPF_ALU | BPF_XOR | BPF_X, 0),
    ];
    // h = ((w0 * G ^ w1) * G ^ w2) * G ...: every word of the address counts.
    let mut v6 = vec![ld(IPV6_SRC), mul];
    for w in 1..4 {
        v6.push(insn(BPF_ST, 0));
        v6.push(ld(IPV6_SRC + 4 * w));
        v6.extend(xor_m0);
        v6.push(mul);
    }
    let v4 = [ld(IPV4_SRC), mul];
    let mut p = vec![
        insn(BPF_LD | BPF_W | BPF_ABS, SKF_AD_PROTOCOL),
        Insn {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            jt: 0,
            jf: v6.len() as u8 + 1,
            k: ETH_P_IPV6,
        },
    ];
    p.extend(v6);
    p.push(insn(BPF_JMP | BPF_JA, v4.len() as u32));
    p.extend(v4);
    // The high bits of the product are the well-mixed ones: fold them into the low ones.
    p.extend([
        insn(BPF_MISC | BPF_TAX, 0),
        insn(BPF_ALU | BPF_RSH | BPF_K, 16),
        insn(BPF_ALU | BPF_XOR | BPF_X, 0),
        insn(BPF_ALU | BPF_AND | BPF_K, BUCKETS as u32 - 1),
        // M[1] = bucket; A = its group.
        insn(BPF_ST, 1),
        insn(BPF_ALU | BPF_RSH | BPF_K, GROUP_BITS),
    ]);
    let groups = BUCKETS >> GROUP_BITS;
    let block_len = 2 + 2 * (1 << GROUP_BITS) - 1;
    // "if A == g goto block g", the last without a test; BPF_JA jumps 32 bits far.
    let first_block = p.len() + 2 * groups - 1;
    for g in 0..groups {
        let ja_at = p.len() + usize::from(g + 1 < groups);
        if g + 1 < groups {
            p.push(Insn {
                code: BPF_JMP | BPF_JEQ | BPF_K,
                jt: 0,
                jf: 1,
                k: g as u32,
            });
        }
        let target = first_block + g * block_len;
        p.push(insn(BPF_JMP | BPF_JA, (target - ja_at - 1) as u32));
    }
    debug_assert_eq!(p.len(), first_block);
    for chunk in table.chunks(1 << GROUP_BITS) {
        p.push(insn(BPF_LD | BPF_W | BPF_MEM, 1));
        p.push(insn(BPF_ALU | BPF_AND | BPF_K, (1 << GROUP_BITS) - 1));
        p.extend(lookup(chunk));
    }
    p
}

/// "if A == i return table[i]", the last without a test.
fn lookup(table: &[u32]) -> Vec<Insn> {
    let mut p = Vec::with_capacity(2 * table.len());
    for (i, &index) in table[..table.len() - 1].iter().enumerate() {
        p.push(Insn {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            jt: 0,
            jf: 1,
            k: i as u32,
        });
        p.push(insn(BPF_RET | BPF_K, index));
    }
    p.push(insn(BPF_RET | BPF_K, table[table.len() - 1]));
    p
}

/// What a program may look at of a new connection, for [`run`].
pub struct Connection {
    /// What a load of `SKF_AD_RANDOM` gives.
    pub random: u32,
    pub source: std::net::IpAddr,
}

/// Runs `program` as the kernel would for a connection: the socket index it returns. For the
/// tests, which hold it to the kernel's own choices.
pub fn run(program: &[Insn], c: &Connection) -> u32 {
    let (protocol, header) = match c.source {
        std::net::IpAddr::V4(a) => {
            let mut h = vec![0u8; 20];
            h[12..16].copy_from_slice(&a.octets());
            (0x0800, h)
        }
        std::net::IpAddr::V6(a) => {
            let mut h = vec![0u8; 40];
            h[8..24].copy_from_slice(&a.octets());
            (ETH_P_IPV6, h)
        }
    };
    let load = |k: u32| match k {
        SKF_AD_RANDOM => c.random,
        SKF_AD_PROTOCOL => protocol,
        k if k >= SKF_NET_OFF => {
            let o = (k - SKF_NET_OFF) as usize;
            u32::from_be_bytes(header[o..o + 4].try_into().expect("4 bytes"))
        }
        other => panic!("not a load of ours: {other:#x}"),
    };
    let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0;
    loop {
        let i = program[pc];
        pc += 1;
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => a = load(i.k),
            c if c == BPF_LDX | BPF_W | BPF_MEM => x = m[i.k as usize],
            c if c == BPF_LD | BPF_W | BPF_MEM => a = m[i.k as usize],
            BPF_ST => m[i.k as usize] = a,
            c if c == BPF_MISC | BPF_TAX => x = a,
            c if c == BPF_ALU | BPF_MUL | BPF_K => a = a.wrapping_mul(i.k),
            c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
            c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= i.k,
            c if c == BPF_ALU | BPF_AND | BPF_K => a &= i.k,
            c if c == BPF_ALU | BPF_MOD | BPF_K => a %= i.k,
            c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                pc += usize::from(if a == i.k { i.jt } else { i.jf });
            }
            c if c == BPF_RET | BPF_K => return i.k,
            other => panic!("not an instruction of ours: {other:#x}"),
        }
    }
}

/// Which of `slots` slots bucket `bucket` belongs to: jump consistent hashing (Lamping and
/// Veach, 2014), so that one slot more or less moves only the buckets it gains or loses. No
/// crate in the tree does it, and it is a few lines.
pub fn slot_of(bucket: u32, slots: u32) -> u32 {
    let mut key = u64::from(bucket)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(slots) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// How many buckets source balancing hashes addresses into, for every slot count (one that
/// changed with it would move clients between slots that stay): each slot gets about
/// BUCKETS / slots of them, so up to about 128 slots the addresses spread evenly, and beyond,
/// unevenly (with 1024 slots, some get none). The program is then about 2,200 instructions,
/// within classic BPF's 4096 (BPF_MAXINSNS).
pub const BUCKETS: usize = 1024;
/// Buckets in a group of the program's two-level lookup: 2^5.
const GROUP_BITS: u32 = 5;
/// The most sockets an even program chooses among: 2 + 2 per socket but the last + 1 within
/// BPF_MAXINSNS (a reload of 1024 workers in one batch serves 2048 for a moment).
const MAX_EVEN: usize = 2047;

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

/// [`waiting`] for many sockets, in one poll(2).
pub fn waiting_many(sockets: &[Rc<ListenSocket>]) -> Vec<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds: Vec<PollFd> = sockets
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();
    if poll(&mut fds, PollTimeout::ZERO).is_err() {
        return vec![false; sockets.len()];
    }
    fds.iter()
        .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
        .collect()
}

/// A TCP listener of corral's own, as a group of sockets, one per worker.
pub struct Group {
    /// The address every socket is bound to (its port as the first one got it, for port 0).
    addr: SocketAddr,
    backlog: Cell<i32>,
    /// `Even` or `Source`.
    mode: Cell<Balance>,
    /// Whether corral bound the sockets, and may make more and take them out of the group;
    /// systemd's (socket activation) are as many as the socket unit has and stay in it.
    owned: bool,
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Listening sockets in the kernel's group order.
    order: Vec<Rc<ListenSocket>>,
    /// Each worker's socket, and its slot.
    by_worker: HashMap<WorkerId, (u32, Rc<ListenSocket>)>,
    /// A crashed worker's socket, and the connections queued on it, for its slot's next one.
    kept: HashMap<u32, Rc<ListenSocket>>,
    /// Sockets no worker has taken yet (the first one, bound when the group is made).
    spare: Vec<Rc<ListenSocket>>,
    serving: Vec<WorkerId>,
    /// The same, with the workers stepped around for a backed-up queue: source balancing's.
    keeping: Vec<WorkerId>,
    /// How many slots the app has: source balancing hashes addresses over them.
    slots: u32,
    /// Even placement's program, when it could be loaded (ebpf.rs), or why not (and whether
    /// for want of a privilege).
    dealer: Option<Result<Dealer, (String, bool)>>,
    /// The dealer's socket map: each key's socket.
    keys: Vec<Option<Rc<ListenSocket>>>,
    /// How many sockets the dealer deals among.
    dealt: u32,
}

/// What the group's program does: deal among sockets (their indices in the kernel's order),
/// or look each source address's bucket up.
enum Placement {
    Deal(Vec<u32>),
    Table(Vec<u32>),
}

impl Group {
    /// Binds the group's first socket, which the first worker will take.
    pub fn bind(addr: SocketAddr, backlog: i32, mode: Balance) -> io::Result<Rc<Group>> {
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
        Ok(Rc::new(Group::of(addr, backlog, mode, true, vec![first])))
    }

    /// A group of `sockets`, in the kernel's order, none taken yet: the first worker takes the
    /// first.
    fn of(
        addr: SocketAddr,
        backlog: i32,
        mode: Balance,
        owned: bool,
        sockets: Vec<Rc<ListenSocket>>,
    ) -> Group {
        let inner = Inner {
            order: sockets.clone(),
            spare: sockets.into_iter().rev().collect(),
            dealer: (mode == Balance::Even).then(load_dealer),
            ..Inner::default()
        };
        Group {
            addr,
            backlog: Cell::new(backlog),
            mode: Cell::new(mode),
            owned,
            inner: RefCell::new(inner),
        }
    }

    /// A group of the sockets systemd passed for one listener (a socket unit with a
    /// `ListenStream=` per socket and `ReusePort=yes`), in the order it listed them, which is
    /// the order it called listen(2) in: the kernel's.
    pub fn adopt(
        sockets: Vec<Rc<ListenSocket>>,
        backlog: i32,
        mode: Balance,
    ) -> io::Result<Rc<Group>> {
        let first = sockets
            .first()
            .ok_or_else(|| io::Error::other("no socket"))?;
        let addr = socket2::SockRef::from(&**first)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not a TCP socket"))?;
        for s in &sockets {
            let other = socket2::SockRef::from(&**s).local_addr()?.as_socket();
            if other != Some(addr) {
                return Err(io::Error::other(format!(
                    "the sockets of one name listen on {addr} and {}, not all on one address",
                    other.map_or("?".into(), |a| a.to_string())
                )));
            }
        }
        let g = Group::of(addr, backlog, mode, false, kernel_order(sockets, addr));
        // Whatever an earlier corral left attached (or the last probe) goes: until workers
        // serve, connections wait where the first worker will take them.
        g.apply();
        Ok(Rc::new(g))
    }

    /// How many sockets the group has.
    pub fn sockets(&self) -> usize {
        self.inner.borrow().order.len()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A socket of the group, for what is the same for all of them (the address).
    pub fn any(&self) -> Rc<ListenSocket> {
        self.inner.borrow().order[0].clone()
    }

    /// The socket for a new worker of `slot`: the one its slot kept, an unused one (first one
    /// that connections wait on), or a new one; when systemd's are all taken, the one of
    /// another worker of its slot or of the fewest workers, to share.
    pub fn take(&self, worker: WorkerId, slot: u32) -> io::Result<Rc<ListenSocket>> {
        let mut i = self.inner.borrow_mut();
        let s = match i.kept.remove(&slot).or_else(|| next_spare(&mut i)) {
            Some(s) => s,
            None if self.owned => {
                let s = Rc::new(ListenSocket::new(
                    listen_socket(self.addr, self.backlog.get())?.into(),
                ));
                i.order.push(s.clone());
                s
            }
            None => {
                // Another worker's: of its slot (a reload's old worker, which leaves it soon),
                // or the one the fewest workers share. Never a socket kept for a slot, which
                // that slot's next worker takes.
                let same_slot = i.by_worker.values().find(|(s, _)| *s == slot);
                let fewest = || {
                    i.by_worker.values().map(|(_, s)| s).min_by_key(|o| {
                        i.by_worker
                            .values()
                            .filter(|(_, s)| Rc::ptr_eq(s, o))
                            .count()
                    })
                };
                let s = same_slot
                    .map(|(_, s)| s)
                    .or_else(fewest)
                    .or_else(|| i.kept.values().next())
                    .ok_or_else(|| io::Error::other("no socket"))?
                    .clone();
                tracing::warn!(
                    "{}: every socket systemd passed is taken ({}): a worker shares one",
                    self.addr,
                    i.order.len()
                );
                s
            }
        };
        i.by_worker.insert(worker, (slot, s.clone()));
        Ok(s)
    }

    /// The worker is gone. Its socket is kept for its slot's next worker (`keep_for`), or
    /// leaves the group.
    pub fn release(&self, worker: WorkerId, keep_for: Option<u32>) {
        let mut i = self.inner.borrow_mut();
        let Some((_, s)) = i.by_worker.remove(&worker) else {
            return;
        };
        if i.by_worker.values().any(|(_, o)| Rc::ptr_eq(o, &s)) {
            // Shared with another worker (systemd's sockets all taken): it stays with it.
            return;
        }
        if !self.owned {
            // systemd's socket stays in the group, for the slot or for any worker.
            match keep_for {
                Some(slot) if !i.kept.contains_key(&slot) => {
                    i.kept.insert(slot, s);
                }
                _ => i.spare.push(s),
            }
            return;
        }
        if let Some(slot) = keep_for {
            if let std::collections::hash_map::Entry::Vacant(e) = i.kept.entry(slot) {
                e.insert(s);
                return;
            }
        }
        // The last socket is about to take s's place: until the program says so, connections
        // go only to sockets that stay where they are.
        let mut moving = vec![s.clone()];
        moving.extend(i.order.last().cloned());
        let p = placement(&i, self.mode.get(), self.owned, &moving);
        place(&mut i, p, self.addr);
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
            // Its shutdown took it out of the dealer's map too.
            forget(&mut i, &s);
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

    /// How connections are shared out from now on (a reload that changed `listen.balance`
    /// between "even" and "source").
    pub fn set_mode(&self, mode: Balance) {
        if self.mode.replace(mode) != mode {
            self.apply();
        }
    }

    /// New connections go to these workers' sockets (see [`program`] and
    /// [`source_program`]); sockets kept for slots at or above `slots` (scaled away) leave the
    /// group.
    pub fn steer(&self, serving: &[WorkerId], keeping: &[WorkerId], slots: u32) {
        {
            let mut i = self.inner.borrow_mut();
            i.serving = serving.to_vec();
            i.keeping = keeping.to_vec();
            i.slots = slots;
            let gone: Vec<u32> = i.kept.keys().copied().filter(|&s| s >= slots).collect();
            for slot in gone {
                let s = i.kept.remove(&slot).expect("listed");
                if self.owned {
                    remove(&mut i, &s);
                } else {
                    i.spare.push(s);
                }
            }
        }
        self.apply();
    }

    fn apply(&self) {
        // A socket that no longer listens left the kernel's group behind corral's back.
        self.mend();
        let mut i = self.inner.borrow_mut();
        if self.mode.get() == Balance::Even && i.dealer.is_none() {
            i.dealer = Some(load_dealer());
        }
        let p = placement(&i, self.mode.get(), self.owned, &[]);
        place(&mut i, p, self.addr);
    }

    /// Why connections are placed at random rather than dealt in turn, for an even group.
    pub fn at_random(&self) -> Option<String> {
        let i = self.inner.borrow();
        if self.mode.get() != Balance::Even {
            return None;
        }
        match &i.dealer {
            Some(Err((e, true))) => Some(format!(
                "connections go to the workers at random, not in turn: the eBPF program that \
                 deals them needs CAP_BPF ({e})"
            )),
            Some(Err((e, false))) => Some(format!(
                "connections go to the workers at random, not in turn: the eBPF program that \
                 deals them cannot be loaded ({e}; it needs Linux 5.12 or later)"
            )),
            _ => None,
        }
    }

    /// The worker's own socket.
    pub fn socket_of(&self, worker: WorkerId) -> Option<Rc<ListenSocket>> {
        Some(self.inner.borrow().by_worker.get(&worker)?.1.clone())
    }
}

/// A group as an upgrade in place hands it over: its sockets by their index in the handover's
/// socket list, and its dealer's descriptors (carry.rs).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Saved {
    addr: SocketAddr,
    backlog: i32,
    mode: Balance,
    owned: bool,
    order: Vec<usize>,
    by_worker: Vec<(WorkerId, u32, usize)>,
    kept: Vec<(u32, usize)>,
    spare: Vec<usize>,
    serving: Vec<WorkerId>,
    keeping: Vec<WorkerId>,
    slots: u32,
    dealer: SavedDealer,
    keys: Vec<Option<usize>>,
    dealt: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum SavedDealer {
    None,
    Loaded([i32; 3]),
    Failed(String, bool),
}

impl Group {
    /// The group for an upgrade in place, its sockets numbered by `sockets`.
    pub fn save(&self, sockets: &mut crate::listen::Sockets) -> io::Result<Saved> {
        let i = self.inner.borrow();
        let mut all = |v: &[Rc<ListenSocket>]| {
            v.iter()
                .map(|s| sockets.index(s))
                .collect::<io::Result<Vec<_>>>()
        };
        let order = all(&i.order)?;
        let spare = all(&i.spare)?;
        let mut by_worker = Vec::new();
        for (w, (slot, s)) in &i.by_worker {
            by_worker.push((*w, *slot, sockets.index(s)?));
        }
        let mut kept = Vec::new();
        for (slot, s) in &i.kept {
            kept.push((*slot, sockets.index(s)?));
        }
        let mut keys = Vec::new();
        for k in &i.keys {
            keys.push(match k {
                Some(s) => Some(sockets.index(s)?),
                None => None,
            });
        }
        let dealer = match &i.dealer {
            None => SavedDealer::None,
            Some(Ok(d)) => SavedDealer::Loaded(d.carry(sockets.carry())?),
            Some(Err((e, perm))) => SavedDealer::Failed(e.clone(), *perm),
        };
        Ok(Saved {
            addr: self.addr,
            backlog: self.backlog.get(),
            mode: self.mode.get(),
            owned: self.owned,
            order,
            by_worker,
            kept,
            spare,
            serving: i.serving.clone(),
            keeping: i.keeping.clone(),
            slots: i.slots,
            dealer,
            keys,
            dealt: i.dealt,
        })
    }

    /// A group an earlier image saved, as it was: the program it left attached stays until
    /// the next placement replaces it (with the same maps, when it was the dealer's).
    pub fn restore(
        saved: Saved,
        socket: &dyn Fn(usize) -> io::Result<Rc<ListenSocket>>,
        take: &mut crate::carry::Take,
    ) -> io::Result<Rc<Group>> {
        let all = |v: &[usize]| v.iter().map(|&x| socket(x)).collect::<io::Result<Vec<_>>>();
        let mut by_worker = HashMap::new();
        for (w, slot, s) in saved.by_worker {
            by_worker.insert(w, (slot, socket(s)?));
        }
        let mut kept = HashMap::new();
        for (slot, s) in saved.kept {
            kept.insert(slot, socket(s)?);
        }
        let mut keys = Vec::new();
        for k in saved.keys {
            keys.push(match k {
                Some(s) => Some(socket(s)?),
                None => None,
            });
        }
        let dealer = match saved.dealer {
            SavedDealer::None => None,
            SavedDealer::Loaded([p, s, t]) => {
                Some(Ok(Dealer::adopt([take.fd(p)?, take.fd(s)?, take.fd(t)?])))
            }
            SavedDealer::Failed(e, perm) => Some(Err((e, perm))),
        };
        let inner = Inner {
            order: all(&saved.order)?,
            by_worker,
            kept,
            spare: all(&saved.spare)?,
            serving: saved.serving,
            keeping: saved.keeping,
            slots: saved.slots,
            dealer,
            keys,
            dealt: saved.dealt,
        };
        Ok(Rc::new(Group {
            addr: saved.addr,
            backlog: Cell::new(saved.backlog),
            mode: Cell::new(saved.mode),
            owned: saved.owned,
            inner: RefCell::new(inner),
        }))
    }
}

/// The program for the group as it is, keeping clear of `avoid` (sockets about to move).
///
/// Even: the serving workers' sockets, at random. Source: each bucket of addresses goes to
/// its slot's worker (the newest, while an old and a new one both serve during a reload); a
/// slot with none lends its buckets to the serving slots in turn, until it serves again.
/// Nothing serving (every slot waits out a restart delay): the sockets kept for the slots,
/// whose next workers take what waits there; failing those, for systemd's sockets, the one the
/// next worker takes (a socket no worker takes would keep what the kernel sends it), and for
/// corral's own, the kernel's choice among all.
fn placement(i: &Inner, mode: Balance, owned: bool, avoid: &[Rc<ListenSocket>]) -> Placement {
    let index_of = |s: &Rc<ListenSocket>| -> Option<u32> {
        if avoid.iter().any(|a| Rc::ptr_eq(a, s)) {
            return None;
        }
        i.order
            .iter()
            .position(|o| Rc::ptr_eq(o, s))
            .map(|p| p as u32)
    };
    let workers = if mode == Balance::Source {
        &i.keeping
    } else {
        &i.serving
    };
    // (slot, worker, index): the newest worker of a slot last.
    let mut serving: Vec<(u32, WorkerId, u32)> = workers
        .iter()
        .filter_map(|w| {
            let (slot, s) = i.by_worker.get(w)?;
            Some((*slot, *w, index_of(s)?))
        })
        .collect();
    serving.sort_unstable();
    if serving.is_empty() {
        let mut fallback: Vec<u32> = i.kept.values().filter_map(index_of).collect();
        if fallback.is_empty() && !owned {
            fallback.extend(i.spare.last().and_then(index_of));
        }
        fallback.sort_unstable();
        return Placement::Deal(fallback);
    }
    if mode != Balance::Source {
        let mut indices: Vec<u32> = serving.iter().map(|&(_, _, x)| x).collect();
        indices.sort_unstable();
        indices.dedup();
        return Placement::Deal(indices);
    }
    let mut by_slot: std::collections::BTreeMap<u32, u32> = Default::default();
    for &(slot, _, index) in &serving {
        by_slot.insert(slot, index);
    }
    let lenders: Vec<u32> = by_slot.values().copied().collect();
    let table: Vec<u32> = (0..BUCKETS as u32)
        .map(|b| match by_slot.get(&slot_of(b, i.slots.max(1))) {
            Some(&index) => index,
            None => lenders[b as usize % lenders.len()],
        })
        .collect();
    Placement::Table(table)
}

/// The spare socket the next worker takes: one where connections wait (they are its), or
/// the last.
fn next_spare(i: &mut Inner) -> Option<Rc<ListenSocket>> {
    match i.spare.iter().rposition(|s| waiting(&**s).unwrap_or(false)) {
        Some(p) => Some(i.spare.remove(p)),
        None => i.spare.pop(),
    }
}

/// How long a probe connection may take to reach a socket of the group (over the loopback it
/// takes microseconds).
const PROBE_WAIT: u16 = 200;

/// The sockets of a group systemd made, in the kernel's order. systemd listens on them in the
/// order it passes them, but a socket that was shut down and listened on again (a worker's
/// shutdown(2), mended by an earlier corral) has moved to the end since, and a wrong order
/// would send connections to sockets no worker takes. So each index `k` is probed before any
/// worker runs: with a program sending every new connection to `k`, a connection from here
/// shows which socket is `k`, and is then taken off its queue. A socket where connections
/// already wait (clients that came before corral) shows nothing new, and keeps the probe, which
/// its worker reads as an empty connection: what no probe placed keeps the order systemd gave. A probe that does not arrive ends the probing (a firewall
/// on the loopback, an address of another host's): the order is then systemd's.
fn kernel_order(given: Vec<Rc<ListenSocket>>, addr: SocketAddr) -> Vec<Rc<ListenSocket>> {
    use nix::poll::{poll, PollFd, PollFlags};
    let targets: Vec<SocketAddr> = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            vec![(std::net::Ipv4Addr::LOCALHOST, addr.port()).into()]
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => vec![
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into(),
        ],
        _ => vec![addr],
    };
    let n = given.len();
    let mut placed: Vec<Option<usize>> = vec![None; n];
    let mut taken = vec![false; n];
    let connect = || {
        targets.iter().find_map(|t| {
            std::net::TcpStream::connect_timeout(t, Duration::from_millis(PROBE_WAIT.into())).ok()
        })
    };
    for (k, place) in placed.iter_mut().enumerate() {
        if attach(&*given[0], &program(&[k as u32])).is_err() {
            break;
        }
        let quiet: Vec<usize> = (0..n)
            .filter(|&i| !taken[i] && !waiting(&*given[i]).unwrap_or(true))
            .collect();
        if quiet.is_empty() {
            break;
        }
        let Some(probe) = connect() else { break };
        let mut fds: Vec<PollFd> = quiet
            .iter()
            .map(|&i| PollFd::new(given[i].as_fd(), PollFlags::POLLIN))
            .collect();
        if !matches!(poll(&mut fds, PROBE_WAIT), Ok(1..)) {
            // It reached a socket where connections wait already: that k stays unplaced.
            continue;
        }
        let hit = fds
            .iter()
            .position(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)));
        drop(fds);
        if let Some(i) = hit.map(|h| quiet[h]) {
            // The probe came first to an empty queue: the first accepted is it.
            let _ = socket2::SockRef::from(&*given[i]).accept();
            taken[i] = true;
            *place = Some(i);
        }
        drop(probe);
    }
    let mut rest = (0..n).filter(|i| !taken[*i]);
    let order: Vec<Rc<ListenSocket>> = placed
        .iter()
        .map(|p| given[p.unwrap_or_else(|| rest.next().expect("as many left as unplaced"))].clone())
        .collect();
    let moved = order
        .iter()
        .zip(&given)
        .filter(|(a, b)| !Rc::ptr_eq(a, b))
        .count();
    if moved > 0 {
        tracing::info!(
            "{addr}: the kernel's order of systemd's sockets differs from theirs ({moved} moved)"
        );
    }
    order
}

/// Whether a socket is listening (`SO_ACCEPTCONN`, socket(7)).
pub fn listening(s: &ListenSocket) -> bool {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false)
}

/// Has the group place connections so: the dealer's program when it is loaded and the
/// placement deals, else a classic program. A program belongs to the group, but is attached
/// through one of its sockets, one still in it.
fn place(i: &mut Inner, p: Placement, addr: SocketAddr) {
    let Some(first) = i.order.first().cloned() else {
        return;
    };
    if let (Placement::Deal(indices), Some(Ok(_))) = (&p, &i.dealer) {
        match deal(i, indices, &first) {
            Ok(()) => return,
            // A socket still in the map of the program an earlier corral left on systemd's
            // group, until the kernel frees that map: the next placement puts it in.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::debug!("cannot deal connections on {addr} in turn yet: {e}")
            }
            Err(e) => tracing::warn!("cannot deal connections on {addr} in turn (eBPF): {e}"),
        }
    }
    let program = match p {
        Placement::Deal(mut indices) => {
            indices.truncate(MAX_EVEN);
            program(&indices)
        }
        Placement::Table(table) => source_program(&table),
    };
    match attach(&*first, &program) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!("cannot steer connections on {addr} (SO_ATTACH_REUSEPORT_CBPF): {e}")
        }
    }
}

/// The dealer's part of [`place`]: its socket map made the group's sockets (each keeps its key
/// while it stays), then the list of those to deal to.
fn deal(i: &mut Inner, indices: &[u32], first: &Rc<ListenSocket>) -> io::Result<()> {
    let Some(Ok(dealer)) = &i.dealer else {
        return Err(io::Error::other("no program"));
    };
    for k in 0..i.keys.len() {
        if let Some(s) = &i.keys[k] {
            if !i.order.iter().any(|o| Rc::ptr_eq(o, s)) {
                dealer.clear(k as u32);
                i.keys[k] = None;
            }
        }
    }
    for s in &i.order {
        if i.keys.iter().flatten().any(|k| Rc::ptr_eq(k, s)) {
            continue;
        }
        let free = match i.keys.iter().position(Option::is_none) {
            Some(k) => k,
            None if i.keys.len() < crate::ebpf::CAPACITY as usize => {
                i.keys.push(None);
                i.keys.len() - 1
            }
            None => {
                return Err(io::Error::other(
                    "more sockets than the program's map holds",
                ))
            }
        };
        dealer.put(free as u32, &**s)?;
        i.keys[free] = Some(s.clone());
    }
    let keys: Vec<u32> = indices
        .iter()
        .filter_map(|&x| {
            let s = i.order.get(x as usize)?;
            i.keys
                .iter()
                .position(|k| k.as_ref().is_some_and(|k| Rc::ptr_eq(k, s)))
        })
        .map(|k| k as u32)
        .collect();
    dealer.deal(&keys, i.dealt)?;
    i.dealt = keys.len() as u32;
    // Every time, as the classic program is: a group whose every socket left it (a lone
    // worker's shutdown, mended) is a new group in the kernel, with no program.
    dealer.attach(&**first)
}

fn load_dealer() -> Result<Dealer, (String, bool)> {
    Dealer::new().map_err(|e| (e.to_string(), e.raw_os_error() == Some(libc::EPERM)))
}

/// A socket shut down has left the dealer's map (the kernel's `bpf_sk_reuseport_detach`).
fn forget(i: &mut Inner, s: &Rc<ListenSocket>) {
    for k in i.keys.iter_mut() {
        if k.as_ref().is_some_and(|k| Rc::ptr_eq(k, s)) {
            *k = None;
        }
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
    forget(i, s);
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
pub(crate) mod tests {
    use super::*;

    impl Group {
        /// Whether connections wait in the worker's socket's queue.
        fn waiting(&self, worker: WorkerId) -> Option<bool> {
            waiting(&*self.socket_of(worker)?).ok()
        }

        /// [`Group::steer`] with the same workers for both kinds of balancing.
        fn steer_all(&self, workers: &[WorkerId], slots: u32) {
            self.steer(workers, workers, slots);
        }
    }

    #[test]
    fn programs_pick_only_among_the_serving_sockets_and_evenly() {
        let random = |random| Connection {
            random,
            source: [127, 0, 0, 1].into(),
        };
        assert_eq!(run(&program(&[]), &random(7)), ANY);
        assert_eq!(run(&program(&[3]), &random(12345)), 3);
        let p = program(&[4, 0, 2]);
        let mut counts = HashMap::new();
        for r in 0..3000u32 {
            *counts.entry(run(&p, &random(u32::MAX - r))).or_insert(0) += 1;
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
        let q = sockets.iter().map(accept_all).collect();
        drop(conns);
        q
    }

    /// Accepts what waits on `s`; how many.
    pub(crate) fn accept_all(s: &impl AsFd) -> u32 {
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
        let g = Group::bind("127.0.0.1:0".parse().unwrap(), 64, Balance::Even).unwrap();
        g.inner.borrow_mut().dealer = Some(Err(("left out by this test".into(), false)));
        steers_to_the_serving_workers(g, false);
    }

    #[test]
    fn an_even_group_with_the_ebpf_program_deals_in_turn_to_the_serving_workers() {
        let g = Group::bind("127.0.0.1:0".parse().unwrap(), 64, Balance::Even).unwrap();
        if let Some(why) = g.at_random() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        steers_to_the_serving_workers(g, true);
    }

    #[test]
    fn a_lone_socket_shut_down_and_listened_again_gets_the_program_back() {
        // A port of its own: one bound as port 0 would be let go of at the shutdown.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let g = Group::bind(([127, 0, 0, 1], port).into(), 64, Balance::Even).unwrap();
        if let Some(why) = g.at_random() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let addr = g.addr();
        let a = g.take(1, 0).unwrap();
        g.steer_all(&[1], 2);
        // The worker shuts its listener down: the kernel's group, and its program, go with
        // the last socket; corral listens again, which makes a new group.
        nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&*a),
            nix::sys::socket::Shutdown::Both,
        )
        .unwrap();
        assert!(g.relisten());
        let b = g.take(2, 1).unwrap();
        g.steer_all(&[2], 2);
        assert_eq!(queues_after(addr, 20, &[a, b]), [0, 20]);
    }

    fn steers_to_the_serving_workers(g: Rc<Group>, in_turn: bool) {
        let addr = g.addr();
        assert_ne!(addr.port(), 0);
        let a = g.take(1, 0).unwrap();
        let b = g.take(2, 1).unwrap();
        let c = g.take(3, 2).unwrap();
        let all = [a.clone(), b.clone(), c.clone()];
        g.steer_all(&[2], 3);
        assert_eq!(queues_after(addr, 5, &all), [0, 5, 0]);
        g.steer_all(&[1, 3], 3);
        let q = queues_after(addr, 40, &all);
        if in_turn {
            assert_eq!(q, [20, 0, 20]);
        } else {
            assert_eq!(q[1], 0, "{q:?}");
            assert!(q[0] > 5 && q[2] > 5 && q[0] + q[2] == 40, "{q:?}");
        }
        // Worker 1 leaves: socket c takes a's place in the kernel's order; the program follows.
        g.release(1, None);
        g.steer_all(&[3], 3);
        assert_eq!(queues_after(addr, 4, &all[1..]), [0, 4]);
        // A crashed worker's socket is kept for its slot, connections and all.
        g.steer_all(&[2], 3);
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

    /// The source hash, written plainly: what the program must compute.
    fn bucket_of(source: std::net::IpAddr) -> u32 {
        let words: Vec<u32> = match source {
            std::net::IpAddr::V4(a) => vec![u32::from(a)],
            std::net::IpAddr::V6(a) => a
                .octets()
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                .collect(),
        };
        let mut h = 0u32;
        for w in words {
            h = (h ^ w).wrapping_mul(GOLDEN);
        }
        (h ^ (h >> 16)) & (BUCKETS as u32 - 1)
    }

    #[test]
    fn the_source_program_hashes_every_byte_of_the_address() {
        let table: Vec<u32> = (0..BUCKETS as u32).map(|b| b * 3).collect();
        let p = source_program(&table);
        assert!(p.len() <= 4096);
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000u32 {
            let v4: std::net::IpAddr = std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919).into();
            let v6: std::net::IpAddr = std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                i as u16,
                0,
                0,
                (i >> 3) as u16,
                0,
                i as u16 ^ 0x55,
            )
            .into();
            for source in [v4, v6] {
                let got = run(&p, &Connection { random: i, source });
                assert_eq!(got, table[bucket_of(source) as usize], "{source}");
                seen.insert(got);
            }
        }
        assert!(
            seen.len() > BUCKETS * 8 / 10,
            "{} buckets reached",
            seen.len()
        );
        // Only the address counts: not the random number.
        let one = |random| {
            run(
                &p,
                &Connection {
                    random,
                    source: [192, 0, 2, 7].into(),
                },
            )
        };
        assert!((0..100).all(|r| one(r) == one(0)));
        assert!(p.len() <= 4096, "{}", p.len());
    }

    #[test]
    fn one_slot_more_moves_only_what_the_new_slot_takes() {
        for slots in [1u32, 2, 3, 4, 7, 8, 16, 63, 64, 127] {
            let b = BUCKETS as u32;
            let before: Vec<u32> = (0..b).map(|k| slot_of(k, slots)).collect();
            let after: Vec<u32> = (0..b).map(|k| slot_of(k, slots + 1)).collect();
            for (x, y) in before.iter().zip(&after) {
                assert!(x == y || *y == slots, "a bucket moved between old slots");
                assert!(*x < slots && *y <= slots);
            }
            let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
            // The new slot's fair share, give or take.
            let fair = b as usize / (slots as usize + 1);
            assert!(
                moved >= fair / 2 && moved <= fair * 2,
                "{slots}: {moved} of {b}, fair {fair}"
            );
            // Every slot gets buckets, none many more than its share.
            let mut per = vec![0usize; slots as usize + 1];
            for y in &after {
                per[*y as usize] += 1;
            }
            assert!(
                per.iter().all(|&n| n > 0 && n <= fair * 2),
                "{slots}: {per:?}"
            );
        }
    }

    /// Connects from `source` to `addr`: the index in `sockets` of the one that queued it.
    fn queued_on(
        source: std::net::Ipv4Addr,
        addr: SocketAddr,
        sockets: &[Rc<ListenSocket>],
    ) -> usize {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        c.connect(&addr.into()).unwrap();
        let got: Vec<usize> = sockets
            .iter()
            .enumerate()
            .filter(|(_, s)| accept_all(s) > 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got.len(), 1, "{source}: {got:?}");
        got[0]
    }

    #[test]
    fn source_balancing_keeps_a_client_on_its_slot_across_a_restart() {
        let g = Group::bind("127.0.0.1:0".parse().unwrap(), 64, Balance::Source).unwrap();
        let addr = g.addr();
        let mut sockets: Vec<Rc<ListenSocket>> =
            (0..4).map(|w| g.take(w, w as u32).unwrap()).collect();
        g.steer_all(&[0, 1, 2, 3], 4);
        let sources: Vec<std::net::Ipv4Addr> = (2..60)
            .map(|i| std::net::Ipv4Addr::new(127, 0, 0, i))
            .collect();
        let slot_of_source = |sockets: &[Rc<ListenSocket>]| -> Vec<usize> {
            sources
                .iter()
                .map(|s| queued_on(*s, addr, sockets))
                .collect()
        };
        let first = slot_of_source(&sockets);
        // What the program computes is what the kernel does: the bucket's slot's socket.
        for (s, &slot) in sources.iter().zip(&first) {
            assert_eq!(slot as u32, slot_of(bucket_of((*s).into()), 4), "{s}");
        }
        assert_eq!(
            first,
            slot_of_source(&sockets),
            "the same client, the same slot"
        );
        let mut per = [0; 4];
        first.iter().for_each(|&s| per[s] += 1);
        assert!(per.iter().all(|&n| n > 0), "{per:?}");
        // Slot 1's worker restarts: while it has none, its clients go to other slots, and
        // the others' stay where they were.
        g.release(1, Some(1));
        g.steer_all(&[0, 2, 3], 4);
        let during = slot_of_source(&sockets);
        for (a, b) in first.iter().zip(&during) {
            assert_ne!(*b, 1);
            if *a != 1 {
                assert_eq!(a, b);
            }
        }
        // Its next worker is slot 1 again: every client back where it was.
        sockets[1] = g.take(9, 1).unwrap();
        g.steer_all(&[0, 9, 2, 3], 4);
        assert_eq!(slot_of_source(&sockets), first);
        // A reload: a new worker of slot 2 beside the old one takes its clients.
        let new = g.take(10, 2).unwrap();
        g.steer_all(&[0, 9, 2, 3, 10], 4);
        sockets.push(new);
        let reloaded = slot_of_source(&sockets);
        for (a, b) in first.iter().zip(&reloaded) {
            assert_eq!(*b, if *a == 2 { 4 } else { *a });
        }
    }

    #[test]
    fn systemds_sockets_are_taken_in_the_kernels_order_even_after_one_moved() {
        // Four sockets as a socket unit makes them, then the second shut down and listened on
        // again, as a worker's shutdown(2) mended by corral leaves it: the kernel's order is
        // now a, d, c, b.
        let first = listen_socket("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let mut given = vec![Rc::new(ListenSocket::new(first.into()))];
        for _ in 0..3 {
            given.push(Rc::new(ListenSocket::new(
                listen_socket(addr, 64).unwrap().into(),
            )));
        }
        let b = socket2::SockRef::from(&*given[1]);
        b.shutdown(std::net::Shutdown::Both).unwrap();
        b.listen(64).unwrap();
        // A client came before corral, to the last socket.
        attach(&*given[0], &program(&[1])).unwrap();
        let early = std::net::TcpStream::connect(addr).unwrap();
        let g = Group::adopt(given.clone(), 64, Balance::Even).unwrap();
        let sockets: Vec<Rc<ListenSocket>> = (0..4).map(|w| g.take(w, w as u32).unwrap()).collect();
        // The first worker takes the socket where the early client waits.
        assert!(Rc::ptr_eq(&sockets[0], &given[3]));
        // The early client, and the probe that reached its queue: that one cannot be told
        // from the client's, and its worker reads an empty connection.
        assert_eq!(accept_all(&sockets[0]), 2);
        assert!(
            sockets[1..].iter().all(|s| accept_all(s) == 0),
            "no other probe is left"
        );
        drop(early);
        for w in 0..4 {
            g.steer_all(&[w], 4);
            let q = queues_after(addr, 3, &sockets);
            let mut want = [0; 4];
            want[w as usize] = 3;
            assert_eq!(q, want, "worker {w}");
        }
    }

    /// `n` sockets as a socket unit makes them: one group on one address.
    fn systemd_sockets(n: usize) -> (SocketAddr, Vec<Rc<ListenSocket>>) {
        let first = listen_socket("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let mut v = vec![Rc::new(ListenSocket::new(first.into()))];
        for _ in 1..n {
            v.push(Rc::new(ListenSocket::new(
                listen_socket(addr, 64).unwrap().into(),
            )));
        }
        (addr, v)
    }

    #[test]
    fn systemds_spare_socket_survives_a_crash_and_no_connection_waits_where_none_takes_it() {
        let (addr, given) = systemd_sockets(4);
        let g = Group::adopt(given.clone(), 64, Balance::Even).unwrap();
        // Before any worker: connections wait on the socket the first worker takes.
        let early = std::net::TcpStream::connect(addr).unwrap();
        let first = g.take(0, 0).unwrap();
        assert_eq!(accept_all(&first), 1);
        drop(early);
        let mut held: Vec<Rc<ListenSocket>> = vec![first];
        held.extend((1..3).map(|w| g.take(w, w as u32).unwrap()));
        g.steer_all(&[0, 1, 2], 3);
        // Slot 1 crashes; its next worker takes the socket it kept, and the spare stays spare.
        g.release(1, Some(1));
        held[1] = g.take(9, 1).unwrap();
        let spare = g.take(10, 0).unwrap();
        assert!(
            held.iter().all(|h| !Rc::ptr_eq(h, &spare)),
            "the spare, not a shared one"
        );
        g.release(10, None);
        // Every worker crashed: connections wait on the sockets the slots kept, never on the
        // spare, which no worker may take again.
        for w in [0, 9, 2] {
            g.release(w, Some(if w == 9 { 1 } else { w as u32 }));
        }
        g.steer_all(&[], 3);
        let mut all = held.clone();
        all.push(spare.clone());
        let q = queues_after(addr, 30, &all);
        assert_eq!(q[3], 0, "{q:?}");
        assert_eq!(q.iter().sum::<u32>(), 30, "{q:?}");
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_group_is_hashed_as_over_ipv4() {
        let g = Group::bind("[::]:0".parse().unwrap(), 64, Balance::Source).unwrap();
        let port = g.addr().port();
        let sockets: Vec<Rc<ListenSocket>> = (0..3).map(|w| g.take(w, w as u32).unwrap()).collect();
        g.steer_all(&[0, 1, 2], 3);
        let target: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port).into();
        for i in 2..30u8 {
            let source = std::net::Ipv4Addr::new(127, 0, 0, i);
            let got = queued_on(source, target, &sockets);
            assert_eq!(got as u32, slot_of(bucket_of(source.into()), 3), "{source}");
        }
    }
}
