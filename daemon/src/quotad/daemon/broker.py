"""THE request pipeline (DESIGN §2): one readable function per request kind.

Each function walks the same list, in order:

1. resolve the model to a route of targets (routing)             unknown_model
2. budget check and cost reservation (ledger)                      budget_exceeded
3. cache lookup (cache)                                            a hit skips to 7
4. gate admission on the chosen target (gates)                     rate_limited
5. call the provider (providers)
6. on failure: classify, retry or move to the next target          upstream_error
   on success: settle the gate reservation with the real usage
7. ledger row (+ cache store) committed, THEN reply

Gates, cache, ledger and routing never call each other; this module composes them. Servers
(the Unix socket, the HTTP front door) call :class:`Broker` with a decoded message and the
:class:`Caller` it came from, and turn :class:`~quotad.daemon.errors.RequestError` into errors.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import anyio

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import (
    ChatDelta,
    ChatResult,
    ChatStream,
    EmbedResult,
    ProviderError,
)
from quotad.daemon.routing import Route, Router, Target
from quotad.daemon.store import Store
from quotad.daemon.store.admin import STORE_ACTIONS, StoreAdmin
from quotad.daemon.store.budgets import Reservation
from quotad.daemon.store.cache import (
    Answer,
    Cacheable,
    CachedChat,
    CachedEmbedding,
    CacheEntry,
)
from quotad.daemon.store.ledger import LedgerRow, LedgerWriteFailed, encode_tags, live_record
from quotad.daemon.store.prices import PER_TOKEN, Price
from quotad.daemon.tokens import estimate_input_tokens, estimate_prompt_tokens
from quotad.protocol.messages import (
    Acquire,
    Admin,
    CacheMode,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
    Event,
    GroupStatus,
    Ok,
    Permit,
    RequestRecord,
    Settle,
    Spend,
    SpendReply,
    StatusReply,
    TargetStatus,
    Usage,
)

DAEMON_VERSION: Final = "0.1.0"
EVENTS_KEPT: Final = 100

log = logging.getLogger("quotad.broker")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the app it names, and the peer process when known (SO_PEERCRED)."""

    app: str
    via: str = "socket"
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


class RequestIds:
    """Request ids unique across daemon restarts: a random prefix per daemon, then a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "qd-" + os.urandom(4).hex() + "-"
        self._count = 0

    def next(self) -> str:
        """A new request id."""
        self._count += 1
        return f"{self._prefix}{self._count}"


def _upstream_error(target: Target, error: ProviderError) -> RequestError:
    """The error a caller sees for a provider failure on ``target``."""
    attempt = {
        "target": target.name,
        "kind": error.kind,
        "status": error.status,
        "message": error.message,
    }
    if error.kind == "client":
        return RequestError(
            "bad_request",
            f"{target.name} refused the request (HTTP {error.status}): {error.message}",
            details={"attempts": [attempt], "status": error.status},
        )
    if error.kind == "rate_limited":
        return RequestError(
            "rate_limited",
            f"{target.name} answered 429: {error.message}",
            retry_after_s=error.retry_after_s,
            details={"attempts": [attempt]},
        )
    return RequestError(
        "upstream_error",
        f"{target.name} failed ({error.kind}): {error.message}",
        retry_after_s=error.retry_after_s,
        details={"attempts": [attempt]},
    )


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows of one request while it runs."""

    request_id: str
    kind: str
    caller: Caller
    model: str
    started: float
    priority: str = "normal"
    max_tokens: int = 0
    attempts: int = 0
    wait_s: float = 0.0
    target: Target | None = None
    finished: bool = False
    user: str = ""
    tags: list[str] | None = None
    reservation: Reservation | None = None
    cached: bool = False
    saved_usd: float = 0.0
    cost_usd: float = 0.0


T = TypeVar("T")
AnswerT = TypeVar("AnswerT", bound=Answer)
RECENT_REQUESTS = 1000


