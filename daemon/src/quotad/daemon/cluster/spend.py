"""The fleet's spend by day, host, app, model and target, for ``quotad spend --fleet``.

Each host keeps its own figures per ``(day, app, model, target)`` (loaded from its ledger's
``spend_daily`` and ``guardrails_daily`` at start, added to as its requests finish) and pushes
them, absolute, into one hash per day (``{p}:spend:<day>``) with the budget syncs: a push sent
twice counts once, and a Redis restarted empty gets every day back. Each host's ledger stays
the truth for its own rows; Redis holds only their sums. Two kinds of field:

- spend: name the JSON array ``[host, app, model, target]`` (an app name is whatever a client
  sent: any character, up to 256), value ``cost_nano requests prompt_tokens
  completion_tokens errors cache_hits saved_nano semantic_hits``;
- what the guardrails found (DESIGN §12), only for a key where they found something: name
  ``[host, app, model, target, "guardrails"]``, value ``kind=count`` pairs, a kind being
  ``blocked`` (requests refused) or an entity kind, as ``guardrails_daily`` has them
  (``blocked=1 credit_card=1 email=2``). A host older than these fields skips them (their
  names have five parts, its reports read four), and a record of such a host, with no
  guardrails field, counts none.

Read back, everything in Redis is hostile: a field of the wrong shape, a figure past
:data:`MAX_COUNT` (or :data:`MAX_NANO`), a guardrails value longer than
:data:`MAX_FOUND_CHARS` is skipped; an entity kind this host does not know (a newer host's) is
left out. So a host never pushes a figure past its bound: one that grows past it is held
there (:data:`FIGURE_BOUNDS`), counted as that much, and logged.

:func:`fleet_report` reads the days a report covers and builds the same
:class:`~quotad.protocol.messages.SpendReply` as ``quotad spend`` does from one ledger
(:class:`~quotad.daemon.store.spend.ReportSpan`), grouped by app, model, target, day or host.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from quotad.daemon.config import ENTITY_KINDS
from quotad.daemon.declared_names import DeclaredNames
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.ledger import LedgerDay, LedgerFound
from quotad.daemon.store.spend import BLOCKED, ReportSpan
from quotad.protocol.messages import SpendReply, SpendRow

if TYPE_CHECKING:
    from quotad.daemon.cluster.link import Link

log = logging.getLogger("quotad.cluster")

_FIELD_NAME_ENCODER: Final = msgspec.json.Encoder()
MAX_NAME_PART_CHARS: Final = 1024
"""The longest host, app, model or target read back from a field's name (a request's names are
at most 256 characters, a target two of them); a field with a longer one is skipped."""
MAX_FIELD_NAME_BYTES: Final = 32 * 1024
"""The longest field name read (five parts at their bound, every character JSON-escaped)."""
_FIELD_NAME_DECODER: Final = msgspec.json.Decoder(
    tuple[Annotated[str, msgspec.Meta(max_length=MAX_NAME_PART_CHARS)], ...]
)
"""A field's name: ``[host, app, model, target]`` as JSON (and ``"guardrails"`` after)."""
GUARDRAILS_PART: Final = "guardrails"
"""The fifth part of the name of a field of what the guardrails found."""

