"""The fleet's pub/sub channel (:attr:`~.keys.FleetKeys.channel`: ``freed``, ``pause``):
subscribed to while the link to Redis is up, subscribed again after any failure, each message
delivered to every listener. :class:`~.link.Link` holds one and runs it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
import redis.asyncio as aioredis

from quotad.daemon.cluster.redis_failures import PLAIN_FAILURES, unreadable
from quotad.daemon.cluster.settings import ClusterSettings

log = logging.getLogger("quotad.cluster")


class FleetChannel:
    """The fleet's channel, listened to on the link's Redis client while ``listening()``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        settings: ClusterSettings,
        *,
        listening: Callable[[], bool],
    ) -> None:
        self.name = name
        self.subscribed = False
        """Whether the fleet's channel is listened to now."""
        self._redis = redis
        self._settings = settings
        self._listening = listening
        self._listeners: list[Callable[[str], None]] = []
        self._subscription: anyio.CancelScope | None = None

    def on_message(self, listener: Callable[[str], None]) -> None:
        """``listener(message)`` for each message on the fleet's channel; ``"subscribed"``
        after each (re)subscription, since messages may have been missed meanwhile."""
        self._listeners.append(listener)

    def interrupt(self) -> None:
        """Drop the subscription now (the link went down); :meth:`listen` subscribes again
        once the link is up."""
        if self._subscription is not None:
            self._subscription.cancel()

    async def listen(self) -> None:
        """Deliver the channel's messages while the link is up; subscribe again after any
        failure. Until cancelled."""
        backoff = 0.05
        while True:
            if not self._listening():
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.heartbeat_s)
                if not self._listening():
                    continue
            with anyio.CancelScope() as scope:
                self._subscription = scope
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                try:
                    with anyio.fail_after(self._settings.timeout_s * 4):
                        await pubsub.subscribe(self.name)
                    backoff = 0.05
                    self.subscribed = True
                    self._deliver("subscribed")
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=None
                        )
                        if message is not None and message.get("type") == "message":
                            data = message.get("data")
                            if isinstance(data, bytes) and len(data) <= 4096:
                                self._deliver(data.decode("utf-8", "replace"))
                except PLAIN_FAILURES as error:
                    log.debug("cluster: pub/sub interrupted: %s", error)
                except Exception as error:  # redis-py on an answer no Redis gives
                    log.warning("cluster: pub/sub: %s", unreadable(error))
                finally:
                    with anyio.CancelScope(shield=True):
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
            self._subscription = None
            self.subscribed = False
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.heartbeat_s)

    def _deliver(self, message: str) -> None:
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:  # a listener's bug must not stop the others or the loop
                log.exception("cluster: a message listener failed on %r", message[:80])