class Broker:
    """Composes routing, gates, cache, ledger and providers into request handling."""

    def __init__(
        self, config: Config, router: Router, store: Store, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.cache = store.cache
        self.ledger = store.ledger
        self.budgets = store.budgets
        self.prices = store.prices
        self.store_admin = StoreAdmin(store, router)
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._route_prices: dict[str, Price] = {}
        self.started_at = clock.monotonic()
        self.request_ids = RequestIds()
        self.in_flight = 0
        self.requests_total = 0
        self.finished_total = 0
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT_REQUESTS)
        self._default_max_tokens = config.gates.default_max_tokens

    # ------------------------------------------------------------------ chat

    async def chat(self, request: Chat, caller: Caller) -> ChatReply:
        """A chat request answered whole."""
        async with self._pipeline(
            "chat", request.model, caller, user=request.user, tags=request.tags
        ) as context:
            route = self.router.resolve(request.model)  # 1
            context.max_tokens = request.max_tokens or self._default_max_tokens
            prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
            self._reserve_budget(context, route, prompt_tokens, request.cache)  # 2
            key = self.cache.key_of(request)
            hit = self.cache.lookup(key, request.cache)  # 3
            if hit is not None:  # a hit skips to 7
                answer = self._answer_from_cache(context, hit, CachedChat)
                reply = answer.reply(ChatReply, request.id, context.request_id, context.saved_usd)
                reply.latency_s = await self._finish(context, reply.usage)  # 7
                return reply

            async def call(target: Target) -> ChatResult:
                return await target.provider.chat(target.model, request, context.max_tokens)

            result = await self._attempt_targets(route, context, call)  # 4-6
            reply = ChatReply(
                id=request.id,
                content=result.content,
                tool_calls=result.tool_calls,
                finish_reason=result.finish_reason,
                usage=result.usage,
                target=context.target.name if context.target else "",
                attempts=context.attempts,
                wait_s=context.wait_s,
                request_id=context.request_id,
            )
            stored = None
            if key is not None and self.cache.stores(request.cache):
                stored = Cacheable(key, "chat", CachedChat.of(reply))
            reply.latency_s = await self._finish(context, reply.usage, cache_store=stored)  # 7
            reply.cost_usd = context.cost_usd
            return reply

    async def chat_stream(
        self, request: Chat, caller: Caller
    ) -> AsyncIterator[ChatChunk | ChatEnd]:
        """A chat request answered as chunks, then a :class:`ChatEnd` with the accounting.

        An attempt lasts until the first chunk: a target that fails before it is failed over;
        a break after it ends the stream with ``upstream_error`` carrying the partial content.
        """
        async with self._pipeline(
            "stream", request.model, caller, user=request.user, tags=request.tags
        ) as context:
            route = self.router.resolve(request.model)  # 1
            context.max_tokens = request.max_tokens or self._default_max_tokens
            prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
            self._reserve_budget(context, route, prompt_tokens, request.cache)  # 2
            key = self.cache.key_of(request)
            hit = self.cache.lookup(key, request.cache)  # 3
            if hit is not None:  # a hit replays its chunks, then 7
                answer = self._answer_from_cache(context, hit, CachedChat)
                for chunk in answer.replay(request.id):
                    yield chunk
                end = answer.reply(ChatEnd, request.id, context.request_id, context.saved_usd)
                end.latency_s = await self._finish(context, end.usage)  # 7
                yield end
                return

            async def call(target: Target) -> tuple[ChatStream, ChatDelta | None]:
                stream = await target.provider.open_stream(
                    target.model, request, context.max_tokens
                )
                try:
                    first = await anext(aiter(stream.deltas()), None)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
                return stream, first

            stream, first = await self._attempt_targets(route, context, call)  # 4-6
            target = context.target
            assert target is not None
            parts: list[str] = []
            sent: list[ChatChunk] = []
            try:
                if first is not None:
                    parts.append(first.delta)
                    sent.append(chunk := _chunk(request.id, first))
                    yield chunk
                    async for delta in stream.deltas():
                        parts.append(delta.delta)
                        sent.append(chunk := _chunk(request.id, delta))
                        yield chunk
            except ProviderError as error:
                target.failures += 1
                raise RequestError(
                    "upstream_error",
                    f"{target.name} broke the stream after it started ({error.kind}): "
                    f"{error.message}",
                    details={"partial_content": "".join(parts), "target": target.name},
                ) from None
            finally:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            end = ChatEnd(
                id=request.id,
                content="".join(parts),
                finish_reason=stream.finish_reason,
                usage=stream.usage,
                target=target.name,
                attempts=context.attempts,
                wait_s=context.wait_s,
                request_id=context.request_id,
            )
            stored = None
            if key is not None and self.cache.stores(request.cache):
                stored = Cacheable(key, "chat", CachedChat.of(end, sent))
            end.latency_s = await self._finish(context, end.usage, cache_store=stored)  # 7
            end.cost_usd = context.cost_usd
        yield end

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request: Embed, caller: Caller) -> EmbedReply:
        """Embeddings for the request's inputs."""
        async with self._pipeline(
            "embed", request.model, caller, user=request.user, tags=request.tags
        ) as context:
            route = self.router.resolve(request.model)  # 1
            inputs = [request.input] if isinstance(request.input, str) else request.input
            self._reserve_budget(context, route, estimate_input_tokens(inputs), request.cache)  # 2
            key = self.cache.key_of(request)
            hit = self.cache.lookup(key, request.cache)  # 3
            if hit is not None:  # a hit skips to 7
                cached = self._answer_from_cache(context, hit, CachedEmbedding)
                reply = cached.reply(request.id, context.request_id, context.saved_usd)
                reply.latency_s = await self._finish(context, reply.usage)  # 7
                return reply

            async def call(target: Target) -> EmbedResult:
                return await target.provider.embed(
                    target.model, inputs, request.dimensions, request.extra
                )

            result = await self._attempt_targets(route, context, call)  # 4-6
            reply = EmbedReply(
                id=request.id,
                embeddings=result.embeddings,
                usage=result.usage,
                target=context.target.name if context.target else "",
                attempts=context.attempts,
                wait_s=context.wait_s,
                request_id=context.request_id,
            )
            stored = None
            if key is not None and self.cache.stores(request.cache):
                stored = Cacheable(key, "embed", CachedEmbedding.of(reply))
            reply.latency_s = await self._finish(context, reply.usage, cache_store=stored)  # 7
            reply.cost_usd = context.cost_usd
            return reply

    # ------------------------------------------------------------------ permits

    async def acquire(self, request: Acquire, caller: Caller) -> Permit:
        """A permit on a target's gates for a caller that calls the provider itself."""
        raise RequestError("bad_request", "Acquire is not supported by this daemon version")

    async def settle(self, request: Settle, caller: Caller) -> Ok:
        """Settle a permit with what the call really used."""
        raise RequestError("bad_request", "Settle is not supported by this daemon version")

    # ------------------------------------------------------------------ reports and operator

    async def spend(self, request: Spend, caller: Caller) -> SpendReply:
        """A ledger report, with the budgets' use."""
        now = self.clock.time()
        reply = await self.ledger.report(request.period, request.by, now)
        reply.id = request.id
        reply.budgets = self.budgets.status(now)
        return reply

    async def admin(self, request: Admin, caller: Caller) -> Ok:
        """An operator action."""
        if request.action in STORE_ACTIONS:
            return await self.store_admin.run(request, caller.uid, caller.pid)
        raise RequestError(
            "bad_request", f"admin action {request.action!r} is not supported by this daemon"
        )

    # ------------------------------------------------------------------ the pipeline's frame

    @contextlib.asynccontextmanager
    async def _pipeline(
        self,
        kind: str,
        model: str,
        caller: Caller,
        *,
        user: str = "",
        tags: list[str] | None = None,
    ) -> AsyncIterator[RequestContext]:
        """One request's frame: counts it in flight, and records every outcome at step 7,
        failures and cancellations included."""
        context = RequestContext(
            request_id=self.request_ids.next(),
            kind=kind,
            caller=caller,
            model=model,
            started=self.clock.monotonic(),
            user=user,
            tags=tags,
        )
        self.in_flight += 1
        self.requests_total += 1
        try:
            yield context
        except RequestError as error:
            if not context.finished:
                with anyio.CancelScope(shield=True):
                    await self._finish(context, error=error)
            raise
        except anyio.get_cancelled_exc_class():
            if not context.finished:
                with anyio.CancelScope(shield=True):
                    await self._finish(context, status="cancelled")
            raise
        finally:
            self.in_flight -= 1

    async def _finish(
        self,
        context: RequestContext,
        usage: Usage | None = None,
        *,
        error: RequestError | None = None,
        status: str = "ok",
        cache_store: Cacheable | None = None,
    ) -> float:
        """Step 7: settle the budget reservation with the real cost, commit the ledger row
        (and the cache entry, in the same group commit), THEN return the latency in seconds.
        The cost is left in ``context.cost_usd``. A row that cannot be committed fails a
        request that had succeeded with ``internal`` (its reply is withheld)."""
        context.finished = True
        now = self.clock.time()
        latency_s = self.clock.monotonic() - context.started
        usage = usage or Usage()
        target = context.target.name if context.target else ""
        price = self.prices.for_target(target) if target and not context.cached else None
        cost = context.cost_usd = price.cost(usage) if price is not None else 0.0
        for alert in self.budgets.settle(context.reservation, context.caller.app, cost, now):
            self.add_event("budget_alert", alert.message)
        outcome = error.code if error else status
        caller = context.caller
        row = LedgerRow(
            request_id=context.request_id,
            time=now,
            day=self.ledger.calendar.day(now),
            kind=context.kind,
            app=caller.app,
            user=context.user,
            uid=caller.uid,
            pid=caller.pid,
            gid=caller.gid,
            model=context.model,
            target=target,
            attempts=context.attempts,
            status=outcome,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost,
            saved_usd=context.saved_usd,
            cached=context.cached,
            unpriced=bool(target) and price is None and not context.cached,
            wait_s=context.wait_s,
            latency_s=latency_s,
            priority=context.priority,
            tags=encode_tags(context.tags or ()),
        )
        self.finished_total += 1
        self.recent.append(live_record(row))
        if cache_store is not None and error is None:
            self.cache.put(
                cache_store.key, cache_store.kind, context.model, cache_store.answer, cost
            )
        try:
            await self.ledger.record(row)  # the cache entry joins this commit
        except LedgerWriteFailed as failure:
            self.add_event("ledger_write_failed", str(failure))
            if error is None:
                raise RequestError(
                    "internal", str(failure), details={"request_id": failure.request_id}
                ) from None
        return latency_s

    def _reserve_budget(
        self, context: RequestContext, route: Route, prompt_tokens: int, cache: CacheMode
    ) -> None:
        """Step 2: hold the request's maximum cost (its prompt and ``max_tokens`` at the most
        expensive target of its route) on its budgets; ``budget_exceeded`` when it does not
        fit. A ``cache="only"`` request never calls a provider, so it holds nothing."""
        if cache == "only":
            return
        price = self._route_prices.get(route.name)
        if price is None:
            names = tuple(target.name for target in route.targets)
            price = self._route_prices[route.name] = self.prices.most_expensive(names)
        max_cost = (prompt_tokens * price.input + context.max_tokens * price.output) * PER_TOKEN
        context.reservation = self.budgets.reserve(context.caller.app, max_cost, self.clock.time())

    def _answer_from_cache(
        self, context: RequestContext, entry: CacheEntry, kind: type[AnswerT]
    ) -> AnswerT:
        """Step 3 hit: the request is answered by ``entry`` at no cost, saving what the call
        it replaces cost."""
        answer = entry.answer
        assert isinstance(answer, kind)
        context.cached = True
        context.saved_usd = entry.cost_usd
        context.target = self.router.targets.get(answer.target)
        return answer

    def add_event(self, kind: str, message: str) -> None:
        """Something an operator should notice: logged, and kept for status and snapshots."""
        log.warning("%s: %s", kind, message)
        self.events.append(Event(time=self.clock.time(), kind=kind, message=message))

    def recent_since(self, finished_seen: int) -> tuple[list[RequestRecord], int]:
        """Requests finished since a subscriber saw ``finished_seen`` of them (at most the
        last :data:`RECENT_REQUESTS`), and the new count to remember."""
        missed = min(self.finished_total - finished_seen, len(self.recent))
        records = list(itertools.islice(self.recent, len(self.recent) - missed, None))
        return records, self.finished_total

    # ------------------------------------------------------------------ attempts

    async def _attempt_targets(
        self,
        route: Route,
        context: RequestContext,
        call: Callable[[Target], Awaitable[T]],
    ) -> T:
        """Steps 4-6: call the route's first enabled target; a failure is classified."""
        target = self._first_target(route)
        context.target = target
        context.attempts += 1
        target.in_flight += 1
        target.requests += 1
        try:
            return await call(target)  # 5
        except ProviderError as error:  # 6
            target.failures += 1
            raise _upstream_error(target, error) from None
        finally:
            target.in_flight -= 1

    # ------------------------------------------------------------------ status

    def status(self) -> StatusReply:
        """The daemon's state now."""
        targets = [
            TargetStatus(
                name=target.name,
                provider=target.provider_name,
                model=target.model,
                kind=target.provider.kind,
                enabled=target.enabled,
                in_flight=target.in_flight,
                requests=target.requests,
                failures=target.failures,
                unpriced=self.prices.for_target(target.name) is None,
            )
            for target in self.router.targets.values()
        ]
        groups = [
            GroupStatus(
                name=route.name,
                strategy=route.strategy,
                order=[target.name for target in route.targets],
                why="configured order",
            )
            for route in self.router.groups.values()
        ]
        return StatusReply(
            daemon_version=DAEMON_VERSION,
            pid=os.getpid(),
            uptime_s=self.clock.monotonic() - self.started_at,
            config_path=self.config.source,
            in_flight=self.in_flight,
            requests_total=self.requests_total,
            targets=targets,
            groups=groups,
            cache=self.cache.status(),
            budgets=self.budgets.status(self.clock.time()),
            events=list(self.events),
        )

    # ------------------------------------------------------------------ helpers

    def _first_target(self, route: Route) -> Target:
        for target in route.targets:
            if target.enabled:
                return target
        raise RequestError(
            "upstream_error",
            f"every target of {route.name!r} is disabled: "
            + ", ".join(target.name for target in route.targets),
        )


def _chunk(request_id: int, delta: ChatDelta) -> ChatChunk:
    return ChatChunk(
        id=request_id,
        delta=delta.delta,
        tool_calls=delta.tool_calls,
        finish_reason=delta.finish_reason,
    )