SPEND_TTL_S: Final = 62 * 86400
KEPT_DAYS: Final = 62
MAX_KEYS_PER_DAY: Final = 1000
"""The (app, model, target) keys a host keeps and shares apart per day. Apps and models are
named by clients (a model is recorded as asked, an unknown one too), so past this many a new
key's spend is counted under :data:`OTHER_KEY`, unless the config names its app, model and
target (:class:`~quotad.daemon.declared_names.DeclaredNames`): this host's memory and its fields
in Redis stay bounded (62 days of 1,001 keys and the config's own), and the totals stay whole."""
OTHER: Final = "(other)"
OTHER_KEY: Final = (OTHER, OTHER, OTHER)
MAX_REPORT_FIELDS: Final = 200_000
"""A fleet report reads at most this many host/app/model/target rows (a hostile Redis, or a
fleet far larger than any this is meant for, costs a bounded report)."""
READ_PAGE_FIELDS: Final = 1000
"""Fields asked for per ``HSCAN`` (a hint to Redis: a hash small enough to be stored packed,
128 fields by default, comes whole)."""
Figures = list[int]
"""``[cost nano-USD, requests, prompt tokens, completion tokens, errors, cache hits, saved
nano-USD, semantic cache hits]``."""
FIGURE_COUNT: Final = 8
"""The figures of a spend field's value; a value with any other count is skipped."""
MAX_COUNT: Final = 10**13
"""The largest count a field may hold (requests, tokens, hits, entities of a kind, requests
refused): the sum of :data:`MAX_REPORT_FIELDS` of them stays within what a reply can carry
(2**64); a field with a larger one is skipped."""
MAX_NANO: Final = 10**18
"""The largest cost or saving a spend field may hold, in nano-USD (a billion USD a day for one
host, app, model and target); a field with a larger one is skipped."""
Found = dict[str, int]
"""What the guardrails found for a key, by kind: ``blocked`` (requests refused) or an entity
kind (entities found in requests and replies)."""
KNOWN_ENTITIES: Final[frozenset[str]] = frozenset(ENTITY_KINDS)
"""The entity kinds this host reads from Redis; another (a newer host's) is left out of its
reports."""
MAX_FOUND_CHARS: Final = 1024
"""The longest guardrails value read (every known kind at :data:`MAX_COUNT` takes under
200); a longer one is skipped undecoded."""
_FIGURE: Final = "(?:0|[1-9][0-9]{0,18})"
_SPEND_VALUE: Final = re.compile(f"{_FIGURE}(?: {_FIGURE}){{{FIGURE_COUNT - 1}}}")
"""A spend field's value as a host writes it: eight figures, ASCII digits only (no sign,
padding, underscore or space around, which ``int`` would take), one space apart."""
MAX_SPEND_VALUE_CHARS: Final = FIGURE_COUNT * 20
"""The longest spend value read (eight figures of 19 digits and their spaces); a longer one is
skipped undecoded."""
_FOUND_PAIR: Final = re.compile(r"([a-z_]{1,32})=(0|[1-9][0-9]{0,13})")
"""One ``kind=count`` of a guardrails value (ASCII digits only, no sign, no padding)."""


NANO: Final = 1_000_000_000
MAX_USD: Final = MAX_NANO / NANO
"""The most USD the fleet counts in one figure: a billion (:data:`MAX_NANO`)."""
FIGURE_BOUNDS: Final = (MAX_NANO, *(MAX_COUNT,) * 5, MAX_NANO, MAX_COUNT)
"""The most each of a spend field's :data:`Figures` may hold (what other hosts read)."""


def to_nano(usd: float) -> int:
    """USD as integer nano-USD, rounded up (what is counted against a limit never shrinks):
    the fleet's spend figures and its budgets count in it. A figure past :data:`MAX_USD`,
    infinite or NaN (one that cannot be counted: it raised OverflowError or ValueError, which
    failed the request, and the sync task of the fleet's budgets with it) is
    :data:`MAX_NANO`: as much as a limit is ever counted (:mod:`.budgets`), so it fills any
    budget, never counting as less than it is. Below 0 (a sum's float noise), 0."""
    if not math.isfinite(usd) or usd > MAX_USD:
        return MAX_NANO
    return max(0, math.ceil(round(usd * NANO, 3)))


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
    errors: int = 0
    cache_hits: int = 0
    saved_usd: float = 0.0
    semantic_hits: int = 0
    blocked: int = 0
    """Requests a guardrail refused (counted in ``requests`` and ``errors`` too)."""
    entities: Found = field(default_factory=dict)
    """Entities the guardrails found, by kind."""


