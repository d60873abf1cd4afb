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
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import anyio

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.metrics import Metrics
from quotad.daemon.providers.base import (
    ChatDelta,
    ChatResult,
    ChatStream,
    EmbedResult,
    ProviderError,
)
from quotad.daemon.routing import Route, Router, Target
from quotad.protocol.messages import (
    Acquire,
    Admin,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
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


T = TypeVar("T")
RECENT_REQUESTS = 1000


class Broker:
    """Composes routing, gates, cache, ledger and providers into request handling."""

    def __init__(self, config: Config, router: Router, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.started_at = clock.monotonic()
        self.request_ids = RequestIds()
        self.in_flight = 0
        self.requests_total = 0
        self.finished_total = 0
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT_REQUESTS)
        self.metrics = Metrics()
        self._default_max_tokens = config.gates.default_max_tokens

    # ------------------------------------------------------------------ chat

    async def chat(self, request: Chat, caller: Caller) -> ChatReply:
        """A chat request answered whole."""
        async with self._pipeline("chat", request.model, caller) as context:
            route = self.router.resolve(request.model)  # 1
            context.max_tokens = request.max_tokens or self._default_max_tokens

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
            reply.latency_s = await self._finish(context, reply.usage)  # 7
            return reply

    async def chat_stream(
        self, request: Chat, caller: Caller
    ) -> AsyncIterator[ChatChunk | ChatEnd]:
        """A chat request answered as chunks, then a :class:`ChatEnd` with the accounting.

        An attempt lasts until the first chunk: a target that fails before it is failed over;
        a break after it ends the stream with ``upstream_error`` carrying the partial content.
        """
        async with self._pipeline("stream", request.model, caller) as context:
            route = self.router.resolve(request.model)  # 1
            context.max_tokens = request.max_tokens or self._default_max_tokens

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
            try:
                if first is not None:
                    parts.append(first.delta)
                    yield _first_chunk(request.id, first, context)
                    async for delta in stream.deltas():
                        parts.append(delta.delta)
                        yield _chunk(request.id, delta)
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
            end.latency_s = await self._finish(context, end.usage)  # 7
        yield end

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request: Embed, caller: Caller) -> EmbedReply:
        """Embeddings for the request's inputs."""
        async with self._pipeline("embed", request.model, caller) as context:
            route = self.router.resolve(request.model)  # 1
            inputs = [request.input] if isinstance(request.input, str) else request.input

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
            reply.latency_s = await self._finish(context, reply.usage)  # 7
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
        """A ledger report."""
        raise RequestError("bad_request", "Spend is not supported by this daemon version")

    async def admin(self, request: Admin, caller: Caller) -> Ok:
        """An operator action."""
        raise RequestError(
            "bad_request", f"admin action {request.action!r} is not supported by this daemon"
        )

    # ------------------------------------------------------------------ the pipeline's frame

    @contextlib.asynccontextmanager
    async def _pipeline(
        self, kind: str, model: str, caller: Caller
    ) -> AsyncIterator[RequestContext]:
        """One request's frame: counts it in flight, and records every outcome at step 7,
        failures and cancellations included."""
        context = RequestContext(
            request_id=self.request_ids.next(),
            kind=kind,
            caller=caller,
            model=model,
            started=self.clock.monotonic(),
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
        except (anyio.get_cancelled_exc_class(), GeneratorExit):  # GeneratorExit: a stream
            if not context.finished:  # closed by its reader before its end
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
        cost_usd: float = 0.0,
        cached: bool = False,
    ) -> float:
        """Step 7: record the request's outcome; returns its latency in seconds."""
        context.finished = True
        latency_s = self.clock.monotonic() - context.started
        usage = usage or Usage()
        self.finished_total += 1
        record = RequestRecord(
            request_id=context.request_id,
            time=self.clock.time(),
            kind=context.kind,
            app=context.caller.app,
            target=context.target.name if context.target else context.model,
            status=error.code if error else status,
            wait_s=context.wait_s,
            latency_s=latency_s,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost_usd,
            cached=cached,
            attempts=context.attempts,
            priority=context.priority,
        )
        self.recent.append(record)
        self.metrics.observe_request(record, resolved=context.target is not None)
        return latency_s

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


def _first_chunk(request_id: int, delta: ChatDelta, context: RequestContext) -> ChatChunk:
    """A stream's first chunk: it also says who answers (see :class:`ChatChunk`)."""
    chunk = _chunk(request_id, delta)
    chunk.request_id = context.request_id
    chunk.target = context.target.name if context.target else ""
    chunk.attempts = context.attempts
    chunk.wait_s = context.wait_s
    return chunk
