"""How the daemon's figures read for people: money, byte sizes, and the limit in force of a gate
window. One home for both readers of them, the ``quotad`` command and ``quotad top`` (each
depends on quotad-client; this module imports only the messages).

- Money is US dollars with at least two significant digits and at most six decimals
  (``$0.42``, ``$0.021``, ``$0.000022``, ``$1,234.56``), so a small budget or a cheap call
  never reads ``$0.00``; a non-zero amount under half a millionth of a dollar reads
  ``<$0.000001``. Machine output (CSV) uses :func:`usd_plain`: a plain decimal with a fixed
  :data:`PLAIN_USD_DECIMALS` decimals, never exponent notation.
- Sizes are binary: 1 KiB = 1024 bytes, 1 MiB = 1024 KiB, 1 GiB = 1024 MiB. Config keys that
  end in ``_mb`` (``cache.max_mb``, ``daemon.max_db_mb``, ``http.max_body_mb``) are MiB.
- A gate window's limit in force is the tighter of its configured limit and what the
  provider's own count leaves (:func:`window_in_force`).
- A target's health says why it is degraded (:func:`health_text`): ``degraded 2/10`` is two
  failures among its last ten outcomes. Uptime (the share of time its breaker was closed) is
  shown apart: a target can be degraded and never have been down.
- In a fleet, a budget says whose figures it shows (:func:`budget_whose`): ``fleet 1s ago``
  (every host's, as last heard from Redis) or ``this host only`` (the fleet's not known).
"""

from __future__ import annotations

import math
from typing import Final

from quotad.protocol.messages import BudgetStatus, TargetStatus, WindowStatus

MAX_USD_DECIMALS: Final = 6
PLAIN_USD_DECIMALS: Final = 8
_SMALLEST_USD: Final = "<$0.000001"
RECENT_HEALTH_OUTCOMES: Final = 10
"""The last outcomes a failure among which makes a target ``degraded`` (the daemon's
``routing.health.DEGRADED_WINDOW``)."""
_FAILED_OUTCOMES: Final = frozenset("xH")


def usd(value: float | None) -> str:
    """Dollars for people: two significant digits at least, six decimals at most; ``-`` for
    None."""
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if magnitude >= 1.0:
        return f"{sign}${magnitude:,.2f}"
    if magnitude == 0.0:
        return "$0.00"
    decimals = min(MAX_USD_DECIMALS, max(2, 1 - math.floor(math.log10(magnitude))))
    text = f"{magnitude:.{decimals}f}"
    if text == "1." + "0" * decimals:  # 0.999 rounds up to a dollar
        return f"{sign}$1.00"
    if not text.strip("0."):
        return _SMALLEST_USD if not sign else "-" + _SMALLEST_USD
    return f"{sign}${text}"


def usd_plain(value: float) -> str:
    """Dollars for machines: a plain decimal with :data:`PLAIN_USD_DECIMALS` decimals."""
    text = f"{value:.{PLAIN_USD_DECIMALS}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00…"


def size(value: int | float) -> str:
    """A byte count in B, KiB, MiB or GiB (binary units)."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB"):
        if abs(amount) < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def window_in_force(window: WindowStatus) -> tuple[int, int]:
    """``(used, limit)`` of a gate window as they bind now.

    When the provider's rate-limit headers say its count is ahead of ours (other users of the
    same account), the window's ``used`` includes that outside use and ``provider_remaining``
    is what the configured limit leaves after it: then that is the limit in force, and the
    used part of it is this daemon's own. Otherwise the configured limit is in force.
    """
    if window.provider_remaining is None or window.provider_remaining >= window.limit:
        return window.used, window.limit
    outside = window.limit - window.provider_remaining
    return max(0, window.used - outside), max(0, window.provider_remaining)


def health_text(target: TargetStatus) -> str:
    """A target's health and, when recent failures degrade it, how many of its last
    :data:`RECENT_HEALTH_OUTCOMES` outcomes failed (``degraded 2/10``)."""
    health = target.health.replace("_", " ")
    if target.health != "degraded" or target.breaker != "closed":
        return health  # a half-open or open breaker says why, in its own column
    recent = target.recent[-RECENT_HEALTH_OUTCOMES:]
    failed = sum(outcome in _FAILED_OUTCOMES for outcome in recent)
    return f"{health} {failed}/{len(recent)}" if failed else health


def budget_whose(budget: BudgetStatus, now: float) -> str:
    """Whose figures a fleet's budget shows: ``fleet 1s ago`` (every host's, as this host last
    heard them at ``budget.as_of``, ``now`` being wall time) or ``this host only``."""
    if not budget.fleet:
        return "this host only"
    return f"fleet {max(0.0, now - budget.as_of):.0f}s ago"
