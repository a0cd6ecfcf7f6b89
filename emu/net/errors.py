"""Socket errors, one way: the errno a Linux system call would fail with.

Why: sockets (UDP, TCP, raw), the stack's local sends, ping and nc all
refuse things the way the kernel does, and their callers (nc printing
"bind failed: Address already in use", ping printing "Message too long",
sendmmsg stopping at a refused datagram, a VTEP counting a drop) need the
errno's name. `SocketError` is an `OSError` as Python's own sockets raise
it: `errno` is the number (`errno.EADDRINUSE`), `strerror` glibc's text,
`errno_name` the symbol; `detail` says more (which port, which namespace)
and `mtu` is the path MTU an EMSGSIZE refers to. Nothing else carries an
errno: no "EADDRINUSE: ..." strings to parse, no second exception class.
"""

from __future__ import annotations

import errno as _errno

# glibc's strerror texts (what nc and ping print), fixed here so the output
# does not depend on the host's C library.
STRERROR = {
    "EADDRINUSE": "Address already in use",
    "EADDRNOTAVAIL": "Cannot assign requested address",
    "ENETUNREACH": "Network is unreachable",
    "EHOSTUNREACH": "No route to host",
    "EMSGSIZE": "Message too long",
    "ECONNREFUSED": "Connection refused",
    "ECONNRESET": "Connection reset by peer",
    "ETIMEDOUT": "Connection timed out",
    "EPIPE": "Broken pipe",
    "ENOTCONN": "Transport endpoint is not connected",
    "EISCONN": "Transport endpoint is already connected",
    "EINVAL": "Invalid argument",
    "EDESTADDRREQ": "Destination address required",
    "EPERM": "Operation not permitted",
    "EAGAIN": "Resource temporarily unavailable",
    "EHOSTDOWN": "Host is down",
    "ENONET": "Machine is not on the network",
    "ENOPROTOOPT": "Protocol not available",
    "EOPNOTSUPP": "Operation not supported",
    "EPROTO": "Protocol error",
}


class SocketError(OSError):
    """A call the kernel refuses with errno `name` (e.g. "EADDRINUSE")."""

    def __init__(self, name: str, detail: str | None = None, mtu: int | None = None) -> None:
        number = getattr(_errno, name, None) if name in STRERROR else None
        if not isinstance(number, int):
            raise ValueError(f"errno: {name!r} is not one of {', '.join(sorted(STRERROR))}")
        super().__init__(number, STRERROR[name])
        self.detail = detail
        self.mtu = mtu

    @property
    def errno_name(self) -> str:
        return _errno.errorcode[self.errno]

    def __str__(self) -> str:
        text = f"{self.errno_name}: {self.strerror}"
        return f"{text} ({self.detail})" if self.detail else text
