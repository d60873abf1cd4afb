"""The names the config declares: its apps, what a request may name as its model (groups,
targets and their bare models), and its targets. Apps and models are named by clients, so what
the daemon keeps apart by name is bounded and the rest is counted under ``(other)``; the
config's own names are always kept apart (in ``quotad status`` and ``top``, ``/metrics`` and
``spend --fleet``), whatever clients named first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeclaredNames:
    """The config's apps, models and targets (none until the daemon is configured)."""

    apps: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, apps: Iterable[str], groups: Iterable[str], targets: Iterable[str]
    ) -> DeclaredNames:
        """From the config's apps and model groups, and its targets (``provider/model``), each
        of which a request may also name by its bare model."""
        targets = frozenset(targets)
        bare_models = {target.partition("/")[2] for target in targets}
        return cls(frozenset(apps), frozenset(groups) | targets | bare_models, targets)

    def spend_key(self, key: tuple[str, str, str]) -> bool:
        """Whether an ``(app, model, target)`` key of the spend is the config's own (a request
        that reached no target has none)."""
        app, model, target = key
        return app in self.apps and model in self.models and (not target or target in self.targets)
