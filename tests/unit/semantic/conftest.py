"""Fixtures of the semantic cache's tests: the bundled model (loaded once), requests and a cache
built from them, and :func:`offline`, a guard that fails a test on any attempt to reach a
non-loopback address."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quotad.daemon.config import SemanticConfig
from quotad.daemon.semantic.cache import SemanticCache
from quotad.daemon.semantic.model import EmbeddingModel
from quotad.daemon.semantic.question import Question
from quotad.protocol.messages import Chat, ChatMessage

SYSTEM = "You are a helpful assistant."


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The engine's coroutines run under asyncio + uvloop, as the daemon runs them."""
    return asyncio_only


@pytest.fixture(scope="session")
def model() -> EmbeddingModel:
    """The bundled model, read once for the session."""
    return EmbeddingModel()


@pytest.fixture
def cache(model: EmbeddingModel) -> SemanticCache:
    """A semantic cache in mode ``on`` at the default threshold."""
    return SemanticCache(SemanticConfig(mode="on"), model)


def chat(
    text: str | list[dict[str, Any]],
    *,
    system: str = SYSTEM,
    history: list[ChatMessage] | None = None,
    temperature: float | None = 0.0,
    **fields: Any,
) -> Chat:
    """A chat request whose last user turn is ``text`` (a string or content parts)."""
    messages = [ChatMessage(role="system", content=system), *(history or [])]
    messages.append(ChatMessage(role="user", content=text))
    return Chat(model="fast", messages=messages, temperature=temperature, **fields)


async def ask(cache: SemanticCache, text: str, **fields: Any) -> Question:
    """The question of a request for ``text`` (the test fails if it is not eligible)."""
    question = await cache.question(chat(text, **fields))
    assert question is not None, f"{text!r} is not eligible: {cache.stats.ineligible}"
    return question


class NetworkAttempt(AssertionError):
    """Something tried to reach an address that is not loopback."""


def _is_local(address: Any) -> bool:
    """Whether a socket address is a Unix socket path or a loopback address."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name to resolve: that is a network attempt itself


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Make any attempt to reach a non-loopback address fail, and fail the test after it too
    (even if the code under test swallowed the error). No offline switch is set: the Hugging
    Face variables are removed and HOME and the cache directories point at an empty directory,
    so nothing downloaded earlier can help either. Yields the attempts seen."""
    attempts: list[str] = []
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("HOME", "XDG_CACHE_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(tmp_path))

    def refuse(what: str) -> None:
        attempts.append(what)
        raise NetworkAttempt(f"network attempt during an offline test: {what}")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_local(address):
            refuse(f"connect {address!r}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_local(address):
            refuse(f"connect_ex {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_local((host,)):
            refuse(f"getaddrinfo {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"network attempts: {attempts}"
