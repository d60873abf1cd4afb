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

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import msgspec

from quotad.daemon.activity import AppActivity, AppActivityLog
from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Demand, Gates, Reservation
from quotad.daemon.logs import REQUEST_LOG, log_request
from quotad.daemon.metrics import Metrics
from quotad.daemon.net.deadlines import Deadlines
from quotad.daemon.providers.base import (
    NO_RATE_LIMITS,
    ChatResult,
    EmbedResult,
    ProviderError,
)
from quotad.daemon.providers.ratelimits import parse_rate_limits
from quotad.daemon.request import (
    Caller,
    OpenedStream,
    ProviderAnswer,
    RequestContext,
    RequestIds,
    announce,
    chunk_of,
    first_chunk_of,
    merge_tool_calls,
    partial_usage,
)
from quotad.daemon.request_limits import (
    check_embed_extra,
    completion_limit,
    completion_tokens_upper_bound,
)
from quotad.daemon.routing import Route, Router, Target
from quotad.daemon.store import Store
from quotad.daemon.store.admin import STORE_ACTIONS, StoreAdmin
from quotad.daemon.store.cache import (
    Answer,
    Cacheable,
    CachedChat,
    CachedEmbedding,
    CacheEntry,
)
from quotad.daemon.store.ledger import LedgerRow, LedgerWriteFailed, encode_tags, live_record
from quotad.daemon.store.prices import PER_TOKEN, Price
from quotad.daemon.tokens import (
    chat_prompt_tokens_upper_bound,
    estimate_input_tokens,
    estimate_prompt_tokens,
    input_tokens_upper_bound,
)
from quotad.protocol.messages import (
    Acquire,
    Admin,
    AppStatus,
    CacheMode,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
    Ok,
    Permit,
    RequestRecord,
    Settle,
    Spend,
    SpendReply,
    StatusReply,
    Usage,
)

DAEMON_VERSION: Final = "0.1.0"

log = logging.getLogger("quotad.broker")


T = TypeVar("T", bound=ProviderAnswer)
AnswerT = TypeVar("AnswerT", bound=Answer)
R = TypeVar("R")
RECENT_REQUESTS = 1000
DEFAULT_429_PAUSE_S = 1.0
"""How long a 429 without retry-after pauses its target."""


