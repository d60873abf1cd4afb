"""What starting the daemon imports: httpx without its command-line client, which it would
otherwise load (click, rich, pygments) whenever those are installed, as they are with
quotad-tui and the semantic extra: a third of a second or more at every start."""

from __future__ import annotations

import subprocess
import sys

CLI_MODULES = ("httpx._main", "click", "rich", "pygments")


def test_the_daemon_imports_httpx_without_its_command_line() -> None:
    code = (
        "import sys, quotad.daemon.runtime\n"
        "assert 'httpx' in sys.modules, 'httpx not imported: this test checks nothing'\n"
        f"print(sorted(m for m in {CLI_MODULES!r} if sys.modules.get(m) is not None))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_check_can_fail() -> None:
    """httpx's command line is there to load in this environment (click and rich installed),
    so the test above would see it."""
    code = "import sys, httpx; print(sys.modules.get('httpx._main') is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
