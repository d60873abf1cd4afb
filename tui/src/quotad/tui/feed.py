"""Where ``quotad top`` gets its data: the :class:`Feed` seam and :class:`DaemonFeed`, the real one.

A feed delivers :data:`FeedEvent`\\ s — :class:`Connected`, a :class:`Snapshot` per tick, and
:class:`Waiting` whenever no daemon answers — to a plain callback, and runs operator actions and
spend reports for the screens. :class:`DaemonFeed` follows the daemon through
``AsyncClient.subscribe``: it reconnects forever with a capped backoff, so a daemon that is not
running yet, or restarts, is a state shown on screen and never an exception. Tests give the app
a scripted feed of fixed snapshots instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import anyio

from quotad.client import (
    AsyncClient,
    ConnectionLostError,
    DaemonUnavailableError,
    QuotadError,
    Snapshot,
    SpendReply,
)
from quotad.protocol.messages import MAX_INTERVAL_S, MIN_INTERVAL_S
from quotad.protocol.messages import SpendKey as SpendKey
from quotad.protocol.messages import SpendPeriod as SpendPeriod
from quotad.protocol.paths import client_socket_candidates

APP_NAME: Final = "quotad-top"
DEFAULT_INTERVAL_S: Final = 0.5
RETRY_FIRST_S: Final = 0.25
RETRY_MAX_S: Final = 2.0
CALL_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Connected:
    """A daemon answered; snapshots follow."""

    daemon_version: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """No daemon answers (not running, restarting, or the connection dropped); retrying."""

    reason: str


FeedEvent = Connected | Waiting | Snapshot


class Feed(Protocol):
    """A source of the daemon's state and a way to act on it."""

    @property
    def where(self) -> str:
        """Where the daemon is looked for (shown while waiting for it)."""
        ...

    @property
    def interval_s(self) -> float:
        """Seconds between the snapshots it delivers while the daemon answers."""
        ...

    async def follow(self, deliver: Callable[[FeedEvent], None]) -> None:
        """Deliver events until cancelled; never raises for an absent or failing daemon."""
        ...

    async def admin(self, action: str, target: str) -> str:
        """Run an operator action; its confirmation message. Raises ``QuotadError``."""
        ...

    async def spend(self, period: SpendPeriod, by: SpendKey) -> SpendReply:
        """A ledger report. Raises ``QuotadError`` (a daemon without reports refuses)."""
        ...


def why_unavailable(error: QuotadError) -> str:
    """Why the feed has no daemon, in few words (the path is shown beside it)."""
    if isinstance(error, ConnectionLostError):
        return "lost the connection to the daemon"
    tried = error.details.get("tried") if isinstance(error, DaemonUnavailableError) else None
    if isinstance(tried, list) and tried and all(isinstance(t, dict) for t in tried):
        if len(tried) == 1:
            return str(tried[0].get("reason", error.message))
        return "; ".join(f"{t.get('socket')}: {t.get('reason')}" for t in tried)
    return f"{error.code}: {error.message}"


class DaemonFeed:
    """The live feed: ``AsyncClient.subscribe(interval_s)`` against the daemon at ``socket``
    (``None``: the default socket paths), or the first of ``sockets`` that answers (the
    ``quotad`` command's search), reconnecting forever."""

    def __init__(
        self,
        socket: str | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        sockets: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValueError(
                f"interval_s={interval_s:g} is outside {MIN_INTERVAL_S:g}-{MAX_INTERVAL_S:g} s"
            )
        self.socket = socket
        self.interval_s = interval_s
        self.sockets = (
            [Path(path) for path in sockets] if sockets else client_socket_candidates(socket)
        )
        self._where = " or ".join(str(path) for path in self.sockets)
        self._client: AsyncClient | None = None

    @property
    def where(self) -> str:
        return self._where

    async def follow(self, deliver: Callable[[FeedEvent], None]) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                client = AsyncClient(
                    self.sockets[0],
                    app=APP_NAME,
                    timeout=CALL_TIMEOUT_S,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    reconnect_s=CONNECT_TIMEOUT_S,
                )
                client.sockets = list(self.sockets)  # each tried in order
                async with client:
                    welcome = client.welcome
                    deliver(Connected(welcome.daemon_version if welcome else ""))
                    self._client = client
                    delay = RETRY_FIRST_S
                    async with client.subscribe(self.interval_s) as subscription:
                        async for snapshot in subscription:
                            deliver(snapshot)
                reason = "the daemon ended the subscription"
            except QuotadError as error:
                reason = why_unavailable(error)
            except OSError as error:
                reason = str(error) or type(error).__name__
            except Exception as error:  # a monitor outlives whatever the connection throws
                reason = f"{type(error).__name__}: {error}"
            finally:
                self._client = None
            deliver(Waiting(reason))
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _connected_client(self) -> AsyncClient:
        client = self._client
        if client is None:
            raise DaemonUnavailableError(f"not connected to quotad at {self._where}")
        return client

    async def admin(self, action: str, target: str) -> str:
        reply = await self._connected_client().admin(action, target=target)
        return reply.message or f"{action} {target}: done"

    async def spend(self, period: SpendPeriod, by: SpendKey) -> SpendReply:
        return await self._connected_client().spend(period, by)
