"""The strict JSON codec of control API v1: bytes → JSON value → wire type, and back.

The one rule: nothing is coerced. cattrs' default hooks call `bool(x)`, `int(x)`, `str(x)` and
`list(x)`, so `"false"` becomes True, `"51820"` becomes 51820 and `"abc"` a list of letters;
the one converter here (`CONVERTER`) accepts exactly the JSON type the annotation names,
rejects everything else and forbids unknown keys. A rejection is a `WireError` carrying every
offending field as an RFC 6901 JSON pointer (`/requested_tags/0`): the server answers it with a
400 (adapters/http_api/middleware.py), a client treats it as a server it cannot understand.
JSON itself is parsed strictly too: duplicate keys, NaN/Infinity, out-of-range numbers, lone
surrogates, nesting beyond MAX_JSON_DEPTH and non-object bodies are refused before cattrs sees
them. The server, the node client, the admin client and the OpenAPI check all use this module
with the types of `rustynet.ports.wire.v1`.
"""

from __future__ import annotations

import enum
import json
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.cols import is_any_set, is_sequence, list_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from rustynet.domain.errors import RemoteProtocolError, RustynetError

T = TypeVar("T")

MAX_DETAIL_ITEMS: Final = 8  # a hostile body with 10k bad fields gets a bounded answer
MAX_JSON_DEPTH: Final = 32  # nested objects/arrays in a request body (policies need ~5)
MAX_JSON_INT: Final = 2**63 - 1  # JSON integers are 64-bit signed on this API
MAX_INT_DIGITS: Final = 19  # len(str(MAX_JSON_INT)); checked before int() parses the text


@attrs.frozen
class WireProblem:
    """One finding: where (RFC 6901 pointer into the JSON document) and what."""

    pointer: str
    message: str


class WireError(RustynetError):
    """A JSON document is not what the contract says: `detail` for people, `problems` (maybe
    empty) with pointers. Never holds a secret: messages name fields and types, not values."""

    def __init__(self, detail: str, problems: Sequence[WireProblem] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.problems: tuple[WireProblem, ...] = tuple(problems)


def body_invalid(detail: str, problems: Sequence[WireProblem] = ()) -> WireError:
    """The document is not JSON of the expected shape, with pointers when known."""
    return WireError(detail, problems)


# --- JSON -------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise body_invalid(f"JSON constant {name} is not allowed")


def _bounded_int(text: str) -> int:
    # Python refuses int() of more than 4,300 digits with a bare ValueError (a 500 before this
    # hook); nothing in the API counts beyond 64 bits, so the digits are counted first.
    value = int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else None
    if value is None or not -MAX_JSON_INT <= value <= MAX_JSON_INT:
        raise body_invalid("JSON integer out of range (64-bit signed)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)  # `1e999` is inf to Python, and inf is not JSON
    if not math.isfinite(value):
        raise body_invalid("JSON number out of range (not a finite double)")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise body_invalid("duplicate key in JSON object", [WireProblem(_pointer([key]), "")])
        result[key] = value
    return result


def _unsound(value: object) -> str | None:
    """Why a parsed body must be refused, or None: nesting deeper than MAX_JSON_DEPTH, or a
    string (key or value) that is not valid Unicode (`"\\ud800"` parses to a lone surrogate,
    which no store can encode). One iterative walk, no recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, str) and not child.isascii() and not _encodable(child):
                return "JSON string is not valid Unicode (lone surrogate escape)"
            if isinstance(child, dict | list):
                if depth + 1 > MAX_JSON_DEPTH:
                    return f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
                stack.append((child, depth + 1))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a body that must be one UTF-8 JSON object.

    Refused with `WireError` (a 400 on the server, never a 500): invalid UTF-8, invalid JSON,
    duplicate keys, NaN/Infinity, numbers outside 64-bit integers or finite doubles, lone
    surrogates in strings, and nesting deeper than MAX_JSON_DEPTH (30,000 nested arrays exhaust
    the C parser's recursion limit).
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError as exc:
        raise body_invalid("request body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise body_invalid(f"request body is not JSON ({exc.msg} at offset {exc.pos})") from exc
    except RecursionError:
        raise body_invalid(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise body_invalid("request body must be a JSON object", [WireProblem("", "object")])
    problem = _unsound(value)
    if problem is not None:
        raise body_invalid(problem)
    return value


def dump_json(value: object) -> bytes:
    """Serialize a value (already unstructured) to compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# --- strict converter -------------------------------------------------------------------------


def _exact(kind: type[T], name: str) -> Callable[[object, type], T]:
    def hook(value: object, _: type) -> T:
        # bool is an int subclass in Python; JSON keeps them apart, and so do we.
        if type(value) is not kind:
            raise TypeError(f"expected {name}")
        return value

    return hook


def _float(value: object, _: type) -> float:
    if type(value) not in (int, float):
        raise TypeError("expected number")
    return float(typing.cast("float", value))


def _datetime(value: object, _: type) -> datetime:
    """RFC 3339 UTC with `Z` only; no naive or offset times slip in."""
    if type(value) is not str or not value.endswith("Z"):
        raise TypeError("expected RFC 3339 UTC time ending in Z")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError as exc:
        raise ValueError("expected RFC 3339 UTC time ending in Z") from exc
    return parsed.astimezone(UTC)


def _enum(cls: type[enum.Enum]) -> Callable[[object, type], enum.Enum]:
    def hook(value: object, _: type) -> enum.Enum:
        for member in cls:
            if type(value) is type(member.value) and value == member.value:
                return member
        raise ValueError("expected one of " + ", ".join(repr(m.value) for m in cls))

    return hook


def _is_mapping_type(cls: Any) -> bool:
    origin = typing.get_origin(cls) or cls
    return origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping))


