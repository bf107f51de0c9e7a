#!/usr/bin/env python3
"""The test worker: a tiny HTTP server that knows only systemd's conventions.

It serves on the socket at fd 3 (sd_listen_fds(3)) and speaks sd_notify(3) on NOTIFY_SOCKET,
exactly as under systemd, so the tests prove that corral gives workers what systemd would.
Every answer is a JSON description of the worker (pid, slot, generation, LISTEN_* variables,
open fds), which is what the tests check.

Behaviour is chosen through the environment, so a config's [environment] (and a reload to a
new config) can change it:
  WORKER_TAG             included in every answer (to tell generations apart)
  WORKER_READY_DELAY     seconds to wait before READY=1 (default 0)
  WORKER_NEVER_READY=1   never send READY=1
  WORKER_READY_FROM_CHILD=1  a forked child sends READY=1 (corral hears a worker's whole tree)
  WORKER_READY_FIFO=PATH  write "ready" to this FIFO instead of sending READY=1 (for a shell
                         wrapper that then says it with systemd-notify)
  WORKER_LISTEN_ANY_PID=1  take the listeners at fd 3.. even though LISTEN_PID names another
                         process (the shell wrapper that started this one)
  WORKER_EXIT_AFTER      seconds after start to exit with WORKER_EXIT_CODE (default 3)
  WORKER_STATUS          sent as STATUS= once ready
  WORKER_WATCHDOG=1      send WATCHDOG=1 every WATCHDOG_USEC/2
  WORKER_IGNORE_TERM=1   ignore SIGTERM
  WORKER_SAY             a line printed on stdout at start; WORKER_SAY_ERR the same on stderr
                         ("{slot}" in them becomes the slot number)
  WORKER_SAY_LONG=N      a line of N "L"s on stdout at start
  WORKER_SAY_BINARY=1    a line that is not UTF-8 on stdout at start
  (SIGUSR1 and SIGUSR2 print "slot N got SIGUSR1" on stdout.)
  WORKER_ALLOC_MB=N      hold N MiB of memory (resident) for its whole life
  WORKER_CHILD_ALLOC_MB=N  start a child process that holds N MiB for the worker's whole life
  WORKER_SELECTOR=poll   wait for connections with poll(2) instead of the default (epoll)
  WORKER_EXTEND_USEC=N   send EXTEND_TIMEOUT_USEC=N at start
  WORKER_ORPHANS=1       leave behind `sleep 3602`, an orphan in a session of its own, with a
                         child `sleep 3601` in yet another session
  WORKER_BUS=1           greet the agent over corral's bus (CORRAL_BUS) and keep what comes;
                         answers show it ("bus"); GET /bus-flood?n=N&size=S sends N messages
                         of S bytes of data to every worker as fast as it can
  WORKER_BUS_DEAF_SLOT=N  that slot's worker registers on the bus but never reads it
Paths: GET /crash answers, then exits with code 3; GET /hang stops watchdog pings; GET /slow?s=N
sends the status and headers (with X-Pid, X-Ppid) at once and the body N seconds later;
GET /shutdown-listener calls shutdown(2) on the (shared) listeners, and lives on.
A connection that starts with "HOLD\n" is answered "HELD\n" at once, then read as usual: the
tests use it to know a worker has taken (and is busy with) that connection.
"""

import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

START = time.monotonic()
env = os.environ


def notify(msg: str) -> None:
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg.encode(), addr)


def open_fds() -> list:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory listing's own fd, already closed
        if target.startswith("/proc/") and target.endswith("/fd"):
            continue
        fds.append(int(name))
    return sorted(fds)


FDS_AT_START = open_fds()
stopping = False
hung = False
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)


def on_term(_sig, _frame):
    global stopping
    stopping = True
    try:
        os.write(wake_w, b"x")
    except OSError:
        pass


def on_usr(sig, _frame):
    # For `corral signal`: say which signal this slot got.
    print(f"slot {env.get('CORRAL_WORKER')} got {signal.Signals(sig).name}", flush=True)


