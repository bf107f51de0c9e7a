//! Dealing new connections out in turn over a `SO_REUSEPORT` group: an eBPF `SK_REUSEPORT`
//! program, a socket map and a counter (bpf(2), bpf-helpers(7) `bpf_sk_select_reuseport`).
//!
//! Classic BPF (balance.rs) has no memory from one connection to the next, so its "even" is
//! random: 16 keep-alive connections over 4 workers land 7/5/3/1 as often as 4/4/4/4. An eBPF
//! program can count. Loading one takes CAP_BPF in the host's user namespace
//! (`kernel.unprivileged_bpf_disabled`, bpf(2)); corral asks for it only for apps with an even
//! listener (the generator's drop-in), and where it is not given, balance.rs stays random and
//! `corral status` says why.
//!
//! This module and spawn.rs are the only `unsafe` in corral: nix, socket2 and libc give no safe
//! bpf(2), and the crates that do (libbpf-rs, aya) load compiled ELF objects through a C
//! library or a BPF toolchain, for a program of 39 instructions.
//!
//! The program reads a table in an array map: entry 0 counts connections, entry 1 is how many
//! sockets take new ones (n), entries 2.. are their keys in the socket map. Connection c goes to
//! the socket at key `table[2 + c % n]`; with n = 0, or a key with no socket (it just left the
//! group), the kernel chooses as it would without a program (`SK_PASS` without a selection).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

// linux/bpf.h: commands, map and program types, attach types, helpers.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT: u32 = 39;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_SK_SELECT_REUSEPORT: i32 = 82;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const SK_PASS: i32 = 1;

