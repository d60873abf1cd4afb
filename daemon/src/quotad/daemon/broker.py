"""THE request pipeline (DESIGN §2): one readable function per request kind.

Each function walks the same list, in order:

0. guardrails: the request masked, or refused (guardrails)        blocked
1. resolve the model to a route of targets (routing)             unknown_model
2. the ledger can take a row; budget check and cost reservation   overloaded, budget_exceeded
3. cache lookup (cache)                                            a hit skips to 7
4. gate admission on the chosen target (gates)                     rate_limited
5. call the provider (providers)
6. on failure: classify, retry or move to the next target          upstream_error
   on success: settle the gate reservation with the real usage
7. ledger row (+ cache store) committed, THEN reply

Gates, cache, ledger and routing never call each other; this module composes them. Servers
(the Unix socket, the HTTP front door) call :class:`Broker` with a decoded message and the
:class:`~quotad.daemon.caller.Caller` it came from, and turn
:class:`~quotad.daemon.errors.RequestError` into errors.

The broker's other request kinds have their own homes, which it builds and front ends reach
through it: :attr:`Broker.permits` (``Acquire``/``Settle``, :mod:`quotad.daemon.permits`),
:attr:`Broker.admin` (``Admin``, :mod:`quotad.daemon.admin`), :attr:`Broker.reports`
(``Status``/``Spend``, :mod:`quotad.daemon.status`); :attr:`Broker.tail` is what watches
requests live (``Subscribe``, metrics: :mod:`quotad.daemon.live_tail`). Step 2's arithmetic is
:attr:`Broker.budget_holds` (:mod:`quotad.daemon.budget_holds`), what a request plans and a
cache hit answers is :class:`~quotad.daemon.request_context.RequestContext`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from quotad.daemon.admin import AdminActions
from quotad.daemon.budget_holds import BudgetHolds
from quotad.daemon.caller import Caller
from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.config_generations import ConfigGenerations
from quotad.daemon.declared_names import DeclaredNames
from quotad.daemon.errors import RequestError
from quotad.daemon.events import EventLog
from quotad.daemon.gates import Gates
from quotad.daemon.guardrails.blocked import Blocked
from quotad.daemon.guardrails.screening import Guardrails
from quotad.daemon.live_tail import LiveTail
from quotad.daemon.net.deadlines import Deadlines
from quotad.daemon.permits import DEFAULT_429_PAUSE_S, Permits
from quotad.daemon.providers.base import ChatResult, EmbedResult, ProviderAnswer, ProviderError
from quotad.daemon.request_context import RequestContext, RequestIds
from quotad.daemon.request_limits import check_names, check_size, embed_inputs
from quotad.daemon.routing import Route, Router, Target
from quotad.daemon.semantic.step import SemanticStep
from quotad.daemon.status import DAEMON_VERSION, StatusReports
from quotad.daemon.store import Store
from quotad.daemon.store.cache import Cacheable, CachedChat, CachedEmbedding, CacheEntry
from quotad.daemon.store.ledger import LedgerWriteFailed
from quotad.daemon.streamed_answer import OpenedStream, StreamedAnswer, broken_stream, hit_batches
from quotad.protocol.messages import (
    CacheMode,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
    Usage,
)

__all__ = ["DAEMON_VERSION", "Broker"]

T = TypeVar("T", bound=ProviderAnswer)
AnsweredT = TypeVar("AnsweredT", ChatReply, ChatEnd, EmbedReply)


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
        events: EventLog | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.gates = gates if gates is not None else Gates(config, clock)
        self.guardrails = Guardrails(config)
        self.clock = clock
        self.cache = store.cache
        self.ledger = store.ledger
        self.budgets = store.budgets
        self.prices = store.prices
        self.events = events if events is not None else router.events
        """The daemon's event log (the runtime's, which the router reports to as well)."""
        self.request_ids = RequestIds()
        self.deadlines = Deadlines()
        self.generations = ConfigGenerations()
        self.tail = LiveTail()
        self.tail.declare(DeclaredNames.of(config.apps, config.models, router.declared_targets))
        self.metrics = self.tail.metrics
        self.permits = Permits(self.gates, router, clock)
        self.admin = AdminActions(store, router, self.gates, self.guardrails)
        self.semantic = SemanticStep(store.cache, store.db, config, self.events)
        """Step 3's semantic lookup after an exact miss, step 7's question held (§11)."""
        self.reports = StatusReports(
            config, router, self.gates, store, self.tail, self.events, clock
        )
        self.budget_holds = BudgetHolds(store.budgets, store.prices, clock)
        """Step 2: each request's maximum cost held on its budgets."""
        self._default_max_tokens = config.gates.default_max_tokens

    # ------------------------------------------------------------------ chat

    async def chat(self, request: Chat, caller: Caller) -> ChatReply:
        """A chat request answered whole."""
        async with self._pipeline("chat", request, caller) as context:
            request, screening = await self.guardrails.check(request, context)  # 0
            route, key, hit = await self._steps_1_to_3(context, request)
            if hit is not None:  # a hit skips to 7
                answer = context.answered_from_cache(hit, CachedChat, self.router.targets)
                reply = answer.reply(
                    ChatReply, request.id, context.request_id, context.saved_usd, hit.similarity
                )
                reply = screening.reply(reply)  # the output rules, this caller's values back
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
                usage=context.charged_answer_usage(result),
            )
            try:
                reply = screening.screen(reply)  # the output rules: what the cache may keep
            except Blocked as blocked:  # refused after the provider answered: still billed
                await self._finish(context, reply.usage, error=blocked)  # 7
                raise
            reply = await self._answered(context, reply, key, request.cache)  # 7
            return screening.restore(reply)  # the caller's values back

    async def chat_stream(
        self, request: Chat, caller: Caller
    ) -> AsyncIterator[ChatChunk | ChatEnd]:
        """A chat request answered as chunks, then a :class:`ChatEnd` with the accounting.

        An attempt lasts until the first chunk: a target that fails before it is failed over;
        a break after it ends the stream with ``upstream_error`` carrying the partial content.
        """
        async with self._pipeline("stream", request, caller) as context:
            request, screening = await self.guardrails.check(request, context)  # 0
            route, key, hit = await self._steps_1_to_3(context, request)
            if hit is not None:  # a hit: 7 (its row committed), then its chunks replayed
                answer = context.answered_from_cache(hit, CachedChat, self.router.targets)
                end = answer.reply(
                    ChatEnd, request.id, context.request_id, context.saved_usd, hit.similarity
                )
                batches, end = screening.replay_hit(answer, end, request.id)
                end.latency_s = await self._finish(context, end.usage)  # 7
                for batch in hit_batches(batches, context, answer.target):
                    for chunk in batch:
                        yield chunk
                    await anyio.lowlevel.checkpoint()  # a turn for the others: none of it waits
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
            delivered = StreamedAnswer(request.id, keep_chunks=False)
            # each chunk screened (kept for the cache when it stores the answer), then restored
            screened = screening.stream(
                request.id, keep=key is not None and self.cache.stores(request.cache)
            )
            target.in_flight += 1
            try:
                if first is not None:
                    yield screened.first(delivered.first_chunk(first, context))
                    async for delta in stream.deltas():
                        if (shown := screened.chunk(delivered.chunk(delta))) is not None:
                            yield shown
                if (shown := screened.flush()) is not None:  # what screening still held
                    yield shown
            except (ProviderError, Blocked) as error:  # the provider is paid for what it sent
                failure = (
                    error  # an output rule refused what came
                    if isinstance(error, Blocked)
                    else broken_stream(target, error, screened.partial(delivered.content))
                )
                usage = delivered.charged_usage(stream, context, ended=False)
                with anyio.CancelScope(shield=True):
                    await self._finish(context, usage, error=failure)  # 7
                raise failure from None
            except BaseException:  # its reader left (or was cancelled): paid for what it sent
                context.delivered_usage = delivered.charged_usage(stream, context, ended=False)
                raise
            finally:
                target.in_flight -= 1
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            end = ChatEnd(
                id=request.id,
                content=delivered.content,
                tool_calls=delivered.tool_calls(),
                finish_reason=stream.finish_reason,
                usage=delivered.charged_usage(stream, context, ended=True),
            )
            end = screened.end(end)  # of the screened chunks: what the cache may keep
            end = await self._answered(context, end, key, request.cache, screened.sent)  # 7
            end = screening.restore(end)  # the caller's values back
        yield end

    async def _steps_1_to_3(
        self, context: RequestContext, request: Chat | Embed
    ) -> tuple[Route, bytes | None, CacheEntry | None]:
        """Steps 1-3, the same for every request kind: its route, its cache key (None: not
        cacheable) and the cache's answer (None: a miss, or the cache was not asked). A chat
        request is looked up exactly, then semantically (:mod:`quotad.daemon.semantic.step`;
        the question it asks is kept in ``context.asked`` for step 7)."""
        check_names(request)  # 1: names that may stand in a log line, a table, a target
        route = self.router.resolve(request.model)  # 1
        context.plan(request, self._default_max_tokens, self.gates.app_policy)
        await self.ledger.ready()  # 2: its row can be written (no provider paid for a lost reply)
        await self.budget_holds.reserve(context, route, request)  # 2
        key = await self.cache.key_of(request, (target.name for target in route.targets))
        if isinstance(request, Chat):  # 3: exact, then semantic
            hit, context.asked = await self.semantic.lookup(request, key)
            return route, key, hit
        return route, key, await self.cache.lookup(key, request.cache)  # 3

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request: Embed, caller: Caller) -> EmbedReply:
        """Embeddings for the request's inputs."""
        async with self._pipeline("embed", request, caller) as context:
            request, _ = await self.guardrails.check(request, context)  # 0
            route, key, hit = await self._steps_1_to_3(context, request)
            if hit is not None:  # a hit skips to 7
                cached = context.answered_from_cache(hit, CachedEmbedding, self.router.targets)
                reply = cached.reply(request.id, context.request_id, context.saved_usd)
                reply.latency_s = await self._finish(context, reply.usage)  # 7
                return reply

            inputs = embed_inputs(request)

            async def call(target: Target) -> EmbedResult:
                return await target.provider.embed(
                    target.model, inputs, request.dimensions, request.extra
                )

            result = await self._attempt_targets(route, context, call)  # 4-6
            usage = context.charged_answer_usage(result)
            reply = EmbedReply(id=request.id, embeddings=result.embeddings, usage=usage)
            return await self._answered(context, reply, key, request.cache)  # 7

    # ------------------------------------------------------------------ the pipeline's frame

    @contextlib.asynccontextmanager
    async def _pipeline(
        self, kind: str, request: Chat | Embed, caller: Caller
    ) -> AsyncIterator[RequestContext]:
        """One request's frame: counts it in flight, refuses it past its size bounds (step
        1's, first: every step reads each part and input), and records every outcome at step
        7, failures and cancellations included."""
        context = RequestContext(
            request_id=self.request_ids.next(),
            kind=kind,
            caller=caller,
            model=request.model,
            started=self.clock.monotonic(),
            generation=self.generations.current,
            user=request.user,
            tags=request.tags,
        )
        activity = self.tail.started(caller.app)
        try:
            check_size(request)
            yield context
        except RequestError as error:
            error.request_id = error.request_id or context.request_id
            if not context.finished:  # a call past the deadline was paid all the same
                with anyio.CancelScope(shield=True):
                    await self._finish(context, context.abandoned_usage(request), error=error)
            raise
        except (anyio.get_cancelled_exc_class(), GeneratorExit):  # GeneratorExit: a stream
            if not context.finished:  # closed by its reader before its end
                usage = context.abandoned_usage(request)
                with anyio.CancelScope(shield=True):
                    await self._finish(context, usage, status="cancelled")
            raise
        except Exception as failure:  # a bug, not a request's error: still a row, holds back
            if not context.finished:
                internal = RequestError("internal", f"{type(failure).__name__}: {failure}")
                with anyio.CancelScope(shield=True):
                    await self._finish(context, error=internal)
            raise
        finally:
            self.tail.ended(activity)
            self.generations.ended(context.generation)

    async def _answered(
        self,
        context: RequestContext,
        reply: AnsweredT,
        key: bytes | None,
        mode: CacheMode,
        chunks: Sequence[ChatChunk] = (),
    ) -> AnsweredT:
        """Step 7 for what a provider answered: the reply says who answered it and how, goes
        into the cache when the request lets it (with its ``chunks`` when it was streamed;
        in the same commit as its row), and gets its latency and cost once its row is in."""
        reply.target = context.target_name
        reply.attempts = context.attempts
        reply.wait_s = context.wait_s
        reply.request_id = context.request_id
        stored = None
        if key is not None and self.cache.stores(mode):
            stored = Cacheable.of(key, reply, chunks)
        reply.latency_s = await self._finish(context, reply.usage, cache_store=stored)
        reply.cost_usd = context.cost_usd
        return reply

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
        cost = context.cost_usd = context.cost_of(usage, price)
        for alert in self.budget_holds.settle(context, cost, now):
            self.events.add(alert.kind, alert.message, logging.WARNING)
        row = context.ledger_row(
            now,
            self.ledger.calendar.day(now),
            context.with_unanswered(usage),
            error.code if error else status,
            cost,
            unpriced=bool(target) and price is None and not context.cached,
            latency_s=latency_s,
        )
        if cache_store is not None and error is None:
            self.cache.put(
                cache_store.key, cache_store.kind, context.model, cache_store.answer, cost
            )
            if context.asked is not None:  # its question held with it, in the same commit
                self.semantic.answered(context.asked, cache_store)
        context.finished = True  # only now: a failure before this still gets its row
        try:
            await self.ledger.record(row)  # the cache entry joins this commit
        except LedgerWriteFailed as failure:
            self.events.add("ledger_write_failed", str(failure), logging.WARNING)
            if error is None:
                raise RequestError(
                    "internal", str(failure), details={"request_id": failure.request_id}
                ) from None
        finally:  # once this task has sent its reply: counting is not on the reply's path
            asyncio.get_running_loop().call_soon(self.tail.finished, row)
        return latency_s

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
        prices = self.prices.input_and_output
        attempts = self.router.attempts(route, context.started, prices, context.max_wait_s)
        deadline = self.deadlines.within(attempts.time_left_s())
        try:
            with deadline:
                while (target := await attempts.next_target()) is not None:
                    try:
                        await self.budget_holds.hold_again(context, route)  # 2, if one may bill
                        if not await self._admit(target, context, attempts.alternatives()):  # 4
                            attempts.passed_over(target, "its gates are full")
                            continue
                        context.target = target  # only once admitted: a refusal reached none
                        context.attempts += 1
                        attempts.started(target)
                        self._handed_off(context)
                        answer = await call(target)  # 5
                    except ProviderError as error:  # 6
                        self._failed(target, context, error)
                        attempts.failed(target, error)  # a caller's 4xx: bad_request
                        continue
                    except BaseException:  # the deadline's own word, not a clock's
                        attempts.abandoned(target, at_deadline=deadline.expired)
                        raise
                    context.calling = False
                    self.gates.observe(target.provider_name, target.name, answer.rate_limits)
                    attempts.succeeded(target)
                    return answer
        except TimeoutError:
            if not deadline.expired:
                raise
        # the deadline is watched on the event loop's clock (uvloop's counts milliseconds),
        # which can pass it a little before the injected clock does: its word decides
        raise attempts.exhausted(at_deadline=deadline.expired)

    def _handed_off(self, context: RequestContext) -> None:
        """Step 5 begins: the gates count it from now; a call that lasts is journaled."""
        self.gates.sent(context.reservation)
        context.calling = True  # until it answers: what it costs if abandoned
        context.journal(self.ledger, self.prices, self.clock.time())  # if the daemon dies

    async def _admit(self, target: Target, context: RequestContext, alternatives: bool) -> bool:
        """Step 4: take the request's place on every gate of ``target``. With other targets
        left to try, only an immediate admission is taken (False: none); the last candidate
        waits in the queue up to the request's max_wait_s."""
        app, tokens, least = context.caller.app, context.tokens, context.least_tokens
        demand = self.gates.demand(target.provider_name, target.name, app, tokens, least)
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

    def _failed(self, target: Target, context: RequestContext, error: ProviderError) -> None:
        """Step 6: a failed call its provider may bill all the same is the request's to pay
        (and journaled); it counts at the provider: its headers and a 429 teach the gates."""
        context.call_failed(error, self.prices)
        context.journal(self.ledger, self.prices, self.clock.time())
        if context.reservation is not None:
            self.gates.settle(context.reservation, None)
            context.reservation = None
        self.gates.observe(target.provider_name, target.name, error.rate_limits)
        if error.kind == "rate_limited":
            self.gates.pause(target.name, error.retry_after_s or DEFAULT_429_PAUSE_S)

    # ------------------------------------------------------------------ reload

    def reconfigure(self, config: Config, router: Router) -> anyio.Event:
        """Serve new requests with a reloaded config and router (SIGHUP); requests in flight
        run on to their end, a provider call under way on the provider it began with. Returns
        an event set once every request in flight now has finished: then the providers the
        new router no longer uses may be closed."""
        self.config = config
        self.router = self.permits.router = self.admin.router = router
        self.reports.config, self.reports.router = config, router
        self.guardrails.reconfigure(config)
        self.budget_holds.reconfigure()
        self.tail.declare(DeclaredNames.of(config.apps, config.models, router.declared_targets))
        self._default_max_tokens = config.gates.default_max_tokens
        return self.generations.advance(self.tail.in_flight)
