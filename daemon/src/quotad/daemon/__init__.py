"""The quotad daemon: server, broker, gates, routing, providers, store."""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    # ``import httpx`` also imports httpx's command-line client when click and rich happen to
    # be installed (rich comes with quotad-tui, click with the semantic extra's model hub):
    # a third of a second at every start of the daemon, for a CLI it never runs.
    # A None entry makes that one import fail, and httpx falls back to its stub for a missing
    # CLI (encode/httpx#3547, open, would move it out of httpx/__init__.py).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
