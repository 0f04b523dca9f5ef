"""`claude-relay status` and `claude-relay sessions`: a small client of a running daemon.

Plain blocking HTTP (urllib) with a short timeout: these commands run in a terminal, not in the
daemon's loop. They find the daemon where its config says it listens and authenticate with the
first configured API key, so on the daemon's own machine they need no flags.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from claude_relay.daemon.config import Config

TIMEOUT: Final = 5.0
EXIT_UNREACHABLE: Final = 3  # LSB's "program is not running", what `status` scripts return


class Unreachable(Exception):
    """Nothing answered at the daemon's address."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def base_url(config: Config) -> str:
    # A daemon bound to every address is still reachable on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"


@dataclass(frozen=True, slots=True)
class Client:
    base: str
    api_key: str | None = None

    def call(self, method: str, path: str) -> object:
        req = urllib.request.Request(self.base.rstrip("/") + path, method=method)
        if self.api_key:
            req.add_header("x-api-key", self.api_key)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return json.loads(resp.read())
        except ValueError:  # something answered, but not a claude-relay
            raise HttpError(200, f"{self.base}{path} did not answer with JSON") from None
        except urllib.error.HTTPError as exc:
            raise HttpError(exc.code, _error_message(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"nothing answers at {self.base} ({reason})") from None

    def get(self, path: str) -> dict[str, object]:
        data = self.call("GET", path)
        if not isinstance(data, dict):
            raise HttpError(200, f"unexpected answer from {path}")
        return data


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:200]
    # Anthropic envelope {"type":"error","error":{...}} or OpenAI {"error":{...}}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(message := error.get("message"), str):
        return message
    return str(data)[:200]


def _ago(then: object, now: float) -> str:
    if not isinstance(then, int | float):
        return "-"
    return _duration(now - then) + " ago"


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _optional(client: Client, path: str) -> dict[str, object] | str:
    """An endpoint's JSON, or why it could not be read (health alone is open under auth)."""
    try:
        return client.get(path)
    except HttpError as exc:
        hint = " (set api_keys in the config or pass --api-key)" if exc.status == 401 else ""
        return f"{exc.message}{hint}"


def gather_status(client: Client) -> dict[str, object]:
    try:
        health = client.get("/v1/health")
    except (Unreachable, HttpError) as exc:
        return {"url": client.base, "reachable": False, "error": str(exc)}
    sessions = _optional(client, "/v1/sessions")
    return {
        "url": client.base,
        "reachable": True,
        "health": health,
        "version": _optional(client, "/v1/version"),
        "license": _optional(client, "/v1/license"),
        "sessions": sessions.get("sessions") if isinstance(sessions, dict) else sessions,
    }


def print_status(report: dict[str, object], out: TextIO) -> None:
    if not report["reachable"]:
        print(f"claude-relay is not running: {report['error']}", file=out)
        return
    health = _dict(report["health"])
    version = report["version"]
    lic = report["license"]
    pool = _dict(health.get("pool"))
    rows = [["relay", f"{report['url']}  {health.get('status')}"]]
    if isinstance(version, dict):
        rows[0][1] += f"  v{version.get('relay')}  up {_duration(_num(health.get('uptime')))}"
        path = version.get("claudePath") or "not found"
        rows.append(["claude", f"{version.get('claudeVersion') or '?'}  {path}"])
    else:
        rows.append(["claude", str(version)])
    claude = _dict(health.get("claude"))
    if claude.get("error"):
        rows.append(["problem", str(claude["error"]).splitlines()[0]])
    warnings: list[object] = []
    if isinstance(lic, dict):
        info = _dict(lic.get("license"))
        if info.get("valid"):
            who = ", ".join(
                str(x) for x in (info.get("subscriptionType"), info.get("account")) if x
            )
            login = f"logged in: {info.get('method')}" + (f" ({who})" if who else "")
            login += f"; billing: {info.get('billing')}"
        elif lic.get("configured"):
            login = f"NOT logged in: {info.get('message')}"
        else:
            login = f"unknown: {info.get('message')}"
        rows.append(["login", login])
        warnings = list(_list(info.get("warnings")))
    else:
        rows.append(["login", str(lic)])
    rows.append(
        [
            "pool",
            "  ".join(
                f"{k} {pool.get(k, 0)}" for k in ("warm", "busy", "starting", "queued", "sticky")
            )
            + f"  (max busy {pool.get('max_busy', '?')})",
        ]
    )
    sessions = report["sessions"]
    rows.append(
        [
            "sessions",
            f"{len(sessions)} sticky" if isinstance(sessions, list) else str(sessions),
        ]
    )
    _table(rows, out)
    for w in warnings:
        print(f"warning: {w}", file=out)


def print_sessions(data: dict[str, object], out: TextIO) -> None:
    sessions = [_dict(s) for s in _list(data.get("sessions"))]
    if not sessions:
        print("no sticky sessions", file=out)
        return
    now = time.time()
    rows = [["ID", "STATE", "MODEL", "PID", "TURNS", "LAST USED"]]
    for s in sessions:
        rows.append(
            [
                str(s.get("id")),
                str(s.get("state")),
                str(s.get("model")),
                str(s.get("pid") or "-"),
                str(s.get("turns")),
                _ago(s.get("last_used"), now),
            ]
        )
    _table(rows, out)


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def quote_id(sid: str) -> str:
    return urllib.parse.quote(sid, safe="")
