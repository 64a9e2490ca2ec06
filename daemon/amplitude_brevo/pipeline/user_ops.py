"""Amplitude's user-property operations applied to a stored profile (reference/amplitude-api.md §4).

An identify (`$identify` event, `/identify` call) carries `user_properties` that are either plain keys (an
implicit `$set`) or only operation keys: `$set`, `$setOnce`, `$add`, `$append`, `$prepend`, `$preInsert`,
`$postInsert`, `$remove`, `$unset`, `$clearAll`. `apply_operations` turns a profile's properties and one such
object into the properties after it, without touching its input, and says what it could not apply.

Where the reference is silent (decided here, said in README):

* `$setOnce` sets a property the profile does not hold (also after an `$unset`): "never been set" as far as
  the stored profile can tell.
* `$add` on a value that is not a number (nor a numeric text) starts from 0, as an unset one does; an
  increment that is not a number is not applied.
* The list operations take a scalar already stored as a one-element list; `$remove` of the last values
  leaves an empty list.
* A list that would grow past 10,000 characters of JSON (the reference's limit for lists built by
  `$append`/`$prepend`) keeps its value before the operation; the property is reported.
* Operations are applied in the order of the reference's table (`$clearAll` first); one property should be
  in one operation only (the SDKs enforce it), and if it is in several, each applies in that order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

LIST_LIMIT_CHARS = 10_000

# In the order they are applied.
OPERATIONS = ("$clearAll", "$unset", "$set", "$setOnce", "$add", "$append", "$prepend", "$preInsert",
              "$postInsert", "$remove")
_OPERATIONS = frozenset(OPERATIONS)


@dataclass(slots=True)
class Applied:
    """The properties after the operations, and what was not applied: (operation, property, why)."""

    properties: dict[str, Any]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    changed: bool = False  # whether `properties` differs from what was given


class InvalidOperations(ValueError):
    """`user_properties` mixes plain keys with operations, or names an unknown operation."""


def is_operations(user_properties: Mapping[str, Any]) -> bool:
    """True when the object is written with operation keys (`$set`, …) rather than plain properties."""
    return any(key in _OPERATIONS for key in user_properties)


def apply_operations(current: Mapping[str, Any], user_properties: Mapping[str, Any]) -> Applied:
    """The profile's properties after one identify's `user_properties` (see the module docstring).

    Raises InvalidOperations when plain keys and operations are mixed, or an operation key is unknown
    (`$` keys that are not operations are plain properties only when no operation is present)."""
    if not is_operations(user_properties):
        ops: Mapping[str, Any] = {"$set": user_properties} if user_properties else {}
    else:
        unknown = [key for key in user_properties if key not in _OPERATIONS]
        if unknown:
            raise InvalidOperations(f"user_properties mixes operations with other keys: {sorted(unknown)[:5]}")
        ops = user_properties
    result = Applied(dict(current))
    props = result.properties
    for op in OPERATIONS:
        if op not in ops:
            continue
        values = ops[op]
        if op == "$clearAll":
            props.clear()
            continue
        if not isinstance(values, Mapping):
            result.skipped.append((op, "", f"{op} takes an object of properties, not {type(values).__name__}"))
            continue
        for name, value in values.items():
            _apply(op, props, str(name), value, result)
    result.changed = _encoded(props) != _encoded(current)
    return result


def _encoded(props: Mapping[str, Any]) -> bytes | tuple[Any, ...]:
    """A comparable form of properties in which `1`, `1.0` and `true` differ (JSON, keys sorted)."""
    try:
        return orjson.dumps(props, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # e.g. an integer beyond 64 bits: compare as Python does
        return tuple(sorted((str(k), repr(v)) for k, v in props.items()))


def _apply(op: str, props: dict[str, Any], name: str, value: Any, result: Applied) -> None:
    if op == "$set":
        props[name] = value
    elif op == "$setOnce":
        if name not in props:
            props[name] = value
    elif op == "$unset":
        props.pop(name, None)
    elif op == "$add":
        increment = _number(value)
        if increment is None:
            result.skipped.append((op, name, f"$add takes a number, not {value!r}"[:200]))
            return
        base = _number(props.get(name))
        props[name] = (base or 0) + increment
    else:
        _list_op(op, props, name, value, result)


def _list_op(op: str, props: dict[str, Any], name: str, value: Any, result: Applied) -> None:
    items = value if isinstance(value, list) else [value]
    stored = props.get(name)
    before = [] if stored is None else (list(stored) if isinstance(stored, list) else [stored])
    if op == "$append":
        after = before + items
    elif op == "$prepend":
        after = items + before
    elif op == "$preInsert":
        new = _unique_absent(items, before)
        after = new + before
    elif op == "$postInsert":
        after = before + _unique_absent(items, before)
    else:  # $remove: every instance of every value
        after = [item for item in before if not _contains(items, item)]
    if op != "$remove" and len(orjson.dumps(after)) > LIST_LIMIT_CHARS:
        result.skipped.append((op, name, f"the list would pass {LIST_LIMIT_CHARS:,} characters"))
        return
    props[name] = after


def _unique_absent(items: list[Any], present: list[Any]) -> list[Any]:
    """`items` not in `present`, each once, in their order."""
    out: list[Any] = []
    for item in items:
        if not _contains(present, item) and not _contains(out, item):
            out.append(item)
    return out


def _contains(items: list[Any], value: Any) -> bool:
    """`value in items`, but `1`, `1.0` and `True` are different values (as JSON sees them)."""
    return any(item == value and type(item) is type(value) for item in items)


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return None
