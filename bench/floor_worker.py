"""The floor's Python side: one function call per line on a Unix socket.

`python floor_worker.py SOCKET sync|async` listens on SOCKET, prints one line
once it does, and answers every line it reads (a request body,
`{"input": {...}}`) with one line: a succeeded prediction holding the
function's result. `sync` calls a plain function, `async` awaits a coroutine
that yields to the event loop once, like bench/models/async_sleep0. Started by
`cogd-floor`; see bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import sys


def greet(name: str = "world") -> str:
    return f"hello, {name}"


async def greet_async(name: str = "world") -> str:
    await asyncio.sleep(0)
    return f"hello, {name}"


async def serve(path: str, mode: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            inputs = json.loads(line).get("input") or {}
            output = await greet_async(**inputs) if mode == "async" else greet(**inputs)
            writer.write(json.dumps({"status": "succeeded", "output": output}).encode() + b"\n")
            await writer.drain()

    server = await asyncio.start_unix_server(handle, path)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
