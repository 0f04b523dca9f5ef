"""The front door's browser defences: Host, Origin and body type, checked before any route runs.

A web page in the user's browser can reach 127.0.0.1 too: through DNS rebinding (its own name
resolved to 127.0.0.1, so it sends `Host: evil.example`), with a cross-origin `fetch` (which
carries `Origin`), or with a no-cors POST of a text/plain body (no preflight asks first). The
relay's clients are programs, which send a loopback or configured Host, no Origin, and JSON; so
everything else is refused. The middleware sits inside the error middleware, so a refusal comes
in the envelope of the route asked for (docs/security.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from claude_relay.daemon.auth import is_loopback
from claude_relay.daemon.config import Config
from claude_relay.daemon.errors import UnsupportedMediaTypeError
from claude_relay.protocols.errors import PermissionDeniedError, excerpt

ANY_HOST: Final = "*"
# What a browser sends for a request made by a page of another site, or of another port of
# this one; the relay serves no pages, so no legitimate request comes from either.
_FOREIGN_FETCH_SITES: Final = frozenset({"cross-site", "same-site"})


def host_name(value: str) -> str | None:
    """The host of a Host header value, lower-cased, without port or IPv6 brackets; None when
    the value is not `host[:port]`."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, port = value[1:end], value[end + 1 :]
    else:
        name, colon, digits = value.partition(":")
        port = colon + digits
    if port and not (port.startswith(":") and port[1:].isdigit()):
        return None
    return name or None


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    bind_host: str  # the configured listen address, as host_name() would give it
    allowed_hosts: frozenset[str]  # host names without port; ANY_HOST accepts every Host
    allowed_origins: frozenset[str]  # exact Origin header values

    @classmethod
    def from_config(cls, config: Config) -> GuardPolicy:
        hosts = {host_name(h) or h for h in config.host_list()}
        return cls(
            bind_host=_named_bind_host(config.host),
            allowed_hosts=frozenset(hosts),
            allowed_origins=frozenset(config.origin_list()),
        )

    def host_allowed(self, header: str) -> bool:
        if ANY_HOST in self.allowed_hosts:
            return True
        name = host_name(header)
        if name is None:
            return False
        return is_loopback(name) or name == self.bind_host or name in self.allowed_hosts


def _named_bind_host(host: str) -> str:
    """The listen address as a Host would name it; "" for a wildcard (0.0.0.0, ::), which names
    no host: a browser sends `Host: 0.0.0.0` to reach its own machine."""
    name = host.strip().strip("[]").lower()
    try:
        return "" if ipaddress.ip_address(name).is_unspecified else name
    except ValueError:
        return name


def _host_refusal(request: web.Request, policy: GuardPolicy) -> str | None:
    header = request.headers.get("Host")
    # A browser always sends Host; a client without one (HTTP/1.0) is no web page.
    if header is None or policy.host_allowed(header):
        return None
    return (
        f"Host {excerpt(header)} is not this relay's: requests must be addressed to a loopback "
        "name or address, the listen address, or a host in allowed_hosts (a web page whose own "
        "DNS name was pointed at 127.0.0.1 sends its name here)"
    )


def _origin_refusal(request: web.Request, policy: GuardPolicy) -> str | None:
    origins = request.headers.getall("Origin", [])
    for origin in origins:
        if origin not in policy.allowed_origins:
            return (
                f"requests from web pages are refused: Origin {excerpt(origin)} is not in "
                "allowed_origins"
            )
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if not origins and site in _FOREIGN_FETCH_SITES:
        return f"requests from web pages are refused (Sec-Fetch-Site: {site})"
    return None


def _body_refusal(request: web.Request) -> str | None:
    if not request.body_exists:
        return None
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return (
            f"request bodies must not be compressed (Content-Encoding: {excerpt(encoding)}); "
            "send plain JSON"
        )
    if request.method != "POST":
        return None
    content_type = request.headers.get("Content-Type")
    mime = (content_type or "").partition(";")[0].strip().lower()
    if mime != "application/json":
        sent = f"got {excerpt(content_type)}" if content_type else "none was sent"
        return f"request bodies must be sent as Content-Type: application/json ({sent})"
    return None


def make_guard_middleware(policy: GuardPolicy) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Health too: a rebound page must not even learn that a relay is there.
        refusal = _host_refusal(request, policy) or _origin_refusal(request, policy)
        if refusal is not None:
            raise PermissionDeniedError(refusal)
        if (refusal := _body_refusal(request)) is not None:
            raise UnsupportedMediaTypeError(refusal)
        return await handler(request)

    return middleware
