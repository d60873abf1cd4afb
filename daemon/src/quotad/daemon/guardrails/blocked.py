"""The refusal of a guardrail: :class:`Blocked`, the request error with code ``blocked``.

It names the entity kinds that were found with the action ``block`` and says whether they
were in the request or the reply; it never holds a value. The Unix-socket server answers it
as any :class:`~quotad.daemon.errors.RequestError` (an ``Error`` frame; the client raises
``BlockedError``), the HTTP front door as a 400 in each API's error shape.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

from quotad.daemon.config import EntityKind
from quotad.daemon.errors import RequestError

Direction = Literal["input", "output"]


class Blocked(RequestError):
    """A guardrail refused a request (``input``) or its reply (``output``)."""

    def __init__(
        self,
        direction: Direction,
        kinds: Collection[EntityKind],
        counts: Mapping[EntityKind, int],
    ) -> None:
        self.kinds = sorted(kinds)
        self.direction: Direction = direction
        self.counts = dict(counts)
        where = "the request" if direction == "input" else "the reply"
        super().__init__(
            "blocked",
            f"{where} was blocked by a guardrail: it contains {', '.join(self.kinds)}",
            details={"kinds": self.kinds, "direction": direction, "found": self.counts},
        )
