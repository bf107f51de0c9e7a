#!/usr/bin/env python3
"""The test agent: what an app runs once beside its workers (corral's [agent]).

It says READY=1 on NOTIFY_SOCKET (sd_notify(3)), prints a line on its standard output, and runs
its "scheduled job" every 50 ms: a line "job PID" appended to the file AGENT_LOG, which the
tests read to count who ran the job and when. On SIGTERM it writes "stop PID" there and exits.
  AGENT_LOG         the file (required)
  AGENT_TAG         printed at start, to tell configs apart
  AGENT_BUS=1       on corral's bus (CORRAL_BUS): a worker's {"hello": N} is written to the
                    log as "hello N from N", answered to that process with {"welcome": N} and
                    told every worker as {"greeted": N} and one ready worker ("any") as
                    {"share": N}; {"flood": i} is written as "flood"
"""

import json
import os
import signal
import threading
import socket
import sys
import time

env = os.environ
log = env["AGENT_LOG"]


def write(line: str) -> None:
    with open(log, "a") as f:
        f.write(line + "\n")


def notify(msg: str) -> None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), addr)


def stop(*_):
    write(f"stop {os.getpid()}")
    sys.exit(0)


def bus_loop(s):
    bus = env["CORRAL_BUS"]
    while True:
        m = json.loads(s.recv(70000))
        data = m.get("data") or {}
        if "hello" in data:
            write(f"hello {data['hello']} from {m['from']}")
            # To the very process that said hello (by its pid), whatever its slot's state.
            answer = {"to": {"pid": m["pid"]}, "data": {"welcome": m["from"]}}
            s.sendto(json.dumps(answer).encode(), bus)
            s.sendto(json.dumps({"to": "all", "data": {"greeted": m["from"]}}).encode(), bus)
            s.sendto(json.dumps({"to": "any", "data": {"share": m["from"]}}).encode(), bus)
        elif "flood" in data:
            write("flood")


signal.signal(signal.SIGTERM, stop)
if env.get("AGENT_BUS") == "1":
    bus_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bus_socket.bind("")  # autobind: corral answers to this address
    # Registered before READY=1: the workers, which start then, greet it at once.
    bus_socket.sendto(b"{}", env["CORRAL_BUS"])
    threading.Thread(target=bus_loop, args=(bus_socket,), daemon=True).start()
write(f"start {os.getpid()}")
print(f"agent {env.get('AGENT_TAG', '')} as {env.get('CORRAL_WORKER')}", flush=True)
notify("READY=1")
while True:
    write(f"job {os.getpid()}")
    time.sleep(0.05)
