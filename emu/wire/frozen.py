"""Building frozen `*Repr` values on the parse hot path without their `__init__`.

A frozen dataclass's generated `__init__` stores each field with a separate
`object.__setattr__` call: for the 12 fields of `Ipv4Repr` that is most of
the cost of a parse. Parsers have already checked every value, so they fill
the instance dict in one `update` instead, which is also how `pickle`
restores a frozen dataclass. The value is indistinguishable from one built by
`__init__` (same class, fields, equality, hash, immutability).
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def build_frozen(cls: type[T], **fields: Any) -> T:
    """An instance of the frozen dataclass `cls` with `fields` (every field, by name)."""
    value = object.__new__(cls)
    value.__dict__.update(fields)
    return value
