"""The records a :class:`~.window.FleetWindow` keeps of what this host holds and admitted:
a borrowed slice (:class:`Lease`), closed admissions leaving the window at one grid time
(:class:`Bucket`), an admission made while Redis was unreachable (:class:`OwnAdmission`), and
what one admission took and from where (:class:`Taken`, of :class:`Part`), which settling
later resizes. Plain data: the window does the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Bucket:
    """This host's closed admissions that leave the window at one grid time."""

    entry: str
    expiry_us: int
    expires: float
    """The local time by which it has surely left."""
    amount: int = 0


@dataclass(slots=True, eq=False)
class Lease:
    """A borrowed slice of the window."""

    entry: str
    granted: int
    sent_at: float
    granted_us: int
    expiry_us: int
    deadline: float
    used: int = 0
    last_at: float = -math.inf
    closed: bool = False
    bucket: Bucket | None = None


@dataclass(slots=True, eq=False)
class OwnAdmission:
    """An admission made while Redis was unreachable (not yet in the fleet's log)."""

    time: float
    amount: int
    bucket: Bucket | None = None
    live: bool = True
    """Still counted in :attr:`.window.FleetWindow.own_live` (inside its span, not pushed)."""


@dataclass(slots=True, eq=False)
class Part:
    """Units of one admission taken from one source."""

    source: Lease | OwnAdmission
    amount: int


@dataclass(slots=True, eq=False)
class Taken:
    """What one admission took of a fleet window (settled later with
    :meth:`.window.FleetWindow.resize`)."""

    parts: list[Part] = field(default_factory=list)

    @property
    def amount(self) -> int:
        """The units this admission counts for now."""
        return sum(part.amount for part in self.parts)
