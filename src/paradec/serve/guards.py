"""ASGI gates in front of the app: the Host header, the API key, the size of the request body.

Plain ASGI (not BaseHTTPMiddleware), so streaming and disconnect detection pass through untouched.
Each one answers a refused request itself, in the OpenAI error shape, before the app sees it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from .errors import APIError


def host_name(value: str) -> str:
    """The host of a Host header (or of an allowed-hosts entry), lower case, without port or brackets.

    ``"LocalHost:8000"`` → ``"localhost"``, ``"[::1]:8000"`` → ``"::1"``, ``"::1"`` → ``"::1"``.
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.split(":")[0]
    return value.rstrip(".")  # "localhost." is the same name


class CheckHost:
    """Answer only requests whose ``Host`` header names this server.

    DNS rebinding: a web page on ``attacker.example`` re-points that name at 127.0.0.1, and the
    visitor's browser then sends it requests to a keyless loopback server, reading the answers as
    same-origin. Those requests carry ``Host: attacker.example``, which is not on the list.
    """

    def __init__(self, app, allowed: Iterable[str]):
        self.app = app
        allowed = list(allowed)
        self.any = "*" in allowed
        self.allowed = {host_name(h) for h in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                error = APIError(
                    400, "the Host header does not name this server (see --allowed-hosts)", code="invalid_host"
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequireKey:
    """Every HTTP route but /health needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = APIError(
                    401, "missing or incorrect API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LimitBody:
    """Refuse a request body over ``limit`` bytes with 413, before the app parses or tokenizes any of it.

    A declared ``Content-Length`` is checked before reading; a chunked body is counted as it arrives.
    The body (at most ``limit`` bytes) is read here and handed to the app in one message; after it,
    the app's ``receive`` is the connection's own, so disconnects still reach it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self.refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending the whole body: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self.refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        first: dict | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict:
            nonlocal first
            if first is None:
                return await receive()
            message, first = first, None
            return message

        await self.app(scope, replay, send)

    async def refuse(self, scope, receive, send) -> None:
        error = APIError(
            413,
            f"the request body is larger than this server's limit of {self.limit} bytes (--max-body-bytes)",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)
