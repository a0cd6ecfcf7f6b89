"""Tools for users' own property tests: hypothesis strategies for headers,
frames and whole scenarios (`emu.testing.strategies`).

They need the `[test]` extra (hypothesis, pytest); importing this package
without them says so instead of failing deep inside an import::

    from emu.testing import strategies as emu_st
"""

try:
    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a bare venv
    raise ImportError(f"emu.testing needs the [test] extra ({error.name} is missing): "
                      "pip install 'emu[test]'") from error
