"""Process-wide logging setup: plain text for people, JSON lines for collectors.

Modules log through `logging.getLogger(__name__)` with `%s` arguments and stable `extra` keys
(`session_id`, `pid`, `turn_id`, `request_id`); this module only decides how records look. Both
formats carry every `extra` key, so a field added at a call site needs no change here.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

# Shown first, in this order, so lines from the pool and the HTTP edge line up.
STABLE_KEYS: Final = ("request_id", "session_id", "turn_id", "pid")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    # None means "not known here" (a request that never named a model); leaving it out keeps
    # lines short and lets collectors treat a present key as meaningful.
    extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and v is not None}
    ordered: dict[str, object] = {k: extra.pop(k) for k in STABLE_KEYS if k in extra}
    ordered.update(sorted(extra.items()))
    return ordered


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # default=str: an odd extra value (a Path, an enum) must not lose the whole line.
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extras = _extras(record)
        if extras:
            text += " [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]"
        return text


class _RelayHandler(logging.StreamHandler[TextIO]):
    """A distinct type, so a second setup replaces ours and leaves other handlers alone."""


def setup_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Install one handler on the root logger, replacing any this function installed before."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
    handler = _RelayHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pypdf logs every recoverable flaw of a client's PDF as a warning; the relay still sends the
    # text it could read, so those lines would only be noise in the daemon's log
    logging.getLogger("pypdf").setLevel(logging.ERROR)
