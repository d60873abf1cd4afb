"""Who sent a request (:class:`Caller`): the app it names, how it came, and the peer process
when the socket knows it (SO_PEERCRED). The front ends build one per request; the pipeline
records it on the request's ledger row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the app it names, and the peer process when known (SO_PEERCRED)."""

    app: str
    via: str = "socket"
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
