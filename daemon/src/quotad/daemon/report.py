"""Text and JSON rendering of what read commands print (``quotad status``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

import msgspec

from quotad.protocol.messages import StatusReply, TargetStatus

RECENT_SHOWN = 30
"""Outcomes shown per target by ``quotad target list`` (the last of up to 100 kept)."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _until(deadline: float | None) -> str:
    if deadline is None:
        return "-"
    left = deadline - time.time()
    return f"{left:.1f}s" if left > 0 else "-"


def format_status(status: StatusReply) -> str:
    """``quotad status`` as text."""
    out = [
        f"quotad {status.daemon_version}  pid {status.pid}  up {status.uptime_s:.0f}s  "
        f"socket {status.socket}" + (f"  http {status.http}" if status.http else ""),
        f"config {status.config_path}  connections {status.connections}  "
        f"in flight {status.in_flight}  requests {status.requests_total}",
    ]
    if status.targets:
        out += ["", "targets"]
        out.append(
            table(
                [
                    "target",
                    "state",
                    "breaker",
                    "health",
                    "in flight",
                    "requests",
                    "failures",
                    "paused",
                ],
                [
                    [
                        t.name + (" (unpriced)" if t.unpriced else ""),
                        "enabled" if t.enabled else "disabled",
                        _breaker(t),
                        t.health if t.uptime_pct is None else f"{t.health} {t.uptime_pct:.0f}%",
                        t.in_flight,
                        t.requests,
                        t.failures,
                        _until(t.paused_until),
                    ]
                    for t in status.targets
                ],
            )
        )
    if status.groups:
        out += ["", "groups"]
        out.append(
            table(
                ["group", "strategy", "order", "why"],
                [[g.name, g.strategy, " > ".join(g.order), g.why] for g in status.groups],
            )
        )
    if status.gates:
        out += ["", "gates"]
        rows = []
        for gate in status.gates:
            for window in gate.windows:
                seen = (
                    f"  (provider says {window.provider_remaining} left)"
                    if window.provider_remaining is not None
                    else ""
                )
                rows.append(
                    [
                        gate.name,
                        gate.scope,
                        f"{window.used}/{window.limit} {window.unit} per {window.window_s:g}s"
                        + seen,
                        _until(gate.paused_until),
                    ]
                )
        out.append(table(["gate", "scope", "used/limit", "paused"], rows))
    queues = status.queues
    out += [
        "",
        f"queued  critical {queues.critical}  high {queues.high}  normal {queues.normal}  "
        f"low {queues.low}",
    ]
    cache = status.cache
    if cache.mode != "off":
        out.append(
            f"cache   {cache.entries} entries, "
            f"{cache.bytes / 1e6:.1f}/{cache.max_bytes / 1e6:.0f} MB,"
            f" hit rate {cache.hit_rate:.0%} ({cache.hits} hits, {cache.misses} misses),"
            f" saved ${cache.saved_usd:.4f}"
        )
    if status.budgets:
        out += ["", "budgets"]
        out.append(
            table(
                ["budget", "period", "spent", "reserved", "limit", "use"],
                [
                    [
                        b.name,
                        b.period,
                        f"${b.spent_usd:.4f}",
                        f"${b.reserved_usd:.4f}",
                        f"${b.limit_usd:.2f}",
                        f"{(b.spent_usd / b.limit_usd if b.limit_usd else 0):.0%}"
                        + ("  ALERT" if b.alert else ""),
                    ]
                    for b in status.budgets
                ],
            )
        )
    if status.apps:
        out += ["", "apps"]
        out.append(
            table(
                ["app", "priority", "share", "requests", "in flight", "queued", "spend today"],
                [
                    [
                        a.name,
                        a.priority,
                        f"{a.share:g}",
                        a.requests,
                        a.in_flight,
                        a.queued,
                        f"${a.spend_today_usd:.4f}",
                    ]
                    for a in status.apps
                ],
            )
        )
    if status.events:
        out += ["", "events"]
        for event in status.events[-10:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            out.append(f"{stamp}  {event.kind}: {event.message}")
    return "\n".join(out)


def _breaker(target: TargetStatus) -> str:
    if target.breaker == "open" and target.breaker_until is not None:
        return f"open {_until(target.breaker_until)}"
    return target.breaker


def format_targets(targets: Sequence[TargetStatus]) -> str:
    """``quotad target list`` as text."""
    if not targets:
        return "no targets"
    rows = [
        [
            t.name,
            "enabled" if t.enabled else "disabled",
            _breaker(t),
            t.breaker_opens,
            t.health,
            "-" if t.uptime_pct is None else f"{t.uptime_pct:.1f}%",
            "-" if t.latency_ewma_s is None else f"{t.latency_ewma_s * 1000:.0f} ms",
            t.in_flight,
            t.requests,
            t.failures,
            t.recent[-RECENT_SHOWN:],
        ]
        for t in targets
    ]
    headers = [
        "target",
        "state",
        "breaker",
        "opens",
        "health",
        "uptime",
        "latency",
        "in flight",
        "requests",
        "failures",
        "recent (. ok  x failed  r 429  h/H check)",
    ]
    return table(headers, rows)


def print_targets(
    targets: Sequence[TargetStatus], *, as_json: bool, stream: TextIO = sys.stdout
) -> None:
    """Print ``quotad target list``."""
    if as_json:
        stream.write(msgspec.json.encode(list(targets)).decode() + "\n")
    else:
        stream.write(format_targets(targets) + "\n")


def print_status(status: StatusReply, *, as_json: bool, stream: TextIO = sys.stdout) -> None:
    """Print ``quotad status``."""
    if as_json:
        stream.write(msgspec.json.encode(status).decode() + "\n")
    else:
        stream.write(format_status(status) + "\n")
