"""The sliding windows a ``[providers.X]``, ``[providers.X.models."m"]`` or ``[apps.A]`` table
configures (``rpm``, ``tpm``, ``rpd``, ``tpd``, ``limits``), and what each scope's windows do by
default: whether they pace, and whether a settle gives back the tokens a reply did not use."""

from __future__ import annotations

from quotad.daemon.config import RateLimits
from quotad.daemon.gates.window import Scope, SlidingWindow, Unit

PACED_BY_DEFAULT: dict[Scope, bool] = {"provider": True, "model": True, "app": False}
"""Whether a scope's gates pace when the config does not say (``pace``): a provider enforces
its limits over slices shorter than their window, an app's limit is quotad's alone."""


REFUNDED_BY_SCOPE: dict[Scope, bool] = {"provider": False, "model": False, "app": True}
"""Whether a settle gives back reserved tokens a reply did not use. A provider counts a
request's ``max_tokens`` when it arrives and never gives back what went unused (OpenAI; the
sim), so its gates keep them too: given back, they let the next requests past the provider's
own count (a probe saw 4 of 20 requests answered 429 at ``max_tokens`` 500 against a 4,000-token
limit). An app's limit is quotad's alone: its gates count what was used."""


def configured_windows(
    limits: RateLimits, scope: Scope, guard_s: float, burst: float
) -> list[SlidingWindow]:
    """The sliding windows a provider, model or app table configures; paced (with ``burst``)
    as its ``pace`` key says, else as its scope does by default."""
    paced = PACED_BY_DEFAULT[scope] if limits.pace is None else limits.pace
    burst = burst if paced else 1.0
    refunds = REFUNDED_BY_SCOPE[scope]
    configured: list[tuple[Unit, int | None, float]] = [
        ("requests", limits.rpm, 60.0),
        ("tokens", limits.tpm, 60.0),
        ("requests", limits.rpd, 86400.0),
        ("tokens", limits.tpd, 86400.0),
    ]
    for extra in limits.limits:
        configured += [("requests", extra.requests, extra.window_s)]
        configured += [("tokens", extra.tokens, extra.window_s)]
    return [
        SlidingWindow(unit, value, window_s, guard_s, burst, refunds=refunds)
        for unit, value, window_s in configured
        if value is not None
    ]
