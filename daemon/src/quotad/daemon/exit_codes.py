"""The exit codes of the ``quotad`` command (DESIGN §3), for every subcommand: the ones that
talk to a daemon, and ``serve`` itself."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
"""The command failed (a refused request, a daemon that could not start)."""
EXIT_USAGE: Final = 2
"""A usage or config error."""
EXIT_UNREACHABLE: Final = 3
"""No daemon answered."""
