"""GET /v1/models, GET /v1/models/{id} and POST /v1/messages/count_tokens.

The model objects carry the Anthropic fields (`type`, `display_name`, `created_at`) and the OpenAI
fields (`object`, `created`, `owned_by`) side by side, and the list carries both page shapes
(`has_more`/`first_id`/`last_id` and `object: "list"`), so one answer serves both SDKs' `models`
clients. The relay has no model catalogue: it lists the names it resolves itself (see
`pty_pool.spawn.resolve_model`); any other name goes to `claude --model` as given.

count_tokens is an estimate made here, without a tokenizer or the upstream: `estimate_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from claude_relay.daemon import CONFIG_KEY, turns
from claude_relay.daemon.errors import error_envelope
from claude_relay.protocols import anthropic
from claude_relay.protocols.attachments import AttachmentLimits, image_size
from claude_relay.protocols.errors import InvalidRequestError, NotFoundError
from claude_relay.protocols.model import (
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    TurnRequest,
)
from claude_relay.pty_pool.spawn import DEFAULT_MODEL_NAMES

# Unknown release dates are the Unix epoch, as the Anthropic API does for them.
_EPOCH_ISO: Final = "1970-01-01T00:00:00Z"
_MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class _Model:
    id: str
    display_name: str

    def body(self) -> dict[str, Any]:
        return {
            # Anthropic ModelInfo
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": _EPOCH_ISO,
            "lifecycle": "active",
            # OpenAI Model
            "object": "model",
            "created": 0,
            "owned_by": "anthropic",
        }


# claude's own aliases (v2.1.197 `--model`), which always name its current model of each family.
_ALIASES: Final = (
    _Model("sonnet", "Claude Sonnet (claude's alias for the latest Sonnet)"),
    _Model("opus", "Claude Opus (claude's alias for the latest Opus)"),
    _Model("haiku", "Claude Haiku (claude's alias for the latest Haiku)"),
)


def _models(default_model: str | None) -> list[_Model]:
    default = (
        f"Default ({default_model}, the relay's default_model)"
        if default_model
        else "Default (claude's own default model)"
    )
    models = [_Model("default", default), *_ALIASES]
    if default_model and default_model not in {m.id for m in models}:
        models.append(_Model(default_model, f"{default_model} (the relay's default_model)"))
    return models


def _lookup(model_id: str, default_model: str | None) -> _Model | None:
    for m in _models(default_model):
        if m.id == model_id:
            return m
    key = model_id.strip().lower()
    if key in DEFAULT_MODEL_NAMES and key:
        return _Model(model_id, _models(default_model)[0].display_name)
    # Full ids go to `claude --model` unchanged; claude (or the upstream) decides if they exist.
    if key.startswith("claude-"):
        return _Model(model_id, model_id)
    return None


def _page(models: list[_Model], query: Any) -> list[_Model]:
    """The Anthropic cursor parameters (`after_id`, `before_id`, `limit`) over the short list."""
    ids = [m.id for m in models]
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None:
        models = models[ids.index(after) + 1 :] if after in ids else []
    elif before is not None:
        models = models[: ids.index(before)] if before in ids else []
    raw_limit = query.get("limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidRequestError("limit: Input should be a valid integer") from None
        if not 1 <= limit <= _MAX_LIMIT:
            raise InvalidRequestError(f"limit: Input should be between 1 and {_MAX_LIMIT}")
        models = models[-limit:] if before is not None else models[:limit]
    return models


async def list_models(request: web.Request) -> web.Response:
    models = _models(request.app[CONFIG_KEY].default_model)
    page = _page(models, request.query)
    body = {
        "object": "list",
        "data": [m.body() for m in page],
        "has_more": bool(page) and page[-1].id != models[-1].id,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["id"]
    model = _lookup(model_id, request.app[CONFIG_KEY].default_model)
    if model is None:
        raise NotFoundError(f"model: {model_id}")
    return web.Response(body=orjson.dumps(model.body()), content_type="application/json")


# --- count_tokens -------------------------------------------------------------------------------

BYTES_PER_TOKEN: Final = 4  # about what Claude's tokenizer averages on English text and code
MESSAGE_OVERHEAD: Final = 4  # role and turn markers around each message
IMAGE_TOKENS: Final = 1600  # the API's cost of an image at its largest size (about 1.15 MP)
IMAGE_EDGE: Final = 1568
IMAGE_PIXELS: Final = 1_150_000


def _text_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def _json_tokens(value: object) -> int:
    return math.ceil(len(orjson.dumps(value)) / BYTES_PER_TOKEN)


def _block_tokens(block: object) -> int:
    if isinstance(block, TextBlock):
        return _text_tokens(block.text)
    if isinstance(block, ImageBlock):
        size = image_size(block.data, block.media_type)
        if size is None:
            return IMAGE_TOKENS
        # the API's rule: about width × height / 750, after scaling the image down to at most
        # 1568 px on its long edge and about 1.15 megapixels
        w, h = size
        scale = min(1.0, IMAGE_EDGE / max(w, h, 1), math.sqrt(IMAGE_PIXELS / max(w * h, 1)))
        return max(1, math.ceil(w * scale * h * scale / 750))
    if isinstance(block, DocumentBlock):
        if block.text is not None:
            return _text_tokens(block.text)
        return math.ceil(len(block.data) / BYTES_PER_TOKEN)
    if isinstance(block, ToolUseBlock):
        return _text_tokens(block.name) + _json_tokens(block.input)
    if isinstance(block, ToolResultBlock):
        return sum(_block_tokens(b) for b in block.content)
    return 0


def estimate_tokens(turn: TurnRequest) -> int:
    """The request's own input tokens, estimated: see docs/api.md for the rule and its limits."""
    total = _text_tokens(turn.system or "")
    for message in turn.messages:
        total += MESSAGE_OVERHEAD + sum(_block_tokens(b) for b in message.content)
    for tool in turn.tools:
        total += _text_tokens(tool.name + tool.description) + _json_tokens(tool.input_schema)
    return total


def decode_count_request(raw: bytes, limits: AttachmentLimits | None = None) -> TurnRequest:
    """A count_tokens body decoded like a Messages body, which differs only in lacking
    `max_tokens`; a value the client does send is validated as usual."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return anthropic.decode_request(raw)  # reports the JSON error in the API's words
    if isinstance(body, dict) and "max_tokens" not in body:
        raw = orjson.dumps({**body, "max_tokens": 1})
    return anthropic.decode_request(raw, attachment_limits=limits)


@error_envelope(anthropic.error_body)
async def count_tokens(request: web.Request) -> web.Response:
    raw = await request.read()
    turn = await turns.decode(raw, decode_count_request, raw, turns.attachment_limits(request))
    # A PDF counts as the text the model would read, so it is read as for a turn: count_tokens
    # takes no pool slot, but it does take the PDF gate, so a flood of these cannot start PDF
    # readers without bound either.
    turn = await turns.read_documents(request, turn)
    body = {"input_tokens": estimate_tokens(turn)}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id}", get_model)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