def _is_collection_type(cls: Any) -> bool:
    origin: object = typing.get_origin(cls)
    return bool(is_sequence(cls) or is_any_set(cls)) or origin is tuple


def make_converter() -> cattrs.Converter:
    """A converter that structures only exact JSON types and forbids unknown keys.

    `CONVERTER` is the one instance; this factory exists for tests that need a fresh one.
    """
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _exact(str, "string"))
    conv.register_structure_hook(bool, _exact(bool, "boolean"))
    conv.register_structure_hook(int, _exact(int, "integer"))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(datetime, _datetime)
    conv.register_unstructure_hook(datetime, format_time)
    conv.register_structure_hook_factory(
        lambda cls: isinstance(cls, type) and issubclass(cls, enum.Enum),
        _enum,
    )

    def sequence_factory(cls: Any) -> Callable[[object, type], object]:
        args = typing.get_args(cls)
        origin = typing.get_origin(cls) or cls
        if origin is tuple and args and args[-1] is not Ellipsis:
            return _fixed_tuple(args)
        list_type: Any = list.__class_getitem__(args[0]) if args else list
        inner = list_structure_factory(list_type, conv)

        def hook(value: object, _: type) -> object:
            if type(value) is not list:
                raise TypeError("expected array")
            items: list[object] = inner(value, list_type)
            if origin in (tuple, Sequence):
                return tuple(items)
            if origin is set:
                return set(items)
            if is_any_set(cls):
                return frozenset(items)
            return items

        return hook

    def _fixed_tuple(args: tuple[Any, ...]) -> Callable[[object, type], object]:
        def hook(value: object, _: type) -> object:
            if type(value) is not list or len(value) != len(args):
                raise TypeError(f"expected array of {len(args)} items")
            return tuple(conv.structure(v, t) for v, t in zip(value, args, strict=True))

        return hook

    conv.register_structure_hook_factory(
        _is_collection_type,
        sequence_factory,
    )

    def attrs_factory(cls: Any) -> Callable[[object, type], object]:
        inner = cattrs.gen.make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)

        def hook(value: object, _: type) -> object:
            if type(value) is not dict:
                raise TypeError("expected object")
            return inner(value, cls)

        return hook

    conv.register_structure_hook_factory(attrs.has, attrs_factory)

    def mapping_guard(cls: Any) -> Callable[[object, type], object]:
        key_type, value_type = typing.get_args(cls) or (str, Any)

        def hook(value: object, _: type) -> object:
            if type(value) is not dict:
                raise TypeError("expected object")
            return {
                conv.structure(k, key_type): conv.structure(v, value_type) for k, v in value.items()
            }

        return hook

    conv.register_structure_hook_factory(_is_mapping_type, mapping_guard)
    return conv


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with `Z`, whole seconds (the API's one time format)."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- responses --------------------------------------------------------------------------------


def to_json_value(value: object) -> object:
    """A response value as plain JSON data, by runtime type (no annotation evaluation):
    attrs instances → objects, datetimes → RFC 3339 `Z`, enums → their value, tuples → arrays.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if attrs.has(type(value)):
        fields = attrs.fields(typing.cast("type[attrs.AttrsInstance]", type(value)))
        return {f.name: to_json_value(getattr(value, f.name)) for f in fields}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return [to_json_value(v) for v in items]
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


# --- error paths ------------------------------------------------------------------------------


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _pointer(parts: Sequence[str | int]) -> str:
    return "".join("/" + _escape(p) for p in parts)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required field is missing"
    text = str(exc) if isinstance(exc, TypeError | ValueError | RemoteProtocolError) else ""
    return text or "invalid value"


def _problems(exc: BaseException, path: tuple[str | int, ...]) -> Iterator[WireProblem]:
    if isinstance(exc, ForbiddenExtraKeysError):
        for extra in sorted(exc.extra_fields):
            yield WireProblem(_pointer([*path, extra]), "unknown field")
        return
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            step: tuple[str | int, ...] = ()
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    step = (note.name,)
                    break
                if isinstance(note, IterableValidationNote):
                    step = (typing.cast("int", note.index),)
                    break
            yield from _problems(sub, path + step)
        return
    yield WireProblem(_pointer(path), _message(exc))


def structure(conv: cattrs.Converter, body: Mapping[str, Any], cls: type[T]) -> T:
    """Structure a parsed JSON object into `cls`; any mismatch → `WireError` with pointers."""
    try:
        return conv.structure(body, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems = list(_problems(exc, ()))[:MAX_DETAIL_ITEMS]
        detail = "; ".join(f"{p.pointer or '/'}: {p.message}" for p in problems)
        raise body_invalid(detail or "invalid request body", problems) from exc
    except (TypeError, ValueError, RemoteProtocolError) as exc:
        raise body_invalid(_message(exc), [WireProblem("", _message(exc))]) from exc


CONVERTER: Final = make_converter()
"""The one strict converter of the v1 wire types (server, node client, admin client)."""


def decode(value: object, cls: type[T]) -> T:
    """A parsed JSON value (an answer or a request body) as `cls`, strictly; `WireError` if
    it is not a JSON object of that shape."""
    if type(value) is not dict:
        raise body_invalid("expected a JSON object", [WireProblem("", "object")])
    return structure(CONVERTER, typing.cast("dict[str, Any]", value), cls)


def encode(value: object) -> bytes:
    """A wire value (or plain JSON data) as compact UTF-8 JSON."""
    return dump_json(to_json_value(value))