// Instruction classes and operations (linux/bpf_common.h, linux/bpf.h).
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const ATOMIC_W: u8 = 0xc3; // BPF_STX | BPF_ATOMIC | BPF_W
const ATOMIC_FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const ADD64_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const ADD32_K: u8 = 0x04; // BPF_ALU | BPF_ADD | BPF_K
const MOD32_X: u8 = 0x9c; // BPF_ALU | BPF_MOD | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// One eBPF instruction (linux/bpf.h `struct bpf_insn`), as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    /// dst_reg:4, src_reg:4, bit fields in the order of the target's byte order.
    regs: u8,
    off: i16,
    imm: i32,
}

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    let regs = if cfg!(target_endian = "little") {
        dst | (src << 4)
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// `r1 = the map whose fd is fd`: two instructions.
fn ld_map(dst: u8, fd: &OwnedFd) -> [Insn; 2] {
    [
        ins(LD_IMM64, dst, BPF_PSEUDO_MAP_FD, 0, fd.as_raw_fd()),
        ins(0, 0, 0, 0, 0),
    ]
}

/// The most sockets a group deals among: the table's length less its two counters.
pub const CAPACITY: u32 = 4096;

/// A loaded program with its two maps, for one group.
pub struct Dealer {
    program: OwnedFd,
    sockets: OwnedFd,
    table: OwnedFd,
}

impl Dealer {
    /// Loads the program; fails without CAP_BPF (EPERM), or on a kernel before Linux 5.12
    /// (atomic fetch-and-add; `SK_REUSEPORT` programs came in 4.19), or, before 5.11, where
    /// maps are charged to a RLIMIT_MEMLOCK too low for them (EPERM too).
    pub fn new() -> io::Result<Dealer> {
        let sockets = map_create(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 4, CAPACITY)?;
        let table = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, CAPACITY + 2)?;
        let program = prog_load(&instructions(&sockets, &table))?;
        Ok(Dealer {
            program,
            sockets,
            table,
        })
    }

    /// Its program and maps, for an upgrade in place (carry.rs): the group keeps the program
    /// attached across the exec, and the next image goes on with the same maps.
    pub fn carry(&self, carry: &mut crate::carry::Carry) -> io::Result<[i32; 3]> {
        Ok([
            carry.fd(&self.program)?,
            carry.fd(&self.sockets)?,
            carry.fd(&self.table)?,
        ])
    }

    /// The dealer an earlier image carried.
    pub fn adopt([program, sockets, table]: [OwnedFd; 3]) -> Dealer {
        Dealer {
            program,
            sockets,
            table,
        }
    }

    /// Makes this program the group's (replacing a classic one): through any socket of it.
    pub fn attach(&self, socket: &impl AsFd) -> io::Result<()> {
        let fd: libc::c_int = self.program.as_raw_fd();
        // SAFETY: setsockopt(2) reads an int from a pointer to a live local of that size.
        let r = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_EBPF,
                std::ptr::from_ref(&fd).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Puts a listening socket of the group at `key` of the socket map. A socket leaves the
    /// map by itself when it leaves the group (shut down or closed everywhere).
    pub fn put(&self, key: u32, socket: &impl AsFd) -> io::Result<()> {
        let fd = socket.as_fd().as_raw_fd() as u32;
        map_update(&self.sockets, key, fd)
    }

    /// Empties `key` of the socket map (nothing there is not an error).
    pub fn clear(&self, key: u32) {
        let _ = map_delete(&self.sockets, key);
    }

    /// New connections go in turn to the sockets at these keys of the socket map; none: the
    /// kernel's choice. The count is written last when the list grows and first when it
    /// shrinks, so that the program never reads past what is written.
    pub fn deal(&self, keys: &[u32], before: u32) -> io::Result<()> {
        let n = keys.len().min(CAPACITY as usize) as u32;
        if n < before {
            map_update(&self.table, 1, n)?;
        }
        for (i, &k) in keys.iter().take(n as usize).enumerate() {
            map_update(&self.table, 2 + i as u32, k)?;
        }
        if n >= before {
            map_update(&self.table, 1, n)?;
        }
        Ok(())
    }
}

/// The program (see the module's documentation).
fn instructions(sockets: &OwnedFd, table: &OwnedFd) -> Vec<Insn> {
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    const R6: u8 = 6;
    const R7: u8 = 7;
    const R8: u8 = 8;
    const R9: u8 = 9;
    const FP: u8 = 10;
    // r0 = &table[key at fp-4], the key stored before; lookup clobbers r1-r5.
    let lookup = |p: &mut Vec<Insn>| {
        p.extend(ld_map(R1, table));
        p.push(ins(MOV64_X, R2, FP, 0, 0));
        p.push(ins(ADD64_K, R2, 0, 0, -4));
        p.push(ins(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM));
    };
    // The offsets to the end are patched once the program is whole.
    const TO_PASS: i16 = i16::MIN;
    let mut p = vec![ins(MOV64_X, R6, R1, 0, 0), ins(ST_W, FP, 0, -4, 1)];
    lookup(&mut p);
    p.push(ins(JEQ_K, R0, 0, TO_PASS, 0));
    p.push(ins(LDX_W, R7, R0, 0, 0)); // n
    p.push(ins(JEQ_K, R7, 0, TO_PASS, 0));
    p.push(ins(ST_W, FP, 0, -4, 0));
    lookup(&mut p);
    p.push(ins(JEQ_K, R0, 0, TO_PASS, 0));
    p.push(ins(MOV64_K, R8, 0, 0, 1));
    p.push(ins(ATOMIC_W, R0, R8, 0, ATOMIC_FETCH_ADD)); // r8 = count++
    p.push(ins(MOD32_X, R8, R7, 0, 0));
    p.push(ins(ADD32_K, R8, 0, 0, 2));
    p.push(ins(STX_W, FP, R8, -4, 0));
    lookup(&mut p);
    p.push(ins(JEQ_K, R0, 0, TO_PASS, 0));
    p.push(ins(LDX_W, R9, R0, 0, 0)); // the socket's key
    p.push(ins(STX_W, FP, R9, -8, 0));
    p.push(ins(MOV64_X, R1, R6, 0, 0));
    p.extend(ld_map(R2, sockets));
    p.push(ins(MOV64_X, R3, FP, 0, 0));
    p.push(ins(ADD64_K, R3, 0, 0, -8));
    p.push(ins(MOV64_K, R4, 0, 0, 0));
    p.push(ins(CALL, 0, 0, 0, BPF_FUNC_SK_SELECT_REUSEPORT));
    let pass = p.len();
    p.push(ins(MOV64_K, R0, 0, 0, SK_PASS));
    p.push(ins(EXIT, 0, 0, 0, 0));
    for (at, i) in p.iter_mut().enumerate() {
        if i.code == JEQ_K && i.off == TO_PASS {
            i.off = (pass - at - 1) as i16;
        }
    }
    p
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised `union bpf_attr` prefix for cmd, of the size given;
    // the kernel zero-fills what it knows past it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new fd the kernel returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned this fd for a new object (O_CLOEXEC): nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

fn map_create(map_type: u32, key_size: u32, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut attr = Attr {
        map_type,
        key_size,
        value_size,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: *b"corral\0\0\0\0\0\0\0\0\0\0",
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn map_update(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0, // BPF_ANY
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn map_delete(map: &OwnedFd, key: u32) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: 0,
        flags: 0,
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

fn prog_load(program: &[Insn]) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = Attr {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"corral_deal\0\0\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        // The verifier refused it: load again for its reasons (a bug of corral's).
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            match again {
                Ok(fd) => Ok(owned(fd)),
                Err(_) => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the verifier: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ),
                )),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::accept_all;
    use std::net::{SocketAddr, TcpStream};

    fn group(n: usize) -> (SocketAddr, Vec<socket2::Socket>) {
        let mut v: Vec<socket2::Socket> = Vec::new();
        let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for _ in 0..n {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.listen(128).unwrap();
            addr = s.local_addr().unwrap().as_socket().unwrap();
            v.push(s);
        }
        (addr, v)
    }

    #[test]
    fn connections_are_dealt_in_turn_to_the_sockets_listed() {
        let dealer = match Dealer::new() {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIPPED: loading an eBPF program needs CAP_BPF ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let (addr, socks) = group(5);
        for (k, s) in socks.iter().enumerate() {
            dealer.put(k as u32 * 10, s).unwrap();
        }
        dealer.attach(&socks[0]).unwrap();
        // Four of the five, in an order of their own.
        dealer.deal(&[30, 0, 20, 40], 0).unwrap();
        let _conns: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let got: Vec<u32> = socks.iter().map(accept_all).collect();
        assert_eq!(got, vec![4, 0, 4, 4, 4]);
        // One fewer: the others share what it had.
        dealer.deal(&[0, 20, 40], 4).unwrap();
        let _more: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let got: Vec<u32> = socks.iter().map(accept_all).collect();
        assert_eq!(got, vec![4, 0, 4, 0, 4]);
    }
}
