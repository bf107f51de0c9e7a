//! A worker written the way Rust servers are written for systemd: tokio, the `listenfd` crate for
//! the socket systemd (or corral) passes, and the `sd-notify` crate for `READY=1`,
//! `WATCHDOG=1` and `STOPPING=1`. Nothing in it knows about corral.
//!
//! ```text
//! cargo build --release --example listenfd_worker
//! # in the app config:  command = ["/path/to/target/release/examples/listenfd_worker"]
//! ```
//!
//! `GET /` answers `{"pid": ..}` at once; `GET /slow?s=N` sends the headers (with `X-Pid`) at once and the body
//! N seconds later. On SIGTERM it stops accepting, finishes the requests in flight and exits 0.

use std::time::Duration;

use listenfd::ListenFd;
use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve())
}

async fn serve() -> std::io::Result<()> {
    let std_listener = ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or_else(|| std::io::Error::other("no socket passed at fd 3 (LISTEN_FDS)"))?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let mut term = signal(SignalKind::terminate())?;
    sd_notify::notify(&[NotifyState::Ready])?;
    // sd_watchdog_enabled(3): ping at half the interval corral asked for, if it asked.
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .unwrap_or(Duration::from_secs(3600)),
    );
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((conn, _)) = accepted {
                    in_flight.spawn(answer(conn));
                }
            }
            _ = watchdog.tick() => {
                if sd_notify::watchdog_enabled().is_some() {
                    sd_notify::notify(&[NotifyState::Watchdog])?;
                }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = term.recv() => break,
        }
    }
    sd_notify::notify(&[NotifyState::Stopping])?;
    drop(listener);
    while in_flight.join_next().await.is_some() {}
    Ok(())
}

async fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let body = format!(
        "{{\"pid\":{},\"ppid\":{}}}",
        std::process::id(),
        std::os::unix::process::parent_id()
    );
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-Pid: {}\r\nX-Ppid: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        std::process::id(),
        std::os::unix::process::parent_id()
    );
    conn.write_all(head.as_bytes()).await?;
    if let Some(query) = target.strip_prefix("/slow") {
        let seconds: f64 = query
            .trim_start_matches('?')
            .split('&')
            .find_map(|p| p.strip_prefix("s="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