class FleetSpend:
    """This host's spend per day, app, model and target, and what is not pushed yet."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ttl_s = SPEND_TTL_S
        self.days: dict[str, dict[tuple[str, str, str], Figures]] = {}
        self.found: dict[str, dict[tuple[str, str, str], Found]] = {}
        """What the guardrails found, per day and key (only keys where they found anything)."""
        self.dirty: dict[str, set[tuple[str, str, str]]] = {}
        self.declared = DeclaredNames()
        """The config's names: its keys are kept apart past :data:`MAX_KEYS_PER_DAY` too."""
        self.held_at_bound = 0
        """Figures that grew past their bound (:data:`FIGURE_BOUNDS`) and were held there."""

    def load(self, rows: Iterable[LedgerDay], found: Iterable[LedgerFound] = ()) -> None:
        """Set from the ledger's ``spend_daily`` rows and ``guardrails_daily`` rows."""
        self.days.clear()
        self.found.clear()
        for row in rows:
            day, app, model, target, cost, requests, prompt, completion = row[:8]
            errors, hits, saved, semantic = row[8:]
            cost_nano, saved_nano = to_nano(cost), to_nano(saved)
            loaded = (cost_nano, requests, prompt, completion, errors, hits, saved_nano, semantic)
            key = self._kept_key(day, (app, model, target))
            self._add_figures(day, key, loaded)
        for day, app, model, target, kind, count in found:
            key = self._kept_key(day, (app, model, target))
            self._add_found(day, key, kind, count)
        self._forget_old()

    def _kept_key(self, day: str, key: tuple[str, str, str]) -> tuple[str, str, str]:
        """``key``, or :data:`OTHER_KEY` when the day keeps :data:`MAX_KEYS_PER_DAY` others
        and the config does not name it."""
        rows = self.days.get(day)
        if rows is None or key in rows or len(rows) < MAX_KEYS_PER_DAY:
            return key
        if self.declared.spend_key(key):
            return key
        return OTHER_KEY

    def _figures(self, day: str, key: tuple[str, str, str]) -> Figures:
        """The figures of ``key`` (one :meth:`_kept_key` gave) on ``day``, made on first use."""
        return self.days.setdefault(day, {}).setdefault(key, [0] * FIGURE_COUNT)

    def _found(self, day: str, key: tuple[str, str, str]) -> Found:
        return self.found.setdefault(day, {}).setdefault(key, {})

    def _add_figures(self, day: str, key: tuple[str, str, str], values: Iterable[int]) -> None:
        """Add ``values`` to the figures of ``key`` on ``day``, each held at its bound."""
        figures = self._figures(day, key)
        for index, (value, bound) in enumerate(zip(values, FIGURE_BOUNDS, strict=True)):
            figures[index] = self._held(day, key, figures[index] + value, bound)

    def _add_found(self, day: str, key: tuple[str, str, str], kind: str, count: int) -> None:
        found = self._found(day, key)
        found[kind] = self._held(day, key, found.get(kind, 0) + count, MAX_COUNT)

    def _held(self, day: str, key: tuple[str, str, str], total: int, bound: int) -> int:
        """``total``, or ``bound`` when it is past it: a field holding a figure past its
        bound was skipped by every host that read it, its spend counted as none."""
        if total <= bound:
            return total
        self.held_at_bound += 1
        if self.held_at_bound == 1:
            log.warning(
                "this host's spend on %s for (app, model, target) %r passed what a figure of "
                "the fleet's spend holds (%d): it is told as that much, and `quotad spend "
                "--fleet` shows it so",
                day,
                key,
                bound,
            )
        return bound

    def add(
        self,
        day: str,
        app: str,
        model: str,
        target: str,
        cost_usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        error: bool = False,
        cache_hit: bool = False,
        saved_usd: float = 0.0,
        semantic_hit: bool = False,
        blocked: bool = False,
        entities: Mapping[str, int] | None = None,
    ) -> None:
        """A request finished (its ledger row: a cache hit's tokens are not billed, so the
        caller passes 0 for them, as ``spend_daily`` sums them; ``blocked`` and ``entities``
        as ``guardrails_daily`` counts them)."""
        key = self._kept_key(day, (app, model, target))
        self._add_figures(
            day,
            key,
            (
                to_nano(cost_usd), 1, prompt_tokens, completion_tokens, error, cache_hit,
                to_nano(saved_usd), semantic_hit,
            ),
        )  # fmt: skip
        if blocked:
            self._add_found(day, key, BLOCKED, 1)
        for kind, count in (entities or {}).items():
            self._add_found(day, key, kind, count)
        self.dirty.setdefault(day, set()).add(key)
        if len(self.days) > KEPT_DAYS:
            self._forget_old()

    def _forget_old(self) -> None:
        for day in sorted(self.days)[:-KEPT_DAYS]:
            del self.days[day]
            self.dirty.pop(day, None)
        for day in [day for day in self.found if day not in self.days]:
            del self.found[day]

    def fields(self, *, everything: bool) -> dict[str, list[tuple[str, str]]]:
        """The hash fields to push, per day (and marked pushed: :meth:`unsent` if not)."""
        wanted = {day: set(rows) for day, rows in self.days.items()} if everything else self.dirty
        self.dirty = {}
        out: dict[str, list[tuple[str, str]]] = {}
        for day, keys in wanted.items():
            rows = self.days.get(day, {})
            found_of = self.found.get(day, {})
            fields = out[day] = []
            for key in keys:
                if key not in rows:
                    continue
                name = (self.host, *key)
                fields.append(
                    (
                        _FIELD_NAME_ENCODER.encode(name).decode(),
                        " ".join(str(value) for value in rows[key]),
                    )
                )
                if found := found_of.get(key):
                    fields.append(
                        (
                            _FIELD_NAME_ENCODER.encode((*name, GUARDRAILS_PART)).decode(),
                            " ".join(f"{kind}={count}" for kind, count in sorted(found.items())),
                        )
                    )
        return out

    def unsent(self, days: dict[str, list[tuple[str, str]]]) -> None:
        """Fields that could not be pushed: push them next time."""
        for day, fields in days.items():
            keys = self.dirty.setdefault(day, set())
            for name, _ in fields:
                _, app, model, target = _FIELD_NAME_DECODER.decode(name)[:4]
                keys.add((app, model, target))