class Broker:
    """Composes routing, gates, cache, ledger and providers into request handling."""

    def __init__(
        self,
        config: Config,
        router: Router,
        store: Store,
        clock: Clock = SYSTEM_CLOCK,
        *,
        gates: Gates | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.gates = gates if gates is not None else Gates(config, clock)
        self.clock = clock
        self.cache = store.cache
        self.ledger = store.ledger
        self.budgets = store.budgets
        self.prices = store.prices
        self.audit = store.audit
        self.store_admin = StoreAdmin(store, router)
        self.reload_config: Callable[[int | None, int | None], Awaitable[bool]] | None = None
        """Set by the runtime: re-read the config (``Admin(action="reload")``)."""
        self._route_prices: dict[str, Price] = {}
        self.started_at = clock.monotonic()
        self.request_ids = RequestIds()
        self.in_flight = 0
        self.requests_total = 0
        self.finished_total = 0
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT_REQUESTS)
        self.activity = AppActivityLog()
        self.metrics = Metrics()
        self.deadlines = Deadlines()
        self._default_max_tokens = config.gates.default_max_tokens
        self._config_generation = 0
        self._in_flight_before_reconfigure = 0
        self._earlier_requests_done: list[anyio.Event] = []

    # ------------------------------------------------------------------ chat

    async def chat(self, request: Chat, caller: Caller) -> ChatReply:
        """A chat request answered whole."""
        async with self._pipeline(
            "chat", request.model, caller, user=request.user, tags=request.tags
        ) as context:
            route = self.router.resolve(request.model)  # 1
            self._plan_chat(context, request)
            self._reserve_budget(context, route, request.cache, self._chat_bounds, request)  # 2
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
                target=context.target_name,
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
            self._plan_chat(context, request)
            self._reserve_budget(context, route, request.cache, self._chat_bounds, request)  # 2
            key = self.cache.key_of(request)
            hit = self.cache.lookup(key, request.cache)  # 3
            if hit is not None:  # a hit: 7 (its row committed), then its chunks replayed
                answer = self._answer_from_cache(context, hit, CachedChat)
                end = answer.reply(ChatEnd, request.id, context.request_id, context.saved_usd)
                end.latency_s = await self._finish(context, end.usage)  # 7
                chunks = answer.replay(request.id)
                announce(chunks[0], context, answer.target)
                for chunk in chunks:
                    yield chunk
                yield end
                return

            async def call(target: Target) -> OpenedStream:
                stream = await target.provider.open_stream(
                    target.model, request, context.max_tokens
                )
                try:
                    first = await anext(aiter(stream.deltas()), None)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
                return OpenedStream(stream, first)

            stream, first = await self._attempt_targets(route, context, call)  # 4-6
            target = context.target
            assert target is not None
            stores = key is not None and self.cache.stores(request.cache)
            parts: list[str] = []
            tool_call_fragments: list[dict[str, Any]] = []
            sent: list[ChatChunk] = []  # for the cache, when it stores the answer
            target.in_flight += 1
            try:
                if first is not None:
                    parts.append(first.delta)
                    tool_call_fragments += first.tool_calls or ()
                    chunk = first_chunk_of(request.id, first, context)
                    if stores:
                        sent.append(chunk)
                    yield chunk
                    async for delta in stream.deltas():
                        parts.append(delta.delta)
                        tool_call_fragments += delta.tool_calls or ()
                        chunk = chunk_of(request.id, delta)
                        if stores:
                            sent.append(chunk)
                        yield chunk
            except ProviderError as error:
                target.stream_broke()
                partial = "".join(parts)
                broken = RequestError(
                    "upstream_error",
                    f"{target.name} broke the stream after it started ({error.kind}): "
                    f"{error.message}",
                    details={"partial_content": partial, "target": target.name},
                )
                usage = partial_usage(
                    stream.usage, request, partial, tool_call_fragments, context.max_tokens
                )
                with anyio.CancelScope(shield=True):
                    await self._finish(context, usage, error=broken)  # 7
                raise broken from None
            finally:
                target.in_flight -= 1
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            end = ChatEnd(
                id=request.id,
                content="".join(parts),
                tool_calls=merge_tool_calls(tool_call_fragments),
                finish_reason=stream.finish_reason,
                usage=stream.usage,
                target=target.name,
                attempts=context.attempts,
                wait_s=context.wait_s,
                request_id=context.request_id,
            )
            stored = None
            if stores:
                assert key is not None
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
            check_embed_extra(request.extra)
            input_tokens = estimate_input_tokens(inputs)
            self._plan(context, request.priority, request.max_wait_s, input_tokens)
            self._reserve_budget(context, route, request.cache, self._embed_bounds, inputs)  # 2
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
                target=context.target_name,
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

    def acquire_now(self, request: Acquire, caller: Caller) -> Permit | None:
        """A permit at once when the gates admit it without waiting (nobody waits ahead of it
        and it fits now); None when it has to wait (:meth:`acquire`). Lets the socket server
        answer an uncontended Acquire in its read callback, without a task."""
        target, demand, _ = self._permit_demand(request, caller)
        reservation = self.gates.admit_now(demand)
        if reservation is None:
            return None
        return self._grant(request, target, reservation, 0.0)

    async def acquire(self, request: Acquire, caller: Caller) -> Permit:
        """A permit on a target's gates, for a caller that calls the provider itself with its
        own SDK: the same admission a request through the daemon would take."""
        target, demand, app = self._permit_demand(request, caller)
        priority = request.priority or self.gates.app_policy(app).priority
        reservation, waited = await self.gates.admit(
            demand, app=app, priority=priority, max_wait_s=request.max_wait_s
        )
        return self._grant(request, target, reservation, waited)

    def _permit_demand(self, request: Acquire, caller: Caller) -> tuple[Target, Demand, str]:
        """The target an Acquire asks for, its demand on the gates, and its app; a lease
        longer than ``gates.max_lease_s`` is refused (a permit must end)."""
        max_lease_s = self.gates.max_lease_s
        if request.lease_s is not None and not request.lease_s <= max_lease_s:
            raise RequestError(
                "bad_request",
                f"lease_s: {request.lease_s:g} s is over gates.max_lease_s ({max_lease_s:g} s)",
            )
        route = self.router.resolve(request.target)
        target = next((t for t in route.targets if t.enabled), route.targets[0])
        app = request.app or caller.app
        demand = self.gates.demand(target.provider_name, target.name, app, request.tokens)
        return target, demand, app

    def _grant(
        self, request: Acquire, target: Target, reservation: Reservation, waited: float
    ) -> Permit:
        held = self.gates.grant_permit(
            reservation, target.provider_name, target.name, request.lease_s
        )
        return Permit(
            id=request.id,
            permit_id=held.permit_id,
            wait_s=waited,
            lease_s=held.expires_at - self.clock.monotonic(),
        )

    def settle(self, request: Settle, caller: Caller) -> Ok:
        """Settle a permit with what the call really used, and learn from the provider's
        rate-limit headers the caller passes on (a 429 pauses the target). Never waits."""
        held = self.gates.take_permit(request.permit_id)
        if held is None:
            raise RequestError(
                "bad_request",
                f"permit {request.permit_id!r} is unknown, already settled or past its lease",
            )
        used = request.tokens_used or (request.prompt_tokens or 0) + (
            request.completion_tokens or 0
        )
        if request.status == "cancelled":
            self.gates.cancel(held.reservation)
        else:
            self.gates.settle(held.reservation, used or None)
        info = parse_rate_limits(request.headers) if request.headers else NO_RATE_LIMITS
        self.gates.observe(held.provider, held.target, info)
        if request.status == "rate_limited":
            self.gates.pause(held.target, info.retry_after_s or DEFAULT_429_PAUSE_S)
        return Ok(id=request.id, message=f"settled {held.permit_id}")

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
        match request.action:
            case "target_enable" | "target_disable" | "target_reset":
                done = self._target_admin(request)
                await self.audit.record(request.action, request.target, caller.uid, caller.pid)
                return done
            case "reload" if self.reload_config is not None:
                if await self.reload_config(caller.uid, caller.pid):
                    return Ok(id=request.id, message="config reloaded")
                raise RequestError(
                    "bad_request",
                    "the new config has problems; still serving the previous one "
                    "(the daemon's log lists every problem; `quotad check-config` too)",
                )
            case _:
                raise RequestError(
                    "bad_request",
                    f"admin action {request.action!r} is not supported by this daemon",
                )

    def _target_admin(self, request: Admin) -> Ok:
        """``quotad target enable|disable|reset NAME``."""
        if not request.target:
            raise RequestError("bad_request", f"{request.action} needs a target name")
        if request.action == "target_enable":
            target = self.router.enable(request.target)
            done = "enabled"
        elif request.action == "target_disable":
            target = self.router.disable(request.target)
            done = "disabled"
        else:
            target = self.router.reset(request.target)
            self.gates.unpause(target.name)
            done = "reset: its breaker is closed and its 429 pause lifted"
        status = self.router.target_status(target)
        return Ok(id=request.id, message=f"{target.name} {done}", data=msgspec.to_builtins(status))

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
        generation = self._config_generation
        self.in_flight += 1
        self.requests_total += 1
        activity = self.activity.of(caller.app)
        activity.requests += 1
        activity.in_flight += 1
        try:
            yield context
        except RequestError as error:
            error.request_id = error.request_id or context.request_id
            if not context.finished:
                with anyio.CancelScope(shield=True):
                    await self._finish(context, error=error)
            raise
        except (anyio.get_cancelled_exc_class(), GeneratorExit):  # GeneratorExit: a stream
            if not context.finished:  # closed by its reader before its end
                with anyio.CancelScope(shield=True):
                    await self._finish(context, status="cancelled")
            raise
        except Exception as failure:  # a bug, not a request's error: still a row, holds back
            if not context.finished:
                internal = RequestError("internal", f"{type(failure).__name__}: {failure}")
                with anyio.CancelScope(shield=True):
                    await self._finish(context, error=internal)
            raise
        finally:
            self.in_flight -= 1
            activity.in_flight -= 1
            if generation != self._config_generation:
                self._earlier_request_finished()

    async def _finish(
        self,
        context: RequestContext,
        usage: Usage | None = None,
        *,
        error: RequestError | None = None,
        status: str = "ok",
        cache_store: Cacheable | None = None,
    ) -> float:
        """Step 7: settle the budget hold with the real cost, commit the ledger row (and the
        cache entry, in the same group commit), THEN return the latency in seconds. The cost
        is left in ``context.cost_usd``. A row that cannot be committed fails a request that
        had succeeded with ``internal`` (its reply is withheld)."""
        now = self.clock.time()
        latency_s = self.clock.monotonic() - context.started
        usage = usage or Usage()
        if context.reservation is not None:  # return the tokens that were not used
            self.gates.settle(context.reservation, usage.total_tokens or None)
            context.reservation = None
        target = context.target_name
        price = self.prices.for_target(target) if target and not context.cached else None
        cost = context.cost_usd = price.cost(usage) if price is not None else 0.0
        for alert in self.budgets.settle(context.budget, context.caller.app, cost, now):
            self.add_event("budget_alert", alert.message)
        context.budget = None  # settled: a second _finish (after a bug below) holds nothing
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
            status=error.code if error else status,
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
        if cache_store is not None and error is None:
            self.cache.put(
                cache_store.key, cache_store.kind, context.model, cache_store.answer, cost
            )
        context.finished = True  # only now: a failure before this still gets its row
        try:
            await self.ledger.record(row)  # the cache entry joins this commit
        except LedgerWriteFailed as failure:
            self.add_event("ledger_write_failed", str(failure))
            if error is None:
                raise RequestError(
                    "internal", str(failure), details={"request_id": failure.request_id}
                ) from None
        finally:  # once this task has sent its reply: counting is not on the reply's path
            asyncio.get_running_loop().call_soon(self._count_finished, row)
        return latency_s

    def _count_finished(self, row: LedgerRow) -> None:
        """Step 7's counting, run just after the reply: activity, the live tail, metrics
        (a row's ``target`` is empty when the request reached none), and at debug level one
        log line (nothing is formatted otherwise)."""
        self.finished_total += 1
        self.activity.finished(row.app, row.wait_s, row.day, row.cost_usd)
        record = live_record(row)
        self.recent.append(record)
        self.metrics.observe_request(record, resolved=bool(row.target))
        if REQUEST_LOG.isEnabledFor(logging.DEBUG):
            log_request(row)

    def _reserve_budget(
        self,
        context: RequestContext,
        route: Route,
        cache: CacheMode,
        bounds: Callable[[RequestContext, R], tuple[int, int]],
        request: R,
    ) -> None:
        """Step 2: hold the request's maximum cost (the most prompt and completion tokens a
        provider can bill it, ``bounds(context, request)``, at the most expensive target of its
        route) on its budgets; ``budget_exceeded`` when it does not fit. The bounds are only
        counted when a budget applies. A ``cache="only"`` request never calls a provider, so it
        holds nothing."""
        if cache == "only" or not self.budgets.apply_to(context.caller.app):
            return
        price = self._route_prices.get(route.name)
        if price is None:
            names = tuple(target.name for target in route.targets)
            price = self._route_prices[route.name] = self.prices.most_expensive(names)
        prompt_tokens, completion_tokens = bounds(context, request)
        max_cost = (prompt_tokens * price.input + completion_tokens * price.output) * PER_TOKEN
        context.budget = self.budgets.reserve(context.caller.app, max_cost, self.clock.time())

    @staticmethod
    def _chat_bounds(context: RequestContext, request: Chat) -> tuple[int, int]:
        """The most prompt and completion tokens a provider can bill a chat request (see
        :mod:`quotad.daemon.tokens`), its completion limit being what :meth:`_plan_chat` set."""
        prompt = chat_prompt_tokens_upper_bound(request)
        return prompt, completion_tokens_upper_bound(context.max_tokens, request.extra)

    @staticmethod
    def _embed_bounds(context: RequestContext, inputs: list[str]) -> tuple[int, int]:
        """The most tokens a provider can bill embedding ``inputs``: theirs, no completion."""
        return input_tokens_upper_bound(inputs), 0

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

    def target_price(self, target: str) -> float | None:
        """USD per 1M input plus 1M output tokens on ``target`` (the cost strategy's order)."""
        price = self.prices.for_target(target)
        return None if price is None else price.input + price.output

    def add_event(self, kind: str, message: str) -> None:
        """Something an operator should notice: logged, and kept for status and snapshots."""
        self.router.events.add(kind, message, logging.WARNING)

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
        """Steps 4-6: try the route's targets in its strategy's order until one answers.

        ``attempts`` skips disabled and open-breaker targets, waits the backoff before a
        retry, and gives the error when none answered; the request's deadline bounds it all.
        """
        attempts = self.router.attempts(route, context.started, self.target_price)
        deadline = self.deadlines.within(attempts.time_left_s())
        try:
            with deadline:
                while (target := await attempts.next_target()) is not None:
                    try:
                        if not await self._admit(target, context, attempts.alternatives()):  # 4
                            attempts.passed_over(target, "its gates are full")
                            continue
                        context.target = target  # only once admitted: a refusal reached none
                        context.attempts += 1
                        attempts.started(target)
                        answer = await call(target)  # 5
                    except ProviderError as error:  # 6
                        self._gate_feedback(target, context, error)
                        attempts.failed(target, error)  # a caller's 4xx: bad_request
                        continue
                    except BaseException:
                        attempts.abandoned(target)
                        raise
                    self.gates.observe(target.provider_name, target.name, answer.rate_limits)
                    attempts.succeeded(target)
                    return answer
        except TimeoutError:
            if not deadline.expired:
                raise
        raise attempts.exhausted()

    async def _admit(self, target: Target, context: RequestContext, alternatives: bool) -> bool:
        """Step 4: take the request's place on every gate of ``target``. With other targets
        left to try, only an immediate admission is taken (False: none); the last candidate
        waits in the queue up to the request's max_wait_s."""
        demand = self.gates.demand(
            target.provider_name, target.name, context.caller.app, context.tokens
        )
        if alternatives:
            context.reservation = self.gates.admit_now(demand)
            return context.reservation is not None
        context.reservation, waited = await self.gates.admit(
            demand,
            app=context.caller.app,
            priority=context.priority,
            max_wait_s=context.max_wait_s,
        )
        context.wait_s += waited
        return True

    def _gate_feedback(self, target: Target, context: RequestContext, error: ProviderError) -> None:
        """A failed attempt still counts at the provider; its headers and a 429 teach the gates."""
        if context.reservation is not None:
            self.gates.settle(context.reservation, None)
            context.reservation = None
        self.gates.observe(target.provider_name, target.name, error.rate_limits)
        if error.kind == "rate_limited":
            self.gates.pause(target.name, error.retry_after_s or DEFAULT_429_PAUSE_S)

    def _plan_chat(self, context: RequestContext, request: Chat) -> None:
        """A chat request's priority, wait, completion limit (its ``max_tokens``, or a larger
        spelling of it in ``extra``; refused fields of ``extra`` are ``bad_request``: see
        :mod:`quotad.daemon.request_limits`) and gate reservation: the prompt's estimated
        tokens + that limit."""
        context.max_tokens = completion_limit(request, self._default_max_tokens)
        prompt = estimate_prompt_tokens(request.messages, request.tools)
        self._plan(context, request.priority, request.max_wait_s, prompt + context.max_tokens)

    def _plan(
        self, context: RequestContext, priority: str | None, max_wait_s: float | None, tokens: int
    ) -> None:
        context.priority = priority or self.gates.app_policy(context.caller.app).priority
        context.max_wait_s = max_wait_s
        context.tokens = tokens

    # ------------------------------------------------------------------ status

    def status(self) -> StatusReply:
        """The daemon's state now."""
        router = self.router
        gates, queues, queued_by_app = self.gates.status()
        targets = [router.target_status(target) for target in router.targets.values()]
        for target_status in targets:
            target_status.unpriced = self.prices.for_target(target_status.name) is None
            target_status.paused_until = self.gates.paused_until(target_status.name)
        now = self.clock.time()
        return StatusReply(
            daemon_version=DAEMON_VERSION,
            pid=os.getpid(),
            uptime_s=self.clock.monotonic() - self.started_at,
            config_path=self.config.source,
            in_flight=self.in_flight,
            requests_total=self.requests_total,
            targets=targets,
            groups=[
                router.group_status(route, self.target_price) for route in router.groups.values()
            ],
            gates=gates,
            queues=queues,
            apps=self._app_status(queued_by_app),
            cache=self.cache.status(),
            budgets=self.budgets.status(now),
            events=router.events.recent(),
        )

    def load_app_spend(self, spent: list[tuple[str, float, float]], now: float) -> None:
        """Today's spend per app from the ledger (``(app, today, month)``), at start."""
        self.activity.load_spend(spent, self.ledger.calendar.day(now))

    def _app_status(self, queued_by_app: dict[str, int]) -> list[AppStatus]:
        """Each app the config names or that was seen: its policy, queue and activity."""
        today = self.ledger.calendar.day(self.clock.time())
        apps = []
        for name in sorted(set(self.config.apps) | set(queued_by_app) | self.activity.names()):
            policy = self.gates.app_policy(name)
            activity = self.activity.get(name) or AppActivity()
            apps.append(
                AppStatus(
                    name=name,
                    priority=policy.priority,
                    share=policy.share,
                    requests=activity.requests,
                    in_flight=activity.in_flight,
                    queued=queued_by_app.get(name, 0),
                    wait_s_total=activity.wait_s_total,
                    spend_today_usd=activity.spend_today_usd if activity.day == today else 0.0,
                )
            )
        return apps

    # ------------------------------------------------------------------ reload

    def reconfigure(self, config: Config, router: Router) -> anyio.Event:
        """Serve new requests with a reloaded config and router (SIGHUP). Requests in flight
        run on to their end; a provider call already under way ends on the provider it began
        with.

        Returns an event set once every request in flight now has finished: then the
        providers the new router no longer uses may be closed.
        """
        self.config = config
        self.router = router
        self.store_admin.router = router
        self._route_prices.clear()
        self._default_max_tokens = config.gates.default_max_tokens
        self._config_generation += 1
        self._in_flight_before_reconfigure = self.in_flight
        done = anyio.Event()
        self._earlier_requests_done.append(done)
        if not self.in_flight:
            self._wake_reconfigure_waiters()
        return done

    def _earlier_request_finished(self) -> None:
        """A request that began before the last :meth:`reconfigure` ended."""
        self._in_flight_before_reconfigure -= 1
        if not self._in_flight_before_reconfigure:
            self._wake_reconfigure_waiters()

    def _wake_reconfigure_waiters(self) -> None:
        for event in self._earlier_requests_done:
            event.set()
        self._earlier_requests_done.clear()