signal.signal(signal.SIGUSR1, on_usr)
signal.signal(signal.SIGUSR2, on_usr)

if env.get("WORKER_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)

# Memory that counts in RSS: bytes filled with non-zero data touch every page.
BALLAST = b"\x01" * (int(env.get("WORKER_ALLOC_MB", "0")) << 20)

if env.get("WORKER_ORPHANS") == "1":
    # Double fork into a session of its own: the worker's process group and parent are both
    # left behind, so only corral being a subreaper can still find these.
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sh", ["sh", "-c", "setsid sleep 3601 & exec sleep 3602"])
        os._exit(0)
    os.waitpid(first, 0)

if env.get("WORKER_CHILD_ALLOC_MB"):
    # A child of the worker's, in its process group, holding memory until the worker is gone.
    held_r, held_w = os.pipe()
    if os.fork() == 0:
        os.close(held_w)
        child_ballast = b"\x01" * (int(env["WORKER_CHILD_ALLOC_MB"]) << 20)
        os.read(held_r, 1)
        os._exit(0)
    os.close(held_r)

if env.get("WORKER_SAY_LONG"):
    print("L" * int(env["WORKER_SAY_LONG"]), flush=True)
if env.get("WORKER_SAY_BINARY") == "1":
    sys.stdout.buffer.write(b"binary \xff\xfe junk\n")
    sys.stdout.buffer.flush()
# "{slot}" in these lines becomes the worker's slot.
if env.get("WORKER_SAY"):
    print(env["WORKER_SAY"].replace("{slot}", env.get("CORRAL_WORKER", "")), flush=True)
if env.get("WORKER_SAY_ERR"):
    print(env["WORKER_SAY_ERR"].replace("{slot}", env.get("CORRAL_WORKER", "")), file=sys.stderr, flush=True)


BUS_IN = []
BUS = None


def bus_loop() -> None:
    """corral's bus: an autobound datagram socket (unix(7)); what is sent from it is answered
    to it."""
    while True:
        BUS_IN.append(json.loads(BUS.recv(70000)))


def bus_send(to, data) -> None:
    BUS.sendto(json.dumps({"to": to, "data": data}).encode(), env["CORRAL_BUS"])


def capabilities() -> dict:
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k.startswith("Cap")}


def describe() -> dict:
    return {
        "pid": os.getpid(),
        "slot": env.get("CORRAL_WORKER"),
        "generation": env.get("CORRAL_GENERATION"),
        "app": env.get("CORRAL_APP"),
        "tag": env.get("WORKER_TAG"),
        "listen_pid": env.get("LISTEN_PID"),
        "listen_fds": env.get("LISTEN_FDS"),
        "listen_fdnames": env.get("LISTEN_FDNAMES"),
        "notify_socket": env.get("NOTIFY_SOCKET"),
        # Which socket this worker's fd 3 is (its inode): shared, or its own.
        "listen_inode": os.fstat(3).st_ino if env.get("LISTEN_FDS") else None,
        # The capability sets it runs with (hex, as proc(5) shows them).
        "capabilities": capabilities(),
        "watchdog_usec": env.get("WATCHDOG_USEC"),
        "watchdog_pid": env.get("WATCHDOG_PID"),
        "bus": list(BUS_IN),
        "fds": FDS_AT_START,
        "env": sorted(env.keys()),
    }


def watchdog_loop(every: float) -> None:
    while not hung:
        notify("WATCHDOG=1")
        time.sleep(every)


def later(seconds: float, fn) -> None:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()


