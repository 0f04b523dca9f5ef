"""OpenAI `response_format` (JSON mode, structured outputs), done as far as a CLI allows.

claude cannot constrain its sampling to a grammar, so the relay does two things instead: it adds
an instruction to the system prompt (`with_instruction`: the system prompt is fixed when a claude
starts, so the same format keeps using warm and sticky sessions), and it checks the finished reply
(`check_reply`). A reply that fails the check is never passed off as valid: the caller gets a 500
`server_error` (code `invalid_json_output`), which the openai SDK retries by default. Schemas
are checked with `jsonschema` (Draft 2020-12, `format` not asserted, nothing fetched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

from protocols.errors import ApiError
from protocols.model import TextBlock, TurnResult

__all__ = ["JsonFormat", "check_reply", "schema_error", "schema_problem", "with_instruction"]

INVALID_OUTPUT_CODE: Final = "invalid_json_output"
# How much of a rejected reply the error quotes, so the caller can see what went wrong.
_QUOTE_CHARS: Final = 200
# A reply that is one fenced code block (```json … ```): the JSON inside is taken. Models add the
# fence out of chat habit; the content is what was asked for.
_FENCE: Final = re.compile(r"\A```[\w+-]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """`json_object` (any JSON object) or `json_schema` (a JSON value conforming to `schema`;
    without a schema, any JSON value)."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, object] | None = field(default=None, hash=False)
    name: str = ""
    description: str = ""


def instruction(fmt: JsonFormat) -> str:
    if fmt.kind == "json_object":
        return (
            "Respond with one valid JSON object and nothing else: no text before or after it "
            "and no Markdown code fences."
        )
    about = f" ({fmt.description})" if fmt.description else ""
    schema = orjson.dumps(fmt.schema if fmt.schema is not None else {}).decode()
    return (
        "Respond with one JSON value that conforms to the JSON Schema below and nothing else: "
        f"no text before or after it and no Markdown code fences.\n"
        f'<json_schema name="{fmt.name}"{about}>\n{schema}\n</json_schema>'
    )


def with_instruction(system: str | None, fmt: JsonFormat | None) -> str | None:
    """The system prompt with the format's instruction after the caller's own text."""
    if fmt is None:
        return system
    return f"{system}\n\n{instruction(fmt)}" if system else instruction(fmt)


def check_reply(fmt: JsonFormat | None, result: TurnResult) -> TurnResult:
    """The result with its text as the checked JSON; raise `ApiError` if it does not conform.

    A turn that ends in tool calls is not a reply to check. The text becomes the JSON alone:
    surrounding whitespace and a single enclosing code fence are removed.
    """
    if fmt is None or result.tool_uses:
        return result
    text = result.text.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _invalid(fmt, f"it is not valid JSON ({exc})", result.text) from None
    if fmt.kind == "json_object" and not isinstance(value, dict):
        raise _invalid(fmt, "it is not a JSON object", result.text)
    if fmt.schema is not None:
        problem = schema_problem(value, fmt.schema)
        if problem is not None:
            raise _invalid(fmt, f"it does not match the schema: {problem}", result.text)
    others = tuple(b for b in result.content if not isinstance(b, TextBlock))
    return replace(result, content=(TextBlock(text), *others))


def _invalid(fmt: JsonFormat, why: str, reply: str) -> ApiError:
    quote = reply if len(reply) <= _QUOTE_CHARS else reply[:_QUOTE_CHARS] + "…"
    err = ApiError(
        f"the model's reply does not satisfy response_format {fmt.kind}: {why}; "
        f"the reply began: {quote!r}",
        param="response_format",
    )
    err.openai_code = INVALID_OUTPUT_CODE
    return err


# --- the schema -------------------------------------------------------------------------------


def schema_error(schema: dict[str, object]) -> str | None:
    """Why `schema` cannot be used (not a valid Draft 2020-12 schema), or None."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"{exc.json_path}: {exc.message}"
    return None


def schema_problem(value: object, schema: dict[str, object]) -> str | None:
    """The most relevant way `value` breaks `schema` (`<json path>: <problem>`), or None.

    The empty registry keeps jsonschema from fetching remote `$ref`s (it would otherwise, with a
    deprecation warning); such a reference, like a dangling local one, is reported as a problem.
    """
    validator = Draft202012Validator(schema, registry=Registry())
    try:
        error = best_match(validator.iter_errors(value))
    except Unresolvable as exc:
        return f"$: the schema's reference cannot be resolved ({exc})"
    except RecursionError:
        # A `$ref` cycle that never consumes the instance ({"$ref": "#"}) recurses without end.
        return "$: the schema's references form a cycle"
    return None if error is None else f"{error.json_path}: {error.message}"
