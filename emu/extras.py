"""Optional dependencies, imported when first needed, with one clear error.

Why: `pip install emu` brings only what the `emu` command needs (pyyaml,
click, rich, numpy, dpkt). What only some users need is an extra of the
package (pyproject.toml): `[scapy]` for the Python API's scapy interop,
`[test]` for `emu.testing` (hypothesis, pytest, scapy), `[bench]` for
`emu bench` (matplotlib, scapy), `[etcd]` for leases in a real etcd
(etcd3gw). A missing one must say which extra to install instead of failing
deep inside an import. This module imports nothing itself.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def missing_extra(extra: str, feature: str, error: ImportError) -> ImportError:
    """The ImportError to raise when `feature` lacks a module of `extra`:
    one line naming the missing module and the install command."""
    missing = error.name or str(error)
    message = (f"{feature} needs the [{extra}] extra ({missing} is missing): pip install 'emu[{extra}]' "
               f"(from a source checkout: pip install -e '.[{extra}]')")
    return ImportError(message, name=error.name)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or the ImportError of `missing_extra`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing_extra(extra, feature, error) from None
