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
