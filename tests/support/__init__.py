"""Helpers the tests share: real sim and daemon processes, ports, temp sockets."""

from __future__ import annotations

import quotad.daemon  # noqa: F401  (first: httpx without its command line, see there)
