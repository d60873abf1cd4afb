"""The Lua scripts of the fleet, one per decision (see each file's opening comment for its
keys, arguments and reply). Each runs as one atomic step on the server, uses ``redis.call``
only (so it runs on Redis 7 and Valkey) and reads time from ``TIME`` only; every key of one
call shares the hash tag ``{key_prefix}``. :data:`SCRIPTS` holds each script's full text:
the shared prelude (``_prelude.lua``, and ``_budget.lua`` for the budget scripts) then its
own body."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

_HERE = files(__name__)


def _read(name: str) -> str:
    return (_HERE / name).read_text(encoding="utf-8")


def _build() -> dict[str, str]:
    prelude = _read("_prelude.lua")
    budget = _read("_budget.lua")
    scripts = {}
    for name in ("borrow", "settle", "observe", "pause", "snapshot", "heartbeat"):
        scripts[name] = prelude + "\n" + _read(f"{name}.lua")
    for name in ("budget_borrow", "budget_sync"):
        scripts[name] = prelude + "\n" + budget + "\n" + _read(f"{name}.lua")
    return scripts


SCRIPTS: Final = _build()
"""Script name → its Lua text."""
