"""``quotad demo --headless``: the main job of the quick start runs whole and exits 0, and the
providers it drives see no 429 through the shared gates."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

DURATION = "4"
"""Seconds of load: two windows of the tighter sim (20 requests per 2 s), which the demo's load
fills, so the gates are seen to hold it; every app gets dozens of replies in it."""


@pytest.mark.slow
def test_headless_demo_runs_and_the_providers_see_no_429() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "demo", "--headless", "--duration", DURATION],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for app in ("agent", "indexer", "notebook"):
        ok = re.search(rf"^  {app} .* ok +(\d+)", out, re.MULTILINE)
        assert ok is not None, out
        assert int(ok[1]) > 0, out
    seen = re.search(r"the providers saw (\d+) requests: (\d+) answered 429", out)
    assert seen is not None, out
    assert int(seen[1]) > 0
    assert int(seen[2]) == 0, out
