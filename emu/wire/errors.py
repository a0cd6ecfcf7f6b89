"""Errors raised by the wire codecs.

Parsing untrusted bytes may only ever fail with a `WireError`: callers in the
forwarding path catch exactly this type and turn it into a named drop reason,
so any other exception escaping a parser is a bug.
"""

from __future__ import annotations


class WireError(ValueError):
    """Bytes that cannot be decoded as the requested header.

    `reason` is a short, stable text usable as a drop-reason counter name.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Truncated(WireError):
    """The buffer ends before the header (or the length it declares) does."""

    def __init__(self, header: str, need: int, have: int) -> None:
        self.header = header
        self.need = need
        self.have = have
        super().__init__(f"{header}-truncated", f"need {need} bytes, have {have}")


class Malformed(WireError):
    """A field holds a value that makes the rest of the header meaningless."""

    def __init__(self, header: str, field: str, value: object) -> None:
        self.header = header
        self.field = field
        self.value = value
        super().__init__(f"{header}-bad-{field}", f"{field}={value!r}")
