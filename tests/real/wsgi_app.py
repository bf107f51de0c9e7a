"""A WSGI app as gunicorn users write one: nothing in it knows about corral.

GET / answers {"pid", "ppid"} at once. GET /slow?s=N sends the status, the headers (with X-Pid
and X-Ppid) and a first byte of the body at once (WSGI sends headers with the first byte), and
the rest N seconds later.
"""

import json
import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid()}).encode()
    slow = environ.get("PATH_INFO") == "/slow"
    first = b" " if slow else b""
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(first) + len(body))),
            ("X-Pid", str(os.getpid())),
            ("X-Ppid", str(os.getppid())),
        ],
    )
    if not slow:
        return [body]
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])

    def chunks():
        yield first
        time.sleep(seconds)
        yield body

    return chunks()
