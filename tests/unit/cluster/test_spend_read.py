"""Reading the fleet's spend for ``quotad spend --fleet`` against a real Valkey holding more
rows than a report may take: the read stops at the cap, having fetched from Redis no more than
the cap and a page, however large the day hashes are."""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from quotad.daemon.cluster import spend
from quotad.daemon.store.budgets import Calendar
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link

pytestmark = pytest.mark.anyio

DAYS = ["2026-12-01", "2026-12-02", "2026-12-03"]
FIELDS_PER_DAY = 6000
CAP = 1500
VALUE = "1000 1 10 20 0 0 0 0"
Fields = dict[FieldT, EncodableT]


def field_name(host: int, app: int) -> str:
    return msgspec.json.encode([f"h{host}", f"app-{app:05d}", "m", "t"]).decode()


async def sent_bytes(client: aioredis.Redis) -> int:
    stats = await client.info("stats")
    return int(stats["total_net_output_bytes"])


async def test_a_report_reads_no_more_than_the_cap_and_a_page(
    valkey: ValkeyServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spend, "MAX_REPORT_FIELDS", CAP)
    async with joined_link(valkey, prefix) as link, aioredis.Redis.from_url(valkey.url) as raw:
        for day in DAYS:
            key = link.keys.spend_day(day)
            for start in range(0, FIELDS_PER_DAY, 1000):
                mapping: Fields = {field_name(n % 7, n): VALUE for n in range(start, start + 1000)}
                await raw.hset(key, mapping=mapping)
            assert await raw.hlen(key) == FIELDS_PER_DAY
        longest = len(field_name(6, FIELDS_PER_DAY)) + len(VALUE)
        # what one field costs on the wire at most (RESP: two bulk strings, their lengths)
        per_field = longest + 2 * len("$99999\r\n\r\n")
        page = getattr(spend, "READ_PAGE_FIELDS", 1000)

        before = await sent_bytes(raw)
        rows = await spend.read_fleet_spend(link, DAYS)
        read = await sent_bytes(raw) - before

    assert len(rows) == CAP
    assert {row.day for row in rows} == {DAYS[0]}  # the days in order, the first one whole
    assert all(row.cost_usd == 1e-6 and row.requests == 1 for row in rows)
    # HSCAN's COUNT is a hint Redis may pass by a few buckets: allow a second page, plus the
    # INFO reply between the two readings
    allowed = (CAP + 2 * page) * per_field + 8192
    total = len(DAYS) * FIELDS_PER_DAY * per_field
    assert allowed < total // 2  # the test means something: the whole is far more
    assert read <= allowed, f"{read} bytes read for {CAP} rows (all of it: ~{total})"


async def test_a_report_reads_every_row_below_the_cap(valkey: ValkeyServer, prefix: str) -> None:
    async with joined_link(valkey, prefix) as link, aioredis.Redis.from_url(valkey.url) as raw:
        for day, count in zip(DAYS, (3, 300, 2500), strict=True):
            mapping: Fields = {field_name(1, n): VALUE for n in range(count)}
            await raw.hset(link.keys.spend_day(day), mapping=mapping)
        await raw.hset(link.keys.spend_day(DAYS[0]), mapping={"not json": VALUE})
        rows = await spend.read_fleet_spend(link, [*DAYS, "2026-12-04"])

    per_day = {day: sum(1 for row in rows if row.day == day) for day in DAYS}
    assert per_day == {DAYS[0]: 3, DAYS[1]: 300, DAYS[2]: 2500}
    assert len({(row.day, row.app) for row in rows}) == len(rows)  # no field read twice


async def test_a_fleet_mid_upgrade_reports_what_each_hosts_guardrails_found(
    valkey: ValkeyServer, prefix: str
) -> None:
    """An older host's records (spend only) count nothing found; a newer host's guardrails
    field is summed into its rows; a hostile one is skipped, and the report still comes."""
    calendar = Calendar("UTC")
    now = 1_796_000_000.0
    async with joined_link(valkey, prefix) as link, aioredis.Redis.from_url(valkey.url) as raw:
        mapping: Fields = {
            field_name(0, 1): VALUE,  # an older host: no guardrails field
            field_name(1, 1): "2000 2 10 20 1 0 0 0",
            msgspec.json.encode(["h1", "app-00001", "m", "t", "guardrails"]): (
                "blocked=1 credit_card=1 email=2"
            ),
            field_name(1, 2): VALUE,
            msgspec.json.encode(["h1", "app-00002", "m", "t", "guardrails"]): "blocked=-1",
            msgspec.json.encode(["h1", "app-00003", "m", "t", "guardrails"]): "x" * 100_000,
        }
        await raw.hset(link.keys.spend_day(calendar.day(now)), mapping=mapping)
        by_host = await spend.fleet_report(link, calendar, "day", "host", now)
        by_app = await spend.fleet_report(link, calendar, "day", "app", now)

    assert {row.key: (row.requests, row.blocked, row.entities) for row in by_host.rows} == {
        "h0": (1, 0, {}),
        "h1": (3, 1, {"credit_card": 1, "email": 2}),
    }
    assert {row.key: (row.requests, row.blocked) for row in by_app.rows} == {
        "app-00001": (3, 1),
        "app-00002": (1, 0),
    }
    assert (by_app.total.blocked, by_app.total.entities) == (1, {"credit_card": 1, "email": 2})
