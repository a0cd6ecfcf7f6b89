"""Tools for users' own property tests: hypothesis strategies for headers,
frames and whole scenarios (`emu.testing.strategies`).

They need hypothesis, part of the `[test]` extra (with pytest and scapy);
importing this package without it says which extra to install instead of
failing deep inside an import::

    from emu.testing import strategies as emu_st
"""

from emu.extras import missing_extra

try:
    import hypothesis  # noqa: F401
except ImportError as error:
    raise missing_extra("test", "emu.testing (hypothesis strategies)", error) from None
