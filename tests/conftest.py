"""Hypothesis settings profiles: "ci" (selected when CI=true) digs deeper than "dev".

CI is derandomized: the same examples on every run, so a red CI always means
a regression in the code, never a newly drawn corner case; "dev" draws fresh
examples every run and is where new corners are found.
"""

import os

from hypothesis import HealthCheck, settings

# No deadline and no too_slow health check: both measure wall-clock time, and
# the suite must pass on a loaded machine.
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# EMU_FASTPATH=off: the suite without the fast path. emu.fastpath cannot be
# imported at all (a meta-path blocker: any import of it anywhere raises), the
# scenario builder installs no flow cache (emu/scenario/build.py, also in the
# CLI subprocesses), and the test modules that test the fast path itself
# (they import it at the top) are not collected. Every other test must pass:
# the slow path stands alone ("the fast path can be removed by not importing it").
if os.environ.get("EMU_FASTPATH") == "off":
    import re
    import sys
    from importlib.abc import MetaPathFinder
    from pathlib import Path

    class _NoFastPath(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "emu.fastpath" or name.startswith("emu.fastpath."):
                raise ModuleNotFoundError(f"EMU_FASTPATH=off: {name} may not be imported", name=name)
            return None

    sys.meta_path.insert(0, _NoFastPath())
    _IMPORTS_FASTPATH = re.compile(r"^(from emu\.fastpath\b|import emu\.fastpath\b)", re.M)
    collect_ignore = [path.name for path in Path(__file__).parent.glob("test_*.py")
                      if _IMPORTS_FASTPATH.search(path.read_text())]
