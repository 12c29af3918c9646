"""Fixtures: simulated vLLM servers on 127.0.0.1, ports picked at run time (tests/control/support.py)."""

from tests.control.support import sims  # noqa: F401  (a fixture, re-exported for pytest)
