"""The fleet's spend by day, host, app, model and target, for ``quotad spend --fleet``.

Each host keeps its own figures per ``(day, app, model, target)`` (loaded from its ledger's
``spend_daily`` at start, added to as requests settle) and pushes them, absolute, into one
hash per day (``{p}:spend:<day>``, field ``host\\tapp\\tmodel\\ttarget``, value ``cost_nano
requests prompt_tokens completion_tokens``) with the budget syncs: a push sent twice counts
once, and a Redis restarted empty gets every day back. :func:`read_fleet_spend` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from quotad.daemon.cluster.link import Link

SPEND_TTL_S: Final = 62 * 86400
KEPT_DAYS: Final = 62
MAX_FIELD_LENGTH: Final = 600
Figures = list[int]
"""``[cost nano-USD, requests, prompt tokens, completion tokens]``."""


@dataclass(frozen=True, slots=True)
class FleetSpendRow:
    """One host's spend on one day for one app, model and target."""

    day: str
    host: str
    app: str
    model: str
    target: str
    cost_usd: float
    requests: int
    prompt_tokens: int
    completion_tokens: int


class FleetSpend:
    """This host's spend per day, app, model and target, and what is not pushed yet."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ttl_s = SPEND_TTL_S
        self.days: dict[str, dict[tuple[str, str, str], Figures]] = {}
        self.dirty: dict[str, set[tuple[str, str, str]]] = {}

    def load(self, rows: Iterable[tuple[str, str, str, str, float, int, int, int]]) -> None:
        """Set from the ledger: ``(day, app, model, target, cost, requests, prompt,
        completion)`` rows (its ``spend_daily``)."""
        self.days.clear()
        for day, app, model, target, cost, requests, prompt, completion in rows:
            figures = [math.ceil(round(cost * 1e9, 3)), requests, prompt, completion]
            self.days.setdefault(day, {})[(app, model, target)] = figures
        self._forget_old()

    def add(
        self,
        day: str,
        app: str,
        model: str,
        target: str,
        cost_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """A request settled."""
        key = (app, model, target)
        figures = self.days.setdefault(day, {}).setdefault(key, [0, 0, 0, 0])
        figures[0] += math.ceil(round(cost_usd * 1e9, 3))
        figures[1] += 1
        figures[2] += prompt_tokens
        figures[3] += completion_tokens
        self.dirty.setdefault(day, set()).add(key)
        if len(self.days) > KEPT_DAYS:
            self._forget_old()

    def _forget_old(self) -> None:
        for day in sorted(self.days)[:-KEPT_DAYS]:
            del self.days[day]
            self.dirty.pop(day, None)

    def fields(self, *, everything: bool) -> dict[str, list[tuple[str, str]]]:
        """The hash fields to push, per day (and marked pushed: :meth:`unsent` if not)."""
        wanted = {day: set(rows) for day, rows in self.days.items()} if everything else self.dirty
        self.dirty = {}
        out: dict[str, list[tuple[str, str]]] = {}
        for day, keys in wanted.items():
            rows = self.days.get(day, {})
            out[day] = [
                (
                    "\t".join((self.host, *key))[:MAX_FIELD_LENGTH],
                    " ".join(str(value) for value in rows[key]),
                )
                for key in keys
                if key in rows
            ]
        return out

    def unsent(self, days: dict[str, list[tuple[str, str]]]) -> None:
        """Fields that could not be pushed: push them next time."""
        for day, fields in days.items():
            keys = self.dirty.setdefault(day, set())
            for name, _ in fields:
                parts = name.split("\t")
                if len(parts) == 4:
                    keys.add((parts[1], parts[2], parts[3]))


async def read_fleet_spend(link: Link, days: Iterable[str]) -> list[FleetSpendRow]:
    """Every host's spend on ``days``, as the fleet's Redis has it."""
    rows: list[FleetSpendRow] = []
    for day in days:
        fields = await link.read_hash(link.keys.spend_day(day))
        for name, value in fields.items():
            row = _parse(day, name, value)
            if row is not None:
                rows.append(row)
    return rows


def _parse(day: str, name: Any, value: Any) -> FleetSpendRow | None:
    try:
        host, app, model, target = _text(name).split("\t")
        cost, requests, prompt, completion = (int(part) for part in _text(value).split(" "))
    except ValueError:
        return None
    return FleetSpendRow(day, host, app, model, target, cost / 1e9, requests, prompt, completion)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
