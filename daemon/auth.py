"""Optional API keys: who may use the relay, and where it may listen without them.

Anyone who can reach the relay spends its owner's claude login, so keys are required off
loopback (`exposure_error`, checked by the CLI before binding). With keys configured, every route
but health needs one, sent the way the SDKs send theirs: `x-api-key` (Anthropic) or
`Authorization: Bearer` (OpenAI). The middleware sits inside the error middleware, so a refusal is
a 401 in the envelope of the route that was asked (Anthropic by default, OpenAI on its routes).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from claude_relay.daemon.config import Config
from claude_relay.protocols.errors import AuthenticationError

OPEN_PATHS: Final = frozenset({"/v1/health", "/health"})  # monitors and load balancers


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def exposure_error(config: Config) -> str | None:
    """Why the daemon must not start with this config, or None."""
    if config.key_list() or is_loopback(config.host):
        return None
    return (
        f"refusing to listen on {config.host} without an API key: anyone who can reach it "
        "would use your claude login. Set api_keys in the config file (or "
        "CLAUDE_RELAY_API_KEYS), or listen on 127.0.0.1."
    )


def presented_keys(request: web.Request) -> list[str]:
    keys = []
    if (key := request.headers.get("x-api-key")) is not None:
        keys.append(key.strip())
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    return keys


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    # Every configured key is compared, in constant time, so timing tells nothing about which
    # key came close.
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


# Where the middleware leaves the caller's tenant: the tag of the key it presented. A typed key:
# aiohttp (3.14) warns on plain string keys, and the warning would fail the first keyed request.
TENANT: Final = web.RequestKey("claude_relay.tenant", str)


def key_tag(key: str) -> str:
    """A key's tenant tag: sticky sessions and parked tool calls belong to the key that made
    them. A digest, so the state file and logs never hold the key itself."""
    return hashlib.sha256(b"claude-relay tenant\0" + key.encode()).hexdigest()[:24]


def tenant(request: web.Request) -> str | None:
    """The caller's tenant tag; None when the relay runs without API keys (one tenant)."""
    return request.get(TENANT)


def make_auth_middleware(keys: Sequence[str]) -> Middleware:
    keys = tuple(keys)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not keys or request.path in OPEN_PATHS:
            return await handler(request)
        presented = presented_keys(request)
        if not presented:
            raise AuthenticationError(
                "missing API key: send it in the x-api-key header or as Authorization: Bearer"
            )
        matched = next((p for p in presented if key_matches(p, keys)), None)
        if matched is None:
            raise AuthenticationError("invalid API key")
        request[TENANT] = key_tag(matched)
        return await handler(request)

    return middleware
