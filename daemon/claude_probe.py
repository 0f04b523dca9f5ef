"""Ask the claude CLI about itself: `claude --version` and `claude auth status --json`.

Used by the license monitor (in the daemon, in the background) and by `claude-relay doctor`. The
probes are short-lived subprocesses with a deadline; each runs in its own process group, which is
killed and reaped on timeout or cancellation, so a hung claude can never hang a caller. Parsing is
pure and lives here too, next to the facts it depends on (observed on claude 2.1.197).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import orjson

from claude_relay.pty_pool import versions
from claude_relay.pty_pool.versions import ProbeError

__all__ = [
    "API_KEY_WARNING",
    "LOGIN_HELP",
    "AuthStatus",
    "ProbeError",
    "auth_status",
    "claude_version",
    "parse_auth_status",
    "run_claude",
]

PROBE_TIMEOUT: Final = 15.0  # seconds; `auth status` took 0.7 s on the 2-core test machine

# `authMethod` values of `claude auth status --json` (2.1.197), and what the relay calls them.
# "claude.ai" is a Pro/Max/Team subscription login; "oauth_token" comes from
# CLAUDE_CODE_OAUTH_TOKEN (`claude setup-token`) or ANTHROPIC_AUTH_TOKEN.
_METHODS: Final = {
    "claude.ai": "subscription",
    "api_key": "api_key",
    "api_key_helper": "api_key_helper",
    "oauth_token": "oauth_token",
    "third_party": "third_party",
    "none": "none",
}

LOGIN_HELP: Final = (
    "log in as the user the daemon runs as: run `claude` and type /login (or `claude auth login`)"
)
API_KEY_WARNING: Final = (
    "ANTHROPIC_API_KEY is set: claude uses it instead of your subscription once it has been "
    "approved (and asks first, which the relay cannot answer), so requests bill that API "
    "account; unset it to use your subscription"
)


@dataclass(frozen=True, slots=True)
class AuthStatus:
    """claude's login state, as `claude auth status --json` reports it."""

    logged_in: bool
    method: str  # subscription | api_key | api_key_helper | oauth_token | third_party | none | …
    provider: str | None = None  # firstParty, bedrock, vertex, …
    email: str | None = None
    organization: str | None = None
    subscription_type: str | None = None  # pro, max, … (subscription logins only)
    api_key_source: str | None = None  # e.g. ANTHROPIC_API_KEY, apiKeyHelper
    warnings: tuple[str, ...] = field(default=())

    @property
    def billing(self) -> str:
        """Who pays for the requests: subscription, api, provider or unknown."""
        if self.api_key_source is not None or self.method in ("api_key", "api_key_helper"):
            return "api"
        if self.method == "subscription":
            return "subscription"
        if self.method == "third_party":
            return "provider"
        return "unknown"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_auth_status(output: bytes) -> AuthStatus:
    """Parse the JSON `claude auth status` prints (exit code 0 logged in, 1 not; both print it)."""
    try:
        data = orjson.loads(output)
    except orjson.JSONDecodeError:
        raise ProbeError(f"unexpected output: {output[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("loggedIn"), bool):
        raise ProbeError(f"unexpected output: {output[:200]!r}")
    raw_method = _text(data.get("authMethod")) or "none"
    key_source = _text(data.get("apiKeySource"))
    warnings = (API_KEY_WARNING,) if key_source == "ANTHROPIC_API_KEY" else ()
    return AuthStatus(
        logged_in=data["loggedIn"],
        method=_METHODS.get(raw_method, raw_method),
        provider=_text(data.get("apiProvider")),
        email=_text(data.get("email")),
        organization=_text(data.get("orgName")),
        subscription_type=_text(data.get("subscriptionType")),
        api_key_source=key_source,
        warnings=warnings,
    )


async def run_claude(
    binary: str, args: tuple[str, ...], env: Mapping[str, str]
) -> tuple[int, bytes]:
    return await versions.run_claude(binary, args, env, PROBE_TIMEOUT)


async def claude_version(binary: str, env: Mapping[str, str]) -> str:
    return await versions.probe(binary, env, PROBE_TIMEOUT)


async def auth_status(binary: str, env: Mapping[str, str]) -> AuthStatus:
    _, out = await run_claude(binary, ("auth", "status", "--json"), env)
    return parse_auth_status(out)
