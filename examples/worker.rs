//! A socket-activated worker in Rust with only the standard library: it serves on the socket
//! corral (or systemd) passed at fd 3 and says `READY=1` on `NOTIFY_SOCKET`.
//!
//! ```text
//! cargo build --release --example worker
//! # in the app config:  command = ["/path/to/target/release/examples/worker"]
//! ```

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

fn sd_notify(msg: &str) -> std::io::Result<()> {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    // sd_listen_fds(3): the variables are ours only if LISTEN_PID is our pid.
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !ours || n < 1 {
        eprintln!("expected a socket from systemd or corral (LISTEN_FDS)");
        std::process::exit(1);
    }
    // SAFETY: fd 3 was passed to this process to own (LISTEN_FDS), nothing else refers to it.
    let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(3) });
    let slot = std::env::var("CORRAL_WORKER").unwrap_or_else(|_| "-".into());
    sd_notify("READY=1\nSTATUS=serving")?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf)?;
        let body = format!("hello from worker {slot} (pid {})\n", std::process::id());
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}
