#!/usr/bin/env python3
"""A socket-activated HTTP server: runs unchanged under systemd or corral.

It takes its listening socket from fd 3 (LISTEN_FDS, sd_listen_fds(3)), says READY=1 on
NOTIFY_SOCKET (sd_notify(3)) once it can serve, and finishes its requests on SIGTERM.
"""
import http.server
import os
import signal
import socket
import threading


def sd_notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "hello from worker {} (pid {}, generation {})\n".format(
            os.environ.get("CORRAL_WORKER", "-"), os.getpid(), os.environ.get("CORRAL_GENERATION", "-")
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line per request on stdout, into corral's log
        print(fmt % args, flush=True)


if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    raise SystemExit("expected one socket from systemd or corral (LISTEN_FDS=1)")
server = http.server.HTTPServer(("", 0), Hello, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
# Every worker shares this socket: several wake up for one connection and one gets it. In
# non-blocking mode the others go back to waiting instead of hanging in accept() (where SIGTERM
# could not reach the shutdown below).
server.socket.setblocking(False)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
sd_notify("READY=1")
server.serve_forever()
