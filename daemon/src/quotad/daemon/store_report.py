"""Text of what the store holds, as the read commands print it: ``quotad cache stats`` (the
exact cache, then the semantic cache) and ``quotad keys list``. The tables and times read as
the rest of :mod:`quotad.daemon.report` writes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quotad.daemon.report import local_time, table
from quotad.protocol.figures import size, usd
from quotad.protocol.messages import CacheStatus

# --------------------------------------------------------------------------- quotad cache


def format_cache(cache: CacheStatus) -> str:
    """``quotad cache stats`` as text: the exact cache, then the semantic cache (its hits
    apart, shadow mode's would-be hits and how often their answers agreed)."""
    if cache.mode == "off":
        return 'cache off ([cache] mode = "off")'
    lines = [
        f"entries    {cache.entries}",
        f"size       {size(cache.bytes)} of {size(cache.max_bytes)}",
        f"hits       {cache.hits} exact"
        + (f", {cache.semantic_hits} semantic" if cache.semantic_mode != "off" else ""),
        f"misses     {cache.misses}",
        f"hit rate   {cache.hit_rate:.1%}",
        f"evictions  {cache.evictions}",
        f"saved      {usd(cache.saved_usd)} (since the daemon started)",
    ]
    return "\n".join([*lines, "", *format_semantic(cache)])


def format_semantic(cache: CacheStatus) -> list[str]:
    """The semantic cache's lines of ``quotad cache stats`` (DESIGN §11)."""
    mode = cache.semantic_mode
    if mode == "off":
        return ['semantic cache off ([cache.semantic] mode = "off")']
    lines = [
        f"semantic cache {mode}"
        + (f": NOT RUNNING, {cache.semantic_problem}" if cache.semantic_problem else "")
    ]
    lines += [
        f"  questions held   {cache.semantic_entries}",
        f"  lookups          {cache.semantic_lookups} (exact misses asked in other words)",
        f"  semantic hits    {cache.semantic_hits}, saved {usd(cache.semantic_saved_usd)}",
    ]
    if mode == "shadow" or cache.would_be_hits:
        compared = cache.shadow_compared
        agreed = f"{cache.shadow_agreed / compared:.0%}" if compared else "-"
        lines += [
            f"  would-be hits    {cache.would_be_hits} (shadow: not served, provider called)",
            f"  agreed           {cache.shadow_agreed} of {compared} compared ({agreed}); "
            f"word for word {cache.shadow_identical}",
        ]
    if cache.semantic_ineligible:
        lines.append(f"  not asked        {_counts(cache.semantic_ineligible)}")
    if cache.semantic_refused:
        lines.append(f"  refused          {_counts(cache.semantic_refused)}")
    return lines


def _counts(counts: dict[str, int]) -> str:
    """``reason N, reason N`` most first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason} {count}" for reason, count in ordered)


# --------------------------------------------------------------------------- quotad keys


def format_keys(keys: Sequence[dict[str, Any]]) -> str:
    """``quotad keys list`` as text."""
    if not keys:
        return "no keys (create one with: quotad keys create --app APP)"
    return table(
        ["id", "app", "key starts", "created", "revoked"],
        [
            [
                key["id"],
                key["app"],
                key["prefix"] + "…",
                local_time(key["created"]),
                local_time(key["revoked"]) if key["revoked"] else "-",
            ]
            for key in keys
        ],
    )
