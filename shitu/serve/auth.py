"""The write side's bearer token: compared in constant time, so its bytes cannot be guessed by timing."""

from __future__ import annotations

import hmac

from shitu.serve.errors import ApiError


def require_token(expected: str | None, authorization: str | None):
    """Refuse a change without the server's token (401) or with another one (403); no token set: open."""
    if expected is None:
        return
    scheme, _, given = (authorization or "").strip().partition(" ")
    if not given or scheme.lower() != "bearer":
        raise ApiError(401, "changing the index needs the server's token: send 'Authorization: Bearer TOKEN'")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise ApiError(403, "wrong token; the index was not changed")