def get_ready() -> None:
    if env.get("WORKER_EXTEND_USEC"):
        notify("EXTEND_TIMEOUT_USEC=" + env["WORKER_EXTEND_USEC"])
    if env.get("WORKER_READY_FROM_CHILD") == "1":
        # A child says it (corral hears a worker's whole tree). It stays until the worker
        # exits, so that corral can see whose child it is when it reads the datagram.
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(w)
            notify("READY=1")
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        return
    if env.get("WORKER_NEVER_READY") == "1":
        return
    if env.get("WORKER_READY_FIFO"):
        with open(env["WORKER_READY_FIFO"], "w") as fifo:
            fifo.write("ready\n")
        return
    delay = float(env.get("WORKER_READY_DELAY", "0"))
    if delay:
        time.sleep(delay)
    # One datagram, as sd_notify(3) allows: the status is there as soon as the worker is ready.
    if env.get("WORKER_STATUS"):
        notify("READY=1\nSTATUS=" + env["WORKER_STATUS"])
    else:
        notify("READY=1")


def serve(listeners: list) -> None:
    global hung
    sel = selectors.PollSelector() if env.get("WORKER_SELECTOR") == "poll" else selectors.DefaultSelector()
    for listener in listeners:
        sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while not stopping:
        for key, _ in sel.select():
            if key.fileobj is wake_r or stopping:
                continue
            try:
                conn, _ = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                # The listener was shut down (GET /shutdown-listener): it polls readable and
                # accept fails until it listens again. Live on, and look again a little later.
                time.sleep(0.01)
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    if data == b"HOLD\n":
                        # The test's handshake: say at once that this worker took the
                        # connection (and is now busy with it), then read the request.
                        conn.sendall(b"HELD\n")
                        data = b""
                path = data.split(b" ", 2)[1].decode() if data.count(b" ") >= 2 else "/"
                body = json.dumps(describe()).encode()
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\nConnection: close\r\n" % len(body)
                    + b"X-Pid: %d\r\nX-Ppid: %d\r\n\r\n" % (os.getpid(), os.getppid())
                )
                if path.startswith("/bus-flood"):
                    q = dict(p.split("=") for p in path.partition("?")[2].split("&") if "=" in p)
                    pad = "x" * int(q.get("size", "0"))
                    for i in range(int(q.get("n", "1"))):
                        try:
                            bus_send("all", {"flood": i, "pad": pad})
                        except OSError:
                            pass
                if path.startswith("/slow"):
                    conn.sendall(head)
                    time.sleep(float(path.partition("s=")[2] or "1"))
                    conn.sendall(body)
                else:
                    conn.sendall(head + body)
            if path == "/crash":
                os._exit(3)
            if path == "/hang":
                hung = True
            if path == "/shutdown-listener":
                for listener in listeners:
                    listener.shutdown(socket.SHUT_RDWR)


def main() -> None:
    if env.get("WORKER_EXIT_AFTER"):
        code = int(env.get("WORKER_EXIT_CODE", "3"))
        later(float(env["WORKER_EXIT_AFTER"]), lambda: os._exit(code))
    usec = env.get("WATCHDOG_USEC")
    if env.get("WORKER_WATCHDOG") == "1" and usec:
        threading.Thread(target=watchdog_loop, args=(int(usec) / 2e6,), daemon=True).start()
    listeners = []
    ours = env.get("LISTEN_PID") == str(os.getpid()) or env.get("WORKER_LISTEN_ANY_PID") == "1"
    if ours:
        for i in range(int(env.get("LISTEN_FDS", "0"))):
            listener = socket.socket(fileno=3 + i)
            # Every worker shares these sockets' file descriptions: several wake for one
            # connection, one accepts it, the others must not block in accept().
            listener.setblocking(False)
            listeners.append(listener)
    if env.get("WORKER_BUS") == "1":
        global BUS
        BUS = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        BUS.bind("")
        bus_send("agent", {"hello": int(env["CORRAL_WORKER"])})
        if env.get("WORKER_BUS_DEAF_SLOT") != env["CORRAL_WORKER"]:
            threading.Thread(target=bus_loop, daemon=True).start()
    get_ready()
    if not listeners:
        while not stopping:
            sel = selectors.DefaultSelector()
            sel.register(wake_r, selectors.EVENT_READ)
            sel.select()
        return
    serve(listeners)


main()
