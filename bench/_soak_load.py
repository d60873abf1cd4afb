"""The mixed load of ``bench/soak.py``: native clients that come and go and the HTTP front door
on keep-alive and new connections, each task drawing its next request from weighted kinds;
counts requests by kind and failures by code. Not a benchmark itself (the smoke test skips
``bench/_*.py``)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

from quotad.client import AsyncClient, QuotadError
from quotad.protocol.framing import FrameEncoder
from quotad.protocol.messages import Chat, ChatMessage, Hello

APPS = 3000
"""More than the 1,000 apps the activity log and metrics keep apart."""
USERS = 5000
TAGS = 2000
NAMED_MODELS = 1100
"""More than the 1,024 targets a config lets clients make by naming them (taken in turn)."""
REQUEST_TIMEOUT_S = 30.0
MODEL = "fast"
WAIT_S = 0.25
"""How long a native chat may wait at the gates (the app ``throttled`` makes them wait)."""
EMBEDDING_MODEL = "sim/text-embedding-3-small"
ENCODER = FrameEncoder()


@dataclass
class LoadTargets:
    socket: Path
    url: str
    """The front door's root URL."""


class Load:
    """Runs the load until told to stop; counts what it did."""

    def __init__(
        self, targets: LoadTargets, rng: random.Random, reload: Callable[[], None]
    ) -> None:
        self.targets = targets
        self.random = rng
        self.reload_config = reload
        self.requests = 0
        self.kinds: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.reloads = 0
        self.finished = anyio.Event()
        self._serial = 0
        self._named = 0
        self._deadline = 0.0

    # ----------------------------------------------------------------- plumbing

    def running(self) -> bool:
        return time.monotonic() < self._deadline

    async def run(self, seconds: float, native: int, http: int, reload_s: float) -> None:
        self._deadline = time.monotonic() + seconds
        try:
            async with anyio.create_task_group() as group:
                for _ in range(native):
                    group.start_soon(self.native_worker)
                for _ in range(http):
                    group.start_soon(self.http_worker)
                group.start_soon(self.reloader, reload_s)
        finally:
            self.finished.set()

    def prompt(self) -> str:
        self._serial += 1
        return f"soak request {self._serial} {self.random.random()}"

    def app(self) -> str:
        return f"app-{self.random.randrange(APPS)}"

    def named_model(self) -> str:
        self._named += 1
        return f"sim/m-{self._named % NAMED_MODELS}"

    def tags(self) -> list[str]:
        return [f"tag-{self.random.randrange(TAGS)}" for _ in range(self.random.randint(0, 3))]

    async def counted(self, kind: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Run one request of ``kind``, counting it and how it failed."""
        self.requests += 1
        self.kinds[kind] += 1
        try:
            with anyio.fail_after(REQUEST_TIMEOUT_S):
                await call()
        except QuotadError as error:
            self.errors[error.code] += 1
        except HttpStatus as error:
            self.errors[f"http_{error.status}"] += 1
        except (OSError, httpx.HTTPError, TimeoutError, msgspec.DecodeError) as error:
            self.errors[f"bench_{type(error).__name__}_{kind}"] += 1

    async def reloader(self, every_s: float) -> None:
        async with AsyncClient(socket=self.targets.socket, app="soak-operator") as client:
            while self.running():
                await anyio.sleep(every_s)
                self.reload_config()
                await self.counted("reload", lambda: client.admin("reload"))
                self.reloads += 1

    # ----------------------------------------------------------------- native

    async def native_worker(self) -> None:
        while self.running():
            app = self.random.choice([self.app()] * 20 + ["throttled", "broke"])
            try:
                async with AsyncClient(
                    socket=self.targets.socket, app=app, timeout=REQUEST_TIMEOUT_S
                ) as client:
                    for _ in range(self.random.randint(1, 12)):
                        if not self.running():
                            break
                        await self.native_request(client, app)
            except (QuotadError, OSError) as error:  # connecting, or closing
                self.errors[f"connect_{getattr(error, 'code', type(error).__name__)}"] += 1
            if self.random.random() < 0.15:
                await self.counted("raw_left_in_flight", partial(self.raw, app, garbage=False))
            if self.random.random() < 0.05:
                await self.counted("raw_garbage", partial(self.raw, app, garbage=True))

    async def raw(self, app: str, garbage: bool) -> None:
        """A connection of its own that says Hello, sends a chat (or garbage) and closes
        without waiting for the answer."""
        request = Chat(
            id=1,
            model=MODEL,
            messages=[ChatMessage(role="user", content=self.prompt())],
            stream=self.random.random() < 0.5,
        )
        frames = ENCODER.encode(Hello(app=app))
        if garbage:
            junk = self.random.randbytes(self.random.randint(1, 40))
            frames += len(junk).to_bytes(4, "big") + junk
        else:
            frames += ENCODER.encode(request)
        async with await anyio.connect_unix(self.targets.socket) as stream:
            await stream.send(frames)
            await stream.receive()  # the Welcome (and perhaps more)

    async def native_request(self, client: AsyncClient, app: str) -> None:
        kinds = [
            ("chat", 30), ("chat_masked", 4), ("chat_blocked", 2), ("stream", 8),
            ("stream_abandoned", 6), ("chat_cancelled", 5), ("embed", 8), ("status", 5),
            ("spend", 1), ("subscribe", 2), ("permit", 3), ("permit_dropped", 1),
            ("named_model", 4), ("unknown_model", 2), ("bad_request", 2), ("queued", 4),
        ]  # fmt: skip
        names, weights = zip(*kinds, strict=True)
        kind = self.random.choices(names, weights)[0]
        messages = [{"role": "user", "content": self.prompt()}]
        user = f"user-{self.random.randrange(USERS)}"
        tags = self.tags()
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "chat": lambda: client.chat(
                MODEL, messages, max_tokens=16, user=user, tags=tags, max_wait_s=WAIT_S
            ),
            "chat_masked": lambda: client.chat(
                MODEL,
                [{"role": "user", "content": f"mail {user}@example.com please"}],
                max_wait_s=WAIT_S,
            ),
            "chat_blocked": lambda: client.chat(
                MODEL, [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE ok"}]
            ),
            "stream": lambda: self.stream(client, messages, abandon=False),
            "stream_abandoned": lambda: self.stream(client, messages, abandon=True),
            "chat_cancelled": lambda: self.cancelled(client, messages),
            "embed": lambda: client.embed(
                EMBEDDING_MODEL, [self.prompt(), self.prompt()], max_wait_s=WAIT_S
            ),
            "status": client.status,
            "spend": lambda: client.spend(by=self.random.choice(["app", "model", "target"])),
            "subscribe": lambda: self.subscribe(client),
            "permit": lambda: self.permit(client, settle=True),
            "permit_dropped": lambda: self.permit(client, settle=False),
            "named_model": lambda: client.chat(
                self.named_model(), messages, max_tokens=8, max_wait_s=WAIT_S
            ),
            "unknown_model": lambda: client.chat(f"nowhere/m-{self.random.random()}", messages),
            "bad_request": lambda: (
                client.chat(  # refused by the daemon, or by the sim
                    MODEL, messages if self.random.random() < 0.5 else [], max_tokens=-1
                )
                if self.random.random() < 0.5
                else client.chat(MODEL, [], max_tokens=8, max_wait_s=WAIT_S)
            ),
            "queued": lambda: client.chat("sim/queued", messages, max_wait_s=0.3, max_tokens=8),
        }
        await self.counted(kind, calls[kind])

    async def stream(self, client: AsyncClient, messages: Any, abandon: bool) -> None:
        stream = client.chat_stream(MODEL, messages, max_tokens=32, max_wait_s=WAIT_S)
        async with stream:
            async for _chunk in stream:
                if abandon:
                    break

    async def cancelled(self, client: AsyncClient, messages: Any) -> None:
        with anyio.move_on_after(self.random.uniform(0.0005, 0.006)):
            await client.chat(MODEL, messages, max_tokens=16, max_wait_s=WAIT_S)

    async def subscribe(self, client: AsyncClient) -> None:
        async with client.subscribe(0.05) as subscription:
            for _ in range(self.random.randint(1, 3)):
                await subscription.__anext__()

    async def permit(self, client: AsyncClient, settle: bool) -> None:
        granted = await client.acquire("sim/gpt-4o-mini", tokens=100, max_wait_s=WAIT_S)
        if settle:
            await client.settle(granted.permit_id, tokens_used=80)

    # ----------------------------------------------------------------- HTTP

    async def http_worker(self) -> None:
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        async with httpx.AsyncClient(
            base_url=self.targets.url, limits=limits, timeout=REQUEST_TIMEOUT_S, trust_env=False
        ) as http:
            while self.running():
                await self.http_request(http)

    async def http_request(self, http: httpx.AsyncClient) -> None:
        kinds = [
            ("openai_chat", 20), ("openai_stream", 6), ("openai_stream_dropped", 5),
            ("anthropic", 8), ("anthropic_stream", 4), ("anthropic_stream_dropped", 3),
            ("embeddings", 5), ("models", 1), ("metrics", 1), ("healthz", 1),
            ("bad_json", 2), ("http_unknown_model", 2), ("new_connection_chat", 6),
        ]  # fmt: skip
        names, weights = zip(*kinds, strict=True)
        kind = self.random.choices(names, weights)[0]
        headers = {"x-quotad-app": self.app(), "content-type": "application/json"}
        chat = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt()}],
            "max_tokens": 16,
            "user": f"user-{self.random.randrange(USERS)}",
        }
        streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        messages = {k: v for k, v in chat.items() if k != "user"}
        embeddings = {"model": EMBEDDING_MODEL, "input": [self.prompt()]}
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "openai_chat": lambda: self.post(http, "/v1/chat/completions", chat, headers),
            "openai_stream": lambda: self.post(http, "/v1/chat/completions", streamed, headers),
            "openai_stream_dropped": lambda: self.dropped(
                "/v1/chat/completions", streamed, headers
            ),
            "anthropic": lambda: self.post(http, "/v1/messages", messages, headers),
            "anthropic_stream": lambda: self.post(
                http, "/v1/messages", {**messages, "stream": True}, headers
            ),
            "anthropic_stream_dropped": lambda: self.dropped(
                "/v1/messages", {**messages, "stream": True}, headers
            ),
            "embeddings": lambda: self.post(http, "/v1/embeddings", embeddings, headers),
            "models": lambda: self.get(http, "/v1/models", headers),
            "metrics": lambda: self.get(http, "/metrics", headers),
            "healthz": lambda: self.get(http, "/healthz", headers),
            "bad_json": lambda: self.post(http, "/v1/chat/completions", b'{"model": ', headers),
            "http_unknown_model": lambda: self.post(
                http, "/v1/chat/completions", {**chat, "model": "nowhere/x"}, headers
            ),
            "new_connection_chat": lambda: self.dropped(
                "/v1/chat/completions", chat, headers, keep_bytes=None
            ),
        }
        await self.counted(kind, calls[kind])

    async def post(
        self, http: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]
    ) -> None:
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        async with http.stream("POST", path, content=content, headers=headers) as response:
            async for _ in response.aiter_raw():
                pass
            HttpStatus.check(response.status_code)

    async def get(self, http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        response = await http.get(path, headers=headers)
        HttpStatus.check(response.status_code)

    async def dropped(
        self, path: str, body: Any, headers: dict[str, str], keep_bytes: int | None = 1
    ) -> None:
        """One request on a new connection (``Connection: close``); with ``keep_bytes``,
        the connection is closed once the answer's head and that many bytes of its body
        came, else the whole answer is read."""
        content = msgspec.json.encode(body)
        host = self.targets.url.removeprefix("http://")
        lines = [f"POST {path} HTTP/1.1", f"host: {host}", "connection: close",
                 f"content-length: {len(content)}"]  # fmt: skip
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        address, port = host.rsplit(":", 1)
        async with await anyio.connect_tcp(address, int(port)) as stream:
            await stream.send(head + content)
            answer = b""
            while True:
                try:
                    answer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                end = answer.find(b"\r\n\r\n")
                if keep_bytes is not None and end >= 0 and len(answer) > end + 4 + keep_bytes:
                    break
        if not answer.startswith(b"HTTP/1.1 "):
            raise HttpStatus(0)
        HttpStatus.check(int(answer[9:12]))


class HttpStatus(Exception):
    """An answer of the front door that was not a 200."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    @staticmethod
    def check(status: int) -> None:
        if status != 200:
            raise HttpStatus(status)
