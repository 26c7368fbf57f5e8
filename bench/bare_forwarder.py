"""The floor meter is measured against: a raw ASGI app that forwards POST /v1/messages with one
aiohttp session and the operator key, served by the same uvicorn settings as meter (uvloop,
httptools, no access log, no proxy-headers middleware, no Server or Date header). No auth, no
limits, no metering, no metrics.

    python -m bench.bare_forwarder --port 8200 --upstream http://127.0.0.1:8100 --api-key sk-…
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


def forwarder(upstream: str, api_key: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=60)
                    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/readyz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        assert session is not None
        async with session.post(upstream + scope["path"], data=body, headers=headers) as reply:
            await send({
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(b"content-type", reply.headers.get("content-type", "application/json").encode())],
            })  # fmt: skip
            async for chunk in reply.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    app = forwarder(args.upstream.rstrip("/"), args.api_key)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning", lifespan="on", proxy_headers=False, server_header=False,
                date_header=False)  # fmt: skip


if __name__ == "__main__":
    main()