async def read_fleet_spend(link: Link, days: Iterable[str]) -> list[FleetSpendRow]:
    """Every host's spend on ``days``, as the fleet's Redis has it: at most
    :data:`MAX_REPORT_FIELDS` rows, read a page of :data:`READ_PAGE_FIELDS` at a time and no
    further once the cap is reached (a hash of any size costs at most the cap and a page), in
    at most two pages per day and two per page's worth of the cap (a Redis that keeps
    answering "more" ends the read there); a field of the wrong shape is skipped, a field met
    again in a day counts once; a guardrails field is a row of its own (its spend figures 0)."""
    days = list(days)
    cap = MAX_REPORT_FIELDS
    pages_left = 2 * len(days) + 2 * (cap // READ_PAGE_FIELDS)
    rows: list[FleetSpendRow] = []
    for day in days:
        key = link.keys.spend_day(day)
        cursor = 0
        seen: set[Any] = set()  # HSCAN may return a field twice (a hash being resized)
        while pages_left > 0:
            pages_left -= 1
            cursor, fields = await link.read_hash_page(key, cursor, READ_PAGE_FIELDS)
            for name, value in fields.items():
                if name in seen:
                    continue
                seen.add(name)
                row = _parse(day, name, value)
                if row is not None:
                    rows.append(row)
                    if len(rows) >= cap:
                        return rows
            if cursor == 0:
                break
    return rows


async def fleet_report(
    link: Link, calendar: Calendar, period: str, by: str, now: float
) -> SpendReply:
    """``quotad spend --fleet``: every host's spend of ``period`` grouped ``by`` app,
    model, target, day or host, with the forecast and anomaly flags over the fleet's days.
    :class:`~quotad.daemon.cluster.link.LinkDown` when Redis cannot be read."""
    span = ReportSpan.of(calendar, period, by, now)
    today = date.fromisoformat(span.today)
    first = max(date.fromisoformat(span.history_day), today - timedelta(days=KEPT_DAYS - 1))
    days = [(first + timedelta(days=n)).isoformat() for n in range((today - first).days + 1)]
    rows = await read_fleet_spend(link, days)
    grouped: dict[str, SpendRow] = {}
    daily: dict[str, float] = {}
    for row in rows:
        daily[row.day] = daily.get(row.day, 0.0) + row.cost_usd
        if not span.first_day <= row.day <= span.today:
            continue
        key = _key_of(row, by)
        total = grouped.get(key)
        if total is None:
            total = grouped[key] = SpendRow(key=key)
        total.requests += row.requests
        total.errors += row.errors
        total.prompt_tokens += row.prompt_tokens
        total.completion_tokens += row.completion_tokens
        total.cost_usd += row.cost_usd
        total.cache_hits += row.cache_hits
        total.saved_usd += row.saved_usd
        total.semantic_hits += row.semantic_hits
        total.blocked += row.blocked
        for kind, count in row.entities.items():
            total.entities[kind] = total.entities.get(kind, 0) + count
    for total in grouped.values():  # by kind, as one host's report has them
        total.entities = dict(sorted(total.entities.items()))
    first_day = date.fromisoformat(min(daily)) if daily else None
    reply = span.reply(list(grouped.values()), daily, first_day)
    reply.fleet = True
    reply.hosts = sorted(
        {row.host for row in rows if span.first_day <= row.day <= span.today} | {link.host}
    )
    return reply


def _key_of(row: FleetSpendRow, by: str) -> str:
    if by == "host":
        return row.host
    if by == "model":
        return row.model
    if by == "target":
        return row.target
    if by == "day":
        return row.day
    return row.app


def _parse(day: str, name: Any, value: Any) -> FleetSpendRow | None:
    """A field read from Redis: a spend field's row, a guardrails field's (spend 0), or None
    when it is of neither shape."""
    if not isinstance(name, bytes | str) or len(name) > MAX_FIELD_NAME_BYTES:
        return None
    try:
        parts = _FIELD_NAME_DECODER.decode(_text(name))
        if len(parts) == 4:
            return _spend_row(day, parts, value)
        if len(parts) == 5 and parts[4] == GUARDRAILS_PART:
            return _found_row(day, parts, value)
    except (ValueError, msgspec.DecodeError):  # ValidationError is a DecodeError
        pass
    return None


def _spend_row(day: str, parts: tuple[str, ...], value: Any) -> FleetSpendRow | None:
    if not isinstance(value, bytes | str) or len(value) > MAX_SPEND_VALUE_CHARS:
        return None
    text = _text(value)
    if _SPEND_VALUE.fullmatch(text) is None:
        return None
    numbers = [int(part) for part in text.split(" ")]
    cost, requests, prompt, completion, errors, hits, saved, semantic = numbers
    if (
        max(cost, saved) > MAX_NANO
        or max(requests, prompt, completion, errors, hits, semantic) > MAX_COUNT
    ):
        return None
    host, app, model, target = parts
    return FleetSpendRow(
        day, host, app, model, target, cost / 1e9, requests, prompt, completion, errors, hits,
        saved / 1e9, semantic,
    )  # fmt: skip


def _found_row(day: str, parts: tuple[str, ...], value: Any) -> FleetSpendRow | None:
    if not isinstance(value, bytes | str) or len(value) > MAX_FOUND_CHARS:
        return None
    found: Found = {}
    for pair in _text(value).split(" "):
        match = _FOUND_PAIR.fullmatch(pair)
        if match is None or match[1] in found or (count := int(match[2])) > MAX_COUNT:
            return None
        found[match[1]] = count
    blocked = found.pop(BLOCKED, 0)
    entities = {kind: count for kind, count in found.items() if kind in KNOWN_ENTITIES}
    host, app, model, target, _ = parts
    return FleetSpendRow(
        day, host, app, model, target, 0.0, 0, 0, 0, blocked=blocked, entities=entities
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
