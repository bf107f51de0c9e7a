"""An ASGI app as uvicorn and hypercorn users write one: nothing in it knows about corral.

Importing it takes APP_IMPORT_SECONDS (default 0), as a large app's imports do; a server that
imports it is not ready before that. GET / answers {"pid", "ppid"} at once. GET /slow?s=N sends
the status and headers (with X-Pid and X-Ppid) at once and the body N seconds later, so a test
knows the request is in flight, and where, and can see that it completes.
"""

import asyncio
import json
import os
import time

time.sleep(float(os.environ.get("APP_IMPORT_SECONDS", "0")))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid()}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-pid", str(os.getpid()).encode()),
        (b"x-ppid", str(os.getppid()).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/slow":
        seconds = float(dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p).get("s", "1"))
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await asyncio.sleep(seconds)
    await send({"type": "http.response.body", "body": body})
