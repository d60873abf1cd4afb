"""What each app has done since the daemon started, for ``quotad status`` and ``quotad top``:
requests, in flight, time waited for gates, spend today (loaded from the ledger at start), and
what the guardrails found in its requests and replies (entities by kind, requests refused).
Apps are named by clients, so at most :data:`MAX_TRACKED_APPS` are kept apart, besides the apps
the config declares: those always are, so that clients naming apps without end cannot fold
them into :data:`OTHER_APPS`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from quotad.daemon.declared_names import DeclaredNames

MAX_TRACKED_APPS: Final = 1000
"""Apps are named by clients: past this many, new names are counted under ``OTHER_APPS``."""
OTHER_APPS: Final = "(other)"


@dataclass(slots=True)
class AppActivity:
    """What one app has done since the daemon started (spend: on ``day`` only)."""

    requests: int = 0
    in_flight: int = 0
    wait_s_total: float = 0.0
    spend_today_usd: float = 0.0
    day: str = ""
    blocked: int = 0
    entities: dict[str, int] = field(default_factory=dict)


class AppActivityLog:
    """Every app's activity, by name."""

    __slots__ = ("_apps", "declared")

    def __init__(self) -> None:
        self._apps: dict[str, AppActivity] = {}
        self.declared = DeclaredNames()
        """The config's names: its apps are kept apart past the bound too."""

    def of(self, app: str) -> AppActivity:
        """The activity of ``app`` (made on first use; past :data:`MAX_TRACKED_APPS` apps,
        that of :data:`OTHER_APPS`)."""
        activity = self._apps.get(app)
        if activity is None:
            activity = self._apps.setdefault(self.tracked_name(app), AppActivity())
        return activity

    def tracked_name(self, app: str) -> str:
        """The name ``app``'s activity is kept under: its own while there is room for it (or
        it has its own already, or the config declares it), else :data:`OTHER_APPS`. The
        metrics label apps by it."""
        if app in self._apps or len(self._apps) < MAX_TRACKED_APPS or app in self.declared.apps:
            return app
        return OTHER_APPS

    def finished(self, app: str, wait_s: float, day: str, cost_usd: float) -> None:
        """A request of ``app`` ended on ``day``: its wait and its cost."""
        activity = self.of(app)
        activity.wait_s_total += wait_s
        if activity.day != day:
            activity.day, activity.spend_today_usd = day, 0.0
        activity.spend_today_usd += cost_usd

    def found(self, app: str, entities: Mapping[str, int], blocked: bool) -> None:
        """The guardrails found ``entities`` (by kind) in a request of ``app`` and its reply,
        and refused it if ``blocked``."""
        activity = self.of(app)
        activity.blocked += blocked
        for kind, count in entities.items():
            activity.entities[kind] = activity.entities.get(kind, 0) + count

    def load_spend(self, spent: Iterable[tuple[str, float, float]], day: str) -> None:
        """Today's spend per app from the ledger (``(app, today, month)``), at start."""
        for app, today, _ in spent:
            activity = self.of(app)
            activity.day, activity.spend_today_usd = day, today

    def names(self) -> set[str]:
        """Every app seen."""
        return set(self._apps)

    def get(self, app: str) -> AppActivity | None:
        """The activity of ``app``, if it was seen."""
        return self._apps.get(app)
