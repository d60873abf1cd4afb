"""Reading the fleet's spend for ``quotad spend --fleet`` against a real Valkey holding more
rows than a report may take: the read stops at the cap, having fetched from Redis no more than
the cap and a page, however large the day hashes are."""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from quotad.daemon.cluster import spend
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
