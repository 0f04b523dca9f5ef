"""The OpenAI API's validation vocabulary: its error sentences, codes and `param` paths.

Shared by the decoders in `protocols.openai` and `protocols.openai_messages`, so every 400 on the
OpenAI route reads like the API's own (`Missing required parameter: 'messages'.`, code
`missing_required_parameter`, param `messages`). Each helper raises `InvalidRequestError` with
`openai_code` set; getters return the value with its type narrowed.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from claude_relay.protocols.errors import EXCERPT_CHARS, InvalidRequestError, excerpt

MISSING: Final = object()


# --- errors -------------------------------------------------------------------------------------


def quoted(text: str) -> str:
    """`text` as sent when short, else its excerpt: a name in a message stays as the API words it,
    and a 150 KB one does not make a 150 KB error."""
    return text if len(text) <= EXCERPT_CHARS else excerpt(text)


def fail(message: str, param: str | None, code: str | None = None) -> NoReturn:
    err = InvalidRequestError(message, param=param)
    err.openai_code = code
    raise err


def missing(param: str) -> NoReturn:
    fail(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def bad_type(value: object, param: str, expected: str) -> NoReturn:
    fail(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param,
        "invalid_type",
    )


def bad_value(value: object, param: str, supported: tuple[str, ...]) -> NoReturn:
    listed = ", ".join(f"'{s}'" for s in supported[:-1]) + f", and '{supported[-1]}'"
    fail(
        f"Invalid value: {excerpt(value)}. Supported values are: {listed}.",
        param,
        "invalid_value",
    )


def unsupported(param: str, why: str) -> NoReturn:
    fail(f"Unsupported parameter: '{param}' {why}", param, "unsupported_parameter")


# --- typed getters ------------------------------------------------------------------------------


def string(value: object, param: str) -> str:
    if not isinstance(value, str):
        bad_type(value, param, "a string")
    return value


def obj(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        bad_type(value, param, "an object")
    return value


def array(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        bad_type(value, param, "an array")
    return value


def boolean(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        bad_type(value, param, "a boolean")
    return value


def number(value: object, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        bad_type(value, param, "a number")
    if not lo <= value <= hi:
        fail(
            f"Invalid '{param}': decimal above maximum value. Expected a value <= {hi:g}, "
            f"but got {value} instead."
            if value > hi
            else f"Invalid '{param}': decimal below minimum value. Expected a value >= {lo:g}, "
            f"but got {value} instead.",
            param,
            "decimal_above_max_value" if value > hi else "decimal_below_min_value",
        )
    return float(value)


def integer(value: object, param: str, *, ge: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        bad_type(value, param, "an integer")
    if ge is not None and value < ge:
        fail(
            f"Invalid '{param}': integer below minimum value. Expected a value >= {ge}, "
            f"but got {value} instead.",
            param,
            "integer_below_min_value",
        )
    return value


def no_extras(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            param = f"{where}.{quoted(key)}" if where else quoted(key)
            fail(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")


def required(obj: dict[str, Any], key: str, where: str) -> object:
    value = obj.get(key, MISSING)
    if value is MISSING or value is None:
        missing(f"{where}.{key}" if where else key)
    return value
