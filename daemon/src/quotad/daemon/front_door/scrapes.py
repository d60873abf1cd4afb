"""``GET /metrics`` answers written at once: at most :data:`MAX_SCRAPES`. No key is needed to
scrape, and each scrape takes its share of the event loop from the requests being served."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Final

from quotad.daemon.errors import RequestError

MAX_SCRAPES: Final = 4
"""``/metrics`` answers written at once; one more is answered 503 ``overloaded``. No key is
needed to scrape, and each scrape takes its share of the event loop from the requests served:
8 at once (738 KB each, 256 targets) made ``/healthz`` 20 times slower."""
SCRAPE_WRITE_STALL_S: Final = 10.0
"""A scraper that reads none of its answer for this long is dropped, and its place freed: a
place was held for the HTTP server's 60 s write-stall bound, so four scrapers that never read
kept ``/metrics`` from everyone else. Prometheus gives up on a scrape after 10 s by default."""


class Scrapes:
    """The scrapes being written."""

    def __init__(self) -> None:
        self.under_way = 0

    def start(self, chunks: AsyncGenerator[bytes, None]) -> _Scrape:
        """``chunks``, holding a place until closed; ``overloaded`` when none is free."""
        if self.under_way >= MAX_SCRAPES:
            raise RequestError(
                "overloaded",
                f"{MAX_SCRAPES} scrapes of /metrics are under way; retry shortly",
                retry_after_s=1.0,
            )
        self.under_way += 1
        return _Scrape(chunks, self._ended)

    def _ended(self) -> None:
        self.under_way -= 1


class _Scrape:
    """The chunks of one ``/metrics`` answer, holding one of the :data:`MAX_SCRAPES` until it
    is closed (the HTTP core closes it however the answer ends)."""

    __slots__ = ("_chunks", "_ended")

    def __init__(self, chunks: AsyncGenerator[bytes, None], ended: Callable[[], None]) -> None:
        self._chunks = chunks
        self._ended: Callable[[], None] | None = ended

    def __aiter__(self) -> _Scrape:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        ended, self._ended = self._ended, None
        if ended is not None:
            ended()
        await self._chunks.aclose()
