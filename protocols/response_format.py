"""OpenAI `response_format` (JSON mode, structured outputs), done as far as a CLI allows.

claude cannot constrain its sampling to a grammar, so the relay does two things instead: it adds
an instruction to the system prompt (`with_instruction`: the system prompt is fixed when a claude
starts, so the same format keeps using warm and sticky sessions), and it checks the finished reply
(`check_reply`). A reply that fails the check is never passed off as valid: the caller gets a 500
`server_error` (code `invalid_json_output`), which the openai SDK retries by default. Schemas
are checked with `jsonschema` (Draft 2020-12, `format` not asserted, nothing fetched).

The schema is the caller's and the reply is the model's, and both are checked on the event loop,
so neither may cost more than a moment (docs/security.md, content bombs): every `pattern` and
`patternProperties` regex runs in RE2, which matches in linear time (Python's `re` backtracks:
`^(a+)+$` against 50 000 `a`s and a `!` would never finish), and one check may take at most
`MAX_CHECK_SECONDS` (nested `anyOf`s of `$ref`s grow exponentially).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol, cast

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import orjson
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

from claude_relay.protocols.errors import ApiError, excerpt
from claude_relay.protocols.model import TextBlock, TurnResult

__all__ = [
    "MAX_CHECKED_CHARS",
    "MAX_CHECK_SECONDS",
    "JsonFormat",
    "check_reply",
    "invalid_schema",
    "schema_error",
    "schema_problem",
    "with_instruction",
]

INVALID_OUTPUT_CODE: Final = "invalid_json_output"
# How much of a rejected reply the error quotes, so the caller can see what went wrong.
_QUOTE_CHARS: Final = 200
# A reply that is one fenced code block (```json … ```): the JSON inside is taken. Models add the
# fence out of chat habit; the content is what was asked for.
_FENCE: Final = re.compile(r"\A```[\w+-]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)
# A reply longer than this is not parsed or checked: claude's longest replies are a few hundred
# kilobytes, so more is not a reply worth checking, and parsing it would hold the loop.
MAX_CHECKED_CHARS: Final = 1_000_000


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
    if len(text) > MAX_CHECKED_CHARS:
        raise _invalid(
            fmt, f"it is longer than {MAX_CHECKED_CHARS} characters, more than is checked", text
        )
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


# --- regexes: RE2, never Python's `re` --------------------------------------------------------


class _Regex(Protocol):
    def search(self, text: str) -> object | None: ...


_RE2_OPTIONS: Final = re2.Options()
# A pattern RE2 cannot run is the caller's mistake, told in the 400; RE2 would also log it.
_RE2_OPTIONS.log_errors = False
# re2 keeps the last 128 compiled patterns, each allowed this much memory (by default 8 MiB, up
# to 1 GiB in all); a schema's patterns need kilobytes.
_RE2_OPTIONS.max_mem = 2 * 1024 * 1024


def _regex(pattern: str) -> _Regex:
    """`pattern` compiled by RE2 (re2 caches it); raises `re2.error` if RE2 cannot run it."""
    return cast(_Regex, re2.compile(pattern, _RE2_OPTIONS))


def _re2_reason(exc: BaseException | None) -> str:
    detail = exc.args[0] if exc is not None and exc.args else "not a regular expression"
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)


class _Re2AsRe:
    """What jsonschema's keyword code uses of the `re` module: `search(pattern, text)`.

    jsonschema 4.x calls `re.search` with a schema's pattern in the `pattern` and
    `patternProperties` keywords and in the helpers behind `additionalProperties` and
    `unevaluatedProperties` (`_keywords`, `_utils`, `_legacy_keywords`). A validator class from
    `validators.extend` could replace the two keywords, but not the helpers, nor the validator
    classes of other drafts; rebinding the modules' `re` covers every call. tests/
    test_content_bombs.py drives each call site with a catastrophic pattern, so a jsonschema
    release that calls `re` differently fails there rather than in production.
    """

    @staticmethod
    def search(pattern: str, string: str) -> object | None:
        return _regex(pattern).search(string)


for _module in (jsonschema._keywords, jsonschema._utils, jsonschema._legacy_keywords):
    setattr(_module, "re", _Re2AsRe)  # noqa: B010  # the stubs do not declare the module's `re`


def _runs_in_re2(instance: object) -> bool:
    if isinstance(instance, str):
        _regex(instance)
    return True


# The draft's own format checks for a schema's keywords, with `regex` (the format of `pattern`
# and of `patternProperties` keys) meaning "RE2 can run it", so a pattern the relay could not
# use is a 400 when the request arrives instead of a failure once the reply is in.
_SCHEMA_FORMATS: Final = FormatChecker(formats=())
_SCHEMA_FORMATS.checkers = {
    **Draft202012Validator.FORMAT_CHECKER.checkers,
    "regex": (_runs_in_re2, re2.error),
}


# --- the schema -------------------------------------------------------------------------------

# How long one reply check may hold the event loop. Checks of real replies take milliseconds (a
# 3000-object array: 0.2 s); a chain of `anyOf`s over `$ref`s doubles with each link, so a small
# schema can ask for hours. The clock is read every `_STEPS_PER_LOOK` keyword evaluations.
MAX_CHECK_SECONDS: Final = 1.0
_STEPS_PER_LOOK: Final = 64
# How much of jsonschema's message a problem quotes: it repeats the offending value whole (a
# 50 000-character string, say).
_PROBLEM_CHARS: Final = 300


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.steps = 0


class _OutOfTime(Exception):
    pass


# The running check's budget; None outside `schema_problem` (jsonschema's own schema checks).
_BUDGET: Final[contextvars.ContextVar[_Budget | None]] = contextvars.ContextVar(
    "schema_budget", default=None
)
_Keyword = Callable[[Any, Any, Any, Any], Iterator[ValidationError] | None]


def _counted(keyword: _Keyword) -> _Keyword:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.steps += 1
            if budget.steps % _STEPS_PER_LOOK == 0 and time.monotonic() > budget.deadline:
                raise _OutOfTime
        return keyword(validator, value, instance, schema)

    return run


# Draft 2020-12 with every keyword on the budget. Registered for no `$schema` URI, so subschemas
# stay with it; a nested `$schema` naming a known draft would switch to that draft's stock
# class, which is why `invalid_schema` refuses one and `schema_problem` drops the root's.
# (`validators.extend` has no annotations in types-jsonschema)
_Validator: Final[type[Draft202012Validator]] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {name: _counted(keyword) for name, keyword in Draft202012Validator.VALIDATORS.items()},
)


def _nested_dialect(schema: dict[str, object]) -> tuple[str | int, ...] | None:
    """Where, below the root, an object declares a `$schema` that jsonschema knows, or None."""
    stack: list[tuple[object, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            dialect = node.get("$schema")
            known = isinstance(dialect, str) and validators.validator_for(
                {"$schema": dialect}, default=_Validator
            )
            if path and known and known is not _Validator:
                return path
            stack.extend((value, (*path, key)) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(node))
    return None


def invalid_schema(schema: dict[str, object]) -> SchemaError | None:
    """Why `schema` cannot be used, or None.

    It must be a valid Draft 2020-12 schema whose patterns RE2 can run, with `$schema` only at
    its root (the relay reads all of it as 2020-12), and not nested beyond Python's stack.
    """
    try:
        Draft202012Validator.check_schema(schema, format_checker=_SCHEMA_FORMATS)
    except SchemaError as exc:
        if exc.validator == "format" and exc.validator_value == "regex":
            exc.message = (
                f"{excerpt(exc.instance)} is not a pattern claude-relay can run "
                f"({_re2_reason(exc.cause)}): patterns run in RE2, which has no backreferences "
                "or lookaround"
            )
        return exc
    except RecursionError:
        return SchemaError("the schema is nested too deeply")
    where = _nested_dialect(schema)
    if where is not None:
        return SchemaError(
            "`$schema` is only allowed at the schema's root: claude-relay reads the whole "
            "schema as Draft 2020-12",
            path=where,
        )
    return None


def schema_error(schema: dict[str, object]) -> str | None:
    """Why `schema` cannot be used (`invalid_schema`) as `<json path>: <problem>`, or None."""
    exc = invalid_schema(schema)
    return None if exc is None else f"{exc.json_path}: {exc.message}"


def schema_problem(value: object, schema: dict[str, object]) -> str | None:
    """The most relevant way `value` breaks `schema` (`<json path>: <problem>`), or None.

    The empty registry keeps jsonschema from fetching remote `$ref`s (it would otherwise, with a
    deprecation warning); such a reference, like a dangling local one, is reported as a problem.
    `format` is not asserted (no validator `format_checker`): its `regex` check would compile the
    model's text with Python's `re`. A check that takes over `MAX_CHECK_SECONDS` is a problem too.
    """
    # the root's `$schema` would switch a `$ref` to "#" to another draft's (uncounted) class
    root = {key: sub for key, sub in schema.items() if key != "$schema"}
    validator = _Validator(root, registry=Registry())
    budget = _BUDGET.set(_Budget(MAX_CHECK_SECONDS))
    try:
        error = best_match(validator.iter_errors(value))
    except Unresolvable as exc:
        return f"$: the schema's reference cannot be resolved ({exc})"
    except RecursionError:
        # A `$ref` cycle that never consumes the instance ({"$ref": "#"}) recurses without end.
        return "$: the schema's references form a cycle"
    except _OutOfTime:
        return (
            f"$: the schema is too complex: checking the reply took more than "
            f"{MAX_CHECK_SECONDS:g} s"
        )
    except re2.error as exc:  # only a schema that skipped `invalid_schema` gets here
        return f"$: the schema has a pattern RE2 cannot run ({_re2_reason(exc)})"
    finally:
        _BUDGET.reset(budget)
    return None if error is None else f"{error.json_path}: {_cut(error.message)}"


def _cut(text: str) -> str:
    """`text` without its middle when long: jsonschema's messages quote the value first and say
    what is wrong with it last."""
    if len(text) <= _PROBLEM_CHARS:
        return text
    half = _PROBLEM_CHARS // 2
    return f"{text[:half]}…{text[-half:]}"
