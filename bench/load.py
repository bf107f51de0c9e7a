#!/usr/bin/env python3
"""Load for the benchmarks: THREADS clients, each doing one new connection per request
(GET /, Connection: close) against 127.0.0.1:PORT until SIGTERM or SECONDS pass. Prints
`ok failed seconds` on exit."""
import signal
import socket
import sys
import threading
import time

port, threads, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
counts = [[0, 0] for _ in range(threads)]


def client(c):
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            c[0 if data.startswith(b"HTTP/1.1 200") else 1] += 1
        except OSError:
            c[1] += 1


start = time.monotonic()
ts = [threading.Thread(target=client, args=(c,), daemon=True) for c in counts]
for t in ts:
    t.start()
stop.wait(seconds)
stop.set()
for t in ts:
    t.join()
print(sum(c[0] for c in counts), sum(c[1] for c in counts), round(time.monotonic() - start, 2))
