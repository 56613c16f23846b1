"""A pytest plugin for ``benchmarks.reliability``: each test's peak resident memory and duration.

Before a test's call phase it resets the process's resident-set high-water mark (Linux:
``/proc/self/clear_refs`` takes ``5``); after it, it appends ``{"test", "peak_mib", "seconds"}``
to the JSON-lines file named by ``$LIGHTNING_FILM_PEAKS``. The peak is the whole process's
(torch and the fixtures included), so it is what a ``lightning-film`` process would need.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

_ENV = "LIGHTNING_FILM_PEAKS"


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    out = os.environ.get(_ENV)
    if not out:
        yield
        return
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    yield
    record = {"test": item.nodeid, "peak_mib": round(_peak_mib(), 1), "seconds": round(time.perf_counter() - start, 2)}
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
