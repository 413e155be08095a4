"""The request-size limit, enforced on the bytes as they arrive, before any of them is parsed."""

from __future__ import annotations

import json


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 and is never read in full.

    ``Content-Length`` is checked first; a chunked body (no length) is counted while it streams and cut
    off at the limit, so neither a big upload nor a lying client can fill memory or the temp folder."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.refuse(send)
        received = 0
        over = started = False

        async def counted():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise TooLarge
            return message

        async def tracked(message):
            # the form parser turns any error while reading into its own 400: answer 413 instead
            nonlocal started
            if over:
                if not started:
                    started = True
                    await self.refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge:
            if not started:
                await self.refuse(send)

    async def refuse(self, send):
        megabytes = self.limit / 2**20
        body = json.dumps({"error": f"the request is larger than the {megabytes:g} MB upload limit "
                                    f"(shitu serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class TooLarge(Exception):
    """Raised inside the app's ``receive`` once the body passes the limit."""
