"""Text, JSON and CSV rendering of what read commands print (``quotad status``, ``spend``, the
footer of ``chat``; ``cache stats`` and ``keys list`` are :mod:`.store_report`'s). ``--json``
prints :func:`plain` of a reply (:func:`status_json` for status). Money, sizes and limits in
force read as :mod:`quotad.protocol.figures` writes them, the same as in ``quotad top``."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from quotad.daemon.config import ENTITY_KINDS
from quotad.daemon.terminal import columns, escaped
from quotad.protocol.figures import budget_whose, health_text, size, usd, usd_plain, window_in_force
from quotad.protocol.messages import (
    ChatReply,
    ClusterStatus,
    Message,
    SpendReply,
    SpendRow,
    StatusReply,
    TargetStatus,
    WindowStatus,
)

RECENT_SHOWN = 30
"""Outcomes shown per target by ``quotad target list`` (the last of up to 100 kept)."""
NO_TARGET = "(none)"
"""How text reports name the rows of requests that reached no target (the ledger's ``""``)."""


def plain(value: Any) -> Any:
    """``value`` as plain data for ``--json``: every field of each struct, defaults included,
    through lists and dicts. The wire encoding leaves default values out and adds a message's
    ``type`` tag and request ``id``; neither means anything to a reader, so both are left out."""
    if isinstance(value, msgspec.Struct):
        skip = "id" if isinstance(value, Message) else None
        return {
            field.encode_name: plain(getattr(value, field.name))
            for field in msgspec.structs.fields(value)
            if field.name != skip
        }
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def status_json(status: StatusReply) -> dict[str, Any]:
    """``quotad status --json``: :func:`plain` of the reply, each gate window with the limit
    in force beside the configured one (``limit_in_force``, ``used_in_force``)."""
    data: dict[str, Any] = plain(status)
    for gate, gate_data in zip(status.gates, data["gates"], strict=True):
        for window, window_data in zip(gate.windows, gate_data["windows"], strict=True):
            used, limit = window_in_force(window)
            window_data["limit_in_force"] = limit
            window_data["used_in_force"] = used
    return data


def chat_footer(reply: ChatReply) -> str:
    """The line ``quotad chat`` prints after a reply (plain or streamed) on stderr."""
    usage = reply.usage
    return (
        f"[{reply.target}  {usage.prompt_tokens}+{usage.completion_tokens} tokens  "
        f"{usd(reply.cost_usd)}  wait {reply.wait_s * 1000:.0f} ms  "
        f"{reply.latency_s * 1000:.0f} ms{_cached(reply)}]"
    )


def window_text(window: WindowStatus) -> str:
    """``12/500 requests per 60s``, with the limit in force when the provider's is tighter."""
    used, limit = window_in_force(window)
    text = f"{used}/{limit} {window.unit} per {window.window_s:g}s"
    if limit != window.limit:
        text += f"  (provider's limit now; {window.limit} configured)"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (what a terminal would run written as escapes first, so
    that the columns line up as printed; an app named in CJK takes two columns a
    character)."""
    cells = [[escaped(str(value)) for value in row] for row in rows]
    widths = [columns(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], columns(value))
    lines = [_line(headers, widths)]
    lines += [_line(row, widths) for row in cells]
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = (
        cell + " " * (width - columns(cell)) for cell, width in zip(cells, widths, strict=True)
    )
    return "  ".join(padded).rstrip()


def _section(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a titled table of ``quotad status``: a blank line, the title, the table."""
    return ["", title, table(headers, rows)]


def _until(deadline: float | None) -> str:
    if deadline is None:
        return "-"
    left = deadline - time.time()
    return f"{left:.1f}s" if left > 0 else "-"


def _pace(window: WindowStatus) -> str:
    """A paced window's rate (``1 per 1s``, ``3333 tokens/s``), or ``off``: all at once."""
    if window.pace_s is None:
        return "off"
    if window.unit == "requests":
        return f"1 per {window.pace_s:.3g}s"
    return f"{1 / window.pace_s:.4g} tokens/s"


def format_status(status: StatusReply) -> str:
    """``quotad status`` as text."""
    out = [
        f"quotad {status.daemon_version}  pid {status.pid}  up {status.uptime_s:.0f}s  "
        f"socket {status.socket}" + (f"  http {status.http}" if status.http else ""),
        f"config {status.config_path}  connections {status.connections}  "
        f"in flight {status.in_flight}  permits {status.permits}  "
        f"requests {status.requests_total}",
        *(f"problem: {problem}" for problem in status.problems),
    ]
    if status.targets:
        out += _section(
            "targets",
            [
                "target",
                "state",
                "breaker",
                "health",
                "uptime",
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
                    health_text(t),
                    "-" if t.uptime_pct is None else f"{t.uptime_pct:.1f}%",
                    t.in_flight,
                    t.requests,
                    t.failures,
                    _until(t.paused_until),
                ]
                for t in status.targets
            ],
        )
    if status.groups:
        out += _section(
            "groups",
            ["group", "strategy", "order", "why"],
            [[g.name, g.strategy, " > ".join(g.order), g.why] for g in status.groups],
        )
    if status.gates:
        out += _section(
            "gates",
            ["gate", "scope", "used/limit", "pace", "paused"],
            [
                [
                    gate.name,
                    gate.scope,
                    window_text(window),
                    _pace(window),
                    _until(gate.paused_until),
                ]
                for gate in status.gates
                for window in gate.windows
            ],
        )
    if status.cluster is not None:
        out += ["", *format_cluster(status.cluster)]
    queues = status.queues
    out += [
        "",
        f"queued  critical {queues.critical}  high {queues.high}  normal {queues.normal}  "
        f"low {queues.low}",
    ]
    cache = status.cache
    if cache.mode != "off":
        out.append(
            f"cache   {cache.entries} entries, {size(cache.bytes)}/{size(cache.max_bytes)},"
            f" hit rate {cache.hit_rate:.0%} ({cache.hits} hits, {cache.misses} misses),"
            f" saved {usd(cache.saved_usd)}"
            + (
                f"; semantic {cache.semantic_mode}: {cache.semantic_hits} hits"
                + (f", {cache.would_be_hits} would-be" if cache.would_be_hits else "")
                if cache.semantic_mode != "off"
                else ""
            )
        )
    if status.budgets:
        fleet = status.cluster is not None  # whose figures: the fleet's (reserved: held) or not
        now = time.time()
        out += _section(
            "budgets",
            ["budget", "period", "spent", "reserved", "limit", "use", *(["figures"] * fleet)],
            [
                [
                    b.name,
                    b.period,
                    usd(b.spent_usd),
                    usd(b.reserved_usd) + (" held" if b.fleet else ""),
                    usd(b.limit_usd),
                    f"{(b.spent_usd / b.limit_usd if b.limit_usd else 0):.0%}"
                    + ("  ALERT" if b.alert else ""),
                    *([budget_whose(b, now)] * fleet),
                ]
                for b in status.budgets
            ],
        )
    if status.apps:
        headers = ["app", "priority", "share", "requests", "in flight", "queued", "spend today"]
        guarded = any(a.blocked or a.entities for a in status.apps)
        if guarded:  # what the guardrails found, once they found anything
            headers += ["blocked", "found"]
        out += _section(
            "apps",
            headers,
            [
                [
                    a.name,
                    a.priority,
                    f"{a.share:g}",
                    a.requests,
                    a.in_flight,
                    a.queued,
                    usd(a.spend_today_usd),
                    *([a.blocked, entities_text(a.entities)] if guarded else []),
                ]
                for a in status.apps
            ],
        )
    if status.events:
        out += ["", "events"]
        for event in status.events[-10:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            out.append(f"{stamp}  {event.kind}: {event.message}")
    return "\n".join(out)


def format_cluster(cluster: ClusterStatus) -> list[str]:
    """The fleet as this host sees it: Redis health, the gates' mode, the hosts seen, what
    this host holds of each fleet window."""
    since = max(0.0, time.time() - cluster.since)
    out = [
        f"fleet   host {cluster.host}  redis {cluster.redis_url} ({cluster.key_prefix})  "
        f"{cluster.health} for {since:.0f}s  mode {cluster.mode}  "
        f"hosts seen {cluster.hosts_seen}  rtt {cluster.rtt_ms:.2f}ms",
    ]
    if cluster.health != "connected":
        out.append(f"        {cluster.reason} (on_unreachable = {cluster.on_unreachable})")
    if cluster.hosts:
        out.append(
            table(
                ["host", "seen", "in flight", "queued", "timezone"],
                [
                    [h.name, f"{h.seen_s_ago:.1f}s ago", h.in_flight, h.queued, h.timezone]
                    for h in cluster.hosts
                ],
            )
        )
    if cluster.windows:
        out.append(
            table(
                ["fleet window", "held here", "fleet used"],
                [[w.name, w.held, w.fleet_used] for w in cluster.windows],
            )
        )
    return out


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
            health_text(t),
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


# --------------------------------------------------------------------------- quotad spend


def local_time(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(moment))


SPEND_CSV_FIELDS: Final = tuple(
    name for field in msgspec.structs.fields(SpendRow) if (name := field.name) != "entities"
)
SPEND_CSV_ENTITIES: Final = tuple(f"found_{kind}" for kind in ENTITY_KINDS)
"""The CSV columns of ``SpendRow.entities``: one per entity kind."""


def spend_csv(reply: SpendReply) -> str:
    """``quotad spend --csv``: a header, one line per row, then the ``total`` line. Money is
    a plain decimal of fixed precision (:func:`~quotad.protocol.figures.usd_plain`), booleans
    are 0 or 1, the key of requests that reached no target is empty; the entities the
    guardrails found are one ``found_KIND`` column per kind."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPEND_CSV_FIELDS + SPEND_CSV_ENTITIES)
    for row in [*reply.rows, reply.total]:
        writer.writerow(
            [_csv_value(name, getattr(row, name)) for name in SPEND_CSV_FIELDS]
            + [row.entities.get(kind, 0) for kind in ENTITY_KINDS]
        )
    return out.getvalue()


def entities_text(entities: dict[str, int]) -> str:
    """What the guardrails found, by kind (``email 3, secret 1``), or ``-``."""
    return ", ".join(f"{kind} {count}" for kind, count in sorted(entities.items())) or "-"


def _csv_value(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if name.endswith("_usd") and isinstance(value, float | int):
        return usd_plain(value)
    return value


def _cached(reply: ChatReply) -> str:
    """The chat footer's cache mark: ``  cached``, or ``  cached (semantic 0.95)``."""
    if not reply.cached:
        return ""
    return (
        f"  cached (semantic {reply.similarity:.2f})" if reply.cache == "semantic" else "  cached"
    )


def format_spend(reply: SpendReply) -> str:
    """``quotad spend`` as text."""
    period = {"day": "today", "week": "the last 7 days", "month": "this month"}[reply.period]
    since, until = local_time(reply.since), local_time(reply.until)
    out = [f"spend {period} ({since} to {until}), by {reply.by}"]
    if reply.fleet:
        out.append(f"fleet: {len(reply.hosts)} host(s): {', '.join(reply.hosts)}")
    out.append("")
    rows = [*reply.rows, reply.total]
    semantic = reply.total.semantic_hits > 0
    headers = [reply.by, "requests", "errors", "prompt", "completion", "cost", "hits"]
    if semantic:  # the semantic cache's hits, when it served any in the period
        headers.append("semantic")
    headers.append("saved")
    guarded = bool(reply.total.blocked or reply.total.entities)
    if guarded:  # the guardrails' columns, when they found anything in the period
        headers += ["blocked", "found"]
    out.append(
        table(
            headers,
            [
                [
                    (row.key or NO_TARGET)
                    + (" (unpriced)" if row.unpriced else "")
                    + ("  ANOMALOUS" if row.anomalous else ""),
                    row.requests,
                    row.errors,
                    row.prompt_tokens,
                    row.completion_tokens,
                    usd(row.cost_usd),
                    row.cache_hits,
                    *([row.semantic_hits] if semantic else []),
                    usd(row.saved_usd),
                    *([row.blocked, entities_text(row.entities)] if guarded else []),
                ]
                for row in rows
            ],
        )
    )
    if reply.budgets:
        out += ["", "fleet budgets" if reply.fleet else "budgets"]
        out.append(
            table(
                ["budget", "spent", "held" if reply.fleet else "reserved", "limit", "use"],
                [
                    [
                        budget.name,
                        usd(budget.spent_usd),
                        usd(budget.reserved_usd),
                        usd(budget.limit_usd),
                        f"{budget.spent_usd / budget.limit_usd:.0%}" if budget.limit_usd else "-",
                    ]
                    for budget in reply.budgets
                ],
            )
        )
    if reply.forecast_month_usd is not None:
        out += ["", f"forecast for this month: {usd(reply.forecast_month_usd)}"]
    if any(row.unpriced for row in reply.rows):
        out.append('(unpriced: targets with no price cost 0; add [prices."provider/model"])')
    if any(not row.key for row in reply.rows):
        out.append(f"({NO_TARGET}: requests refused before reaching a target)")
    return "\n".join(out)
