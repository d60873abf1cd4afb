"""``GET /metrics`` at the metrics' bounds: the exposition is streamed in chunks of whole
lines, the event loop running between them, and what is streamed is valid Prometheus text
(prometheus_client's own parser reads it) equal to the exposition written at once."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute
from prometheus_client.parser import text_string_to_metric_families

from quotad.daemon.broker import Broker
from quotad.daemon.config import Config, HttpConfig
from quotad.daemon.front_door import FrontDoor
from quotad.daemon.front_door import scrapes as scrapes_module
from quotad.daemon.front_door import server as front_door_module
from quotad.daemon.front_door.scrapes import MAX_SCRAPES
from quotad.daemon.metrics import CHUNK_BYTES, CONTENT_TYPE, MAX_TARGET_SERIES, OTHER, Metrics
from quotad.daemon.net.http11 import HttpRequest, HttpResponse, StreamingResponse
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from tests.support.metrics_tables import fill_to_bounds, full_status
from tests.support.polling import run_loop_until
from tests.support.serving import running

pytestmark = pytest.mark.anyio

LOOP_TURN_EVERY_BYTES = 256 * 1024
"""A scrape must let the event loop run at least once per this much of its body."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the daemon's loop


def full_front_door() -> FrontDoor:
    """A front door over a real broker whose metrics are full, reporting a status as large as
    the router and the activity log let it be."""
    config = Config()
    unopened = Store(config, Path("/nonexistent/quotad-metrics"))  # /metrics reads no store
    broker = Broker(config, Router(config, {}), unopened)
    fill_to_bounds(broker.metrics)
    status = full_status()
    return FrontDoor(
        broker,
        HttpConfig(listen="127.0.0.1:0"),
        app_for_key=lambda key: None,
        status=lambda: status,
    )


async def body_of(response: HttpResponse | StreamingResponse) -> bytes:
    if isinstance(response, HttpResponse):
        return response.body
    return b"".join([chunk async for chunk in response.chunks])


async def test_a_scrape_at_the_bounds_lets_the_event_loop_run_between_its_chunks() -> None:
    """The exposition was written at once in the front door's handler: at the bounds then
    (4,096 targets, 10,000 pairs) 13 MB in about half a second of a loaded machine, every other
    request of the daemon waiting meanwhile. Counted in turns of the loop that another task
    got while the handler answered and its whole body was read, not in seconds."""
    front_door = full_front_door()
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(other_task)
        await anyio.lowlevel.checkpoint()  # it runs
        before = turns
        response = await front_door.handle(HttpRequest("GET", "/metrics", "/metrics", []))
        body = await body_of(response)
        turns_during_scrape = turns - before
        group.cancel_scope.cancel()
    assert response.status == 200
    assert ("content-type", CONTENT_TYPE) in response.headers
    assert len(body) > 4 * LOOP_TURN_EVERY_BYTES  # large enough to tell
    assert turns_during_scrape >= len(body) // LOOP_TURN_EVERY_BYTES
    assert body == front_door.metrics.exposition(full_status())


async def test_the_streamed_exposition_is_valid_text_in_whole_lines() -> None:
    metrics = Metrics()
    fill_to_bounds(metrics, outcomes=("ok", "rate_limited"))
    chunks = [chunk async for chunk in metrics.chunks(full_status())]
    assert len(chunks) > 2
    assert all(len(chunk) >= CHUNK_BYTES for chunk in chunks[:-1])
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    text = b"".join(chunks).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    latency = families["quotad_request_latency_seconds"]
    targets = {sample.labels["target"] for sample in latency.samples}
    assert len(targets) == MAX_TARGET_SERIES + 1
    assert OTHER in targets
    requests = families["quotad_requests"]  # the parser names a counter without its _total
    other_ok = [
        sample.value
        for sample in requests.samples
        if sample.labels["target"] == OTHER and sample.labels["status"] == "ok"
    ]
    assert sum(other_ok) == 10  # the 5 targets past the bound, twice each
    assert "quotad_target_health" in families
    assert "quotad_guardrail_entities" in families


async def test_at_most_max_scrapes_are_written_at_once() -> None:
    """No key is needed to scrape, and each scrape takes its share of the event loop from the
    requests served: 8 scrapers of 738 KB made ``/healthz`` 20 times slower. One past
    MAX_SCRAPES is 503 ``overloaded`` with a retry-after; a scrape ended frees its place."""
    front_door = full_front_door()
    request = HttpRequest("GET", "/metrics", "/metrics", [])
    held = [await front_door.handle(request) for _ in range(MAX_SCRAPES)]
    assert all(isinstance(response, StreamingResponse) for response in held)
    refused = await front_door.handle(request)
    assert isinstance(refused, HttpResponse)
    assert refused.status == 503
    assert ("retry-after", "1") in refused.headers
    assert b"scrapes of /metrics are under way" in refused.body
    first = held[0]
    assert isinstance(first, StreamingResponse)
    await body_of(first)  # read whole, then closed, as the HTTP core closes every stream
    await first.chunks.aclose()  # type: ignore[attr-defined]
    for response in held[1:]:
        await response.chunks.aclose()  # type: ignore[union-attr]  # left unread
    again = [await front_door.handle(request) for _ in range(MAX_SCRAPES)]
    assert all(response.status == 200 for response in again)
    for response in again:
        await response.chunks.aclose()  # type: ignore[union-attr]


def scrape_status(port: int, *, read: bool) -> int | socket.socket:
    """A ``GET /metrics`` on a socket with a small receive buffer: its status line's code, read
    whole (``read``), or the socket, left unread with the answer's start in its buffer."""
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", port))
    connection.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    if not read:
        return connection
    with connection:
        connection.settimeout(10)
        return int(connection.recv(64).split(b" ")[1])


async def test_a_scraper_that_reads_nothing_loses_its_place_after_the_stall_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four scrapers that sent ``GET /metrics`` and read nothing held every place for the
    HTTP server's 60 s write-stall bound, keeping ``/metrics`` from everyone else; a scrape
    now waits :data:`~.scrapes.SCRAPE_WRITE_STALL_S` at most for its reader (0.5 s here)."""
    monkeypatch.setattr(front_door_module, "SCRAPE_WRITE_STALL_S", 0.5)
    assert scrapes_module.SCRAPE_WRITE_STALL_S < 60.0
    front_door = full_front_door()
    await front_door.bind()
    port = int(front_door.address.rsplit(":", 1)[1])
    listener = front_door.server._listener
    assert listener is not None
    for each in listener.listeners:  # small send buffers, inherited by each connection, so
        raw = each.extra(SocketAttribute.raw_socket)  # that the answer does not fit in them
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    async with running(front_door):
        stalled = [
            await anyio.to_thread.run_sync(lambda: scrape_status(port, read=False))
            for _ in range(MAX_SCRAPES)
        ]
        try:
            await run_loop_until(lambda: front_door._scrapes.under_way == MAX_SCRAPES)
            assert await anyio.to_thread.run_sync(lambda: scrape_status(port, read=True)) == 503
            await anyio.sleep(1.5)  # past the bound: the stalled scrapers were dropped
            assert front_door._scrapes.under_way == 0
            assert await anyio.to_thread.run_sync(lambda: scrape_status(port, read=True)) == 200
        finally:
            for connection in stalled:
                assert isinstance(connection, socket.socket)
                connection.close()
