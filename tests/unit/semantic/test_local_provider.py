"""``kind = "local"`` (quotad.daemon.providers.local): embeddings from the bundled model through
the provider interface, offline; what it refuses, as the caller's error."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

from quotad.daemon.config import ProviderConfig
from quotad.daemon.providers import build_provider
from quotad.daemon.providers.base import ProviderError
from quotad.daemon.providers.local import DIMENSIONS, INLINE_BYTES, MODEL_NAME, LocalProvider
from quotad.daemon.semantic import model as model_module
from quotad.daemon.semantic.model import EmbeddingModel, ModelUnavailableError
from tests.unit.semantic.conftest import chat

pytestmark = pytest.mark.anyio

LOCAL = ProviderConfig(kind="local")


def test_the_served_names_mirror_the_models() -> None:
    assert MODEL_NAME == model_module.MODEL_NAME
    assert model_module.MATRYOSHKA_DIMENSIONS == DIMENSIONS


async def test_embeddings_come_from_the_bundled_model(
    model: EmbeddingModel, offline: list[str]
) -> None:
    provider = build_provider("local", LOCAL, None)
    assert isinstance(provider, LocalProvider)
    texts = ["How do I reverse a string?", "Turn off dark mode"]
    result = await provider.embed(MODEL_NAME, texts, None, {"encoding_format": "float"})
    assert np.allclose(result.embeddings, model.embed(texts), atol=1e-6)
    assert result.usage.prompt_tokens == model.embed_counting(texts)[1]
    short = await provider.embed(MODEL_NAME, texts, 64, {})
    assert [len(vector) for vector in short.embeddings] == [64, 64]
    assert np.allclose(np.linalg.norm(short.embeddings, axis=1), 1.0, atol=1e-5)
    assert await provider.list_models() == [MODEL_NAME]
    await provider.aclose()
    assert offline == []


async def test_a_large_request_is_embedded_the_same_in_a_worker_thread(
    model: EmbeddingModel,
) -> None:
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    texts = ["word " * 1000] * 5
    assert sum(map(len, texts)) > INLINE_BYTES
    result = await provider.embed(MODEL_NAME, texts, None, {})
    assert np.allclose(result.embeddings, model.embed(texts), atol=1e-6)


@pytest.mark.parametrize(
    ("texts", "off_the_loop"),
    [
        (["How do I reverse a string?"], False),
        (["word " * 800], False),  # 4,000 bytes
        (["😀" * 2000], True),  # 2,000 characters, 8,000 bytes: 8,001 tokens
        (["é" * 1500] * 2, True),  # 3,000 characters, 6,000 bytes
    ],
)
async def test_what_the_loop_embeds_is_bounded_in_bytes(
    model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch, texts: list[str], off_the_loop: bool
) -> None:
    """The bound counted characters: 16,384 emoji (65,537 tokens) were embedded on the event
    loop, holding it 187 ms."""
    threads: list[int] = []
    embed_counting = model.embed_counting

    def noted(*args: Any, **kwargs: Any) -> tuple[Any, int]:
        threads.append(threading.get_ident())
        return embed_counting(*args, **kwargs)

    monkeypatch.setattr(model, "embed_counting", noted)
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    await provider.embed(MODEL_NAME, ["warm"], None, {})  # the model loaded
    threads.clear()
    await provider.embed(MODEL_NAME, texts, None, {})
    assert (threads != [threading.get_ident()]) is off_the_loop


@pytest.mark.parametrize(
    ("model_name", "inputs", "dimensions", "extra", "message"),
    [
        ("gpt-4o", ["x"], None, {}, "serves only the model 'wordllama'"),
        (MODEL_NAME, [], None, {}, "takes 1 to 2048 inputs, got 0"),
        (MODEL_NAME, ["x"] * 2049, None, {}, "takes 1 to 2048 inputs, got 2049"),
        (MODEL_NAME, ["x"], 100, {}, "takes dimensions 64, 128, 256, got 100"),
        (MODEL_NAME, ["x"], None, {"temperature": 1}, "does not take 'temperature'"),
        (MODEL_NAME, ["x", ""], None, {}, r"input\[1\]: it is empty"),
    ],
)
async def test_what_it_cannot_do_is_the_callers_error(
    model: EmbeddingModel,
    model_name: str,
    inputs: list[str],
    dimensions: int | None,
    extra: dict[str, object],
    message: str,
) -> None:
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    with pytest.raises(ProviderError, match=message) as raised:
        await provider.embed(model_name, inputs, dimensions, extra)
    assert raised.value.kind == "client"
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        (["x", ""], "input"),
        ([], "input"),
        (["x"] * 2049, "input"),
        (["x"], "dimensions"),
        (["x"], "input_type"),
    ],
)
async def test_its_refusals_name_the_field(
    model: EmbeddingModel, inputs: list[str], field: str
) -> None:
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    dimensions = 100 if field == "dimensions" else None
    extra = {"input_type": "query", "truncate": "END"} if field == "input_type" else {}
    with pytest.raises(ProviderError) as raised:
        await provider.embed(MODEL_NAME, inputs, dimensions, extra)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("inputs", "message", "read"),
    [
        # 240,000 bytes: more than 8,192 tokens of at most 27 bytes each, refused unread
        (["a", "😀" * 60_000], r"input\[1\]: 240,000 bytes of UTF-8 text", 0),
        # 8,400 bytes, 8,401 tokens: read, and refused
        (["a", "😀" * 2100, "b"], r"input\[1\]: 8,401 tokens, more than the 8,192", 2),
        # 38 inputs of 7,997 tokens: refused at the 38th (303,886), the rest unread
        (["😀" * 1999] * 40, "the inputs: together 303,886 tokens, more than the 300,000", 38),
        # 9 MB: more than 300,000 tokens of 27 bytes, refused unread
        (["😀" * 55_000] * 41, "the inputs: 9,020,000 bytes of UTF-8 text together", 0),
    ],
)
async def test_an_input_or_a_request_past_its_tokens_is_refused_naming_input(
    model: EmbeddingModel,
    monkeypatch: pytest.MonkeyPatch,
    inputs: list[str],
    message: str,
    read: int,
) -> None:
    """One input of 3.5 million emoji (13 MB) took the daemon to 7.9 GB for 84 s."""
    tokenized: list[str] = []
    token_ids = model.token_ids

    def counted(text: str) -> list[int]:
        tokenized.append(text)
        return token_ids(text)

    monkeypatch.setattr(model, "token_ids", counted)
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    with pytest.raises(ProviderError, match=message) as raised:
        await provider.embed(MODEL_NAME, inputs, None, {})
    assert (raised.value.kind, raised.value.status, raised.value.field) == ("client", 400, "input")
    assert len(tokenized) == read


async def test_inputs_at_their_limits_are_embedded(model: EmbeddingModel) -> None:
    provider = LocalProvider("local", LOCAL, load_model=lambda: model)
    at_limit = "😀" * 2047 + "a b c"  # 8,192 tokens
    result = await provider.embed(MODEL_NAME, [at_limit, "b"], None, {})
    assert result.usage.prompt_tokens == 8192 + 1
    assert np.allclose(result.embeddings, model.embed([at_limit, "b"]), atol=1e-6)


def test_pooling_never_holds_a_matrix_of_every_token(model: EmbeddingModel) -> None:
    text = "😀" * 2047 + "a b c"  # 8,192 tokens: their vectors, 8,192 x 256 float16, are 4 MiB
    model.embed_one(text)  # warm
    tracemalloc.start()
    try:
        vector = model.embed_one(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vector.shape == (256,)
    assert peak < 2 * 2**20  # the ids (a list, an array), and 1,024 rows at a time (512 KiB)


async def test_chat_is_refused_as_the_callers_error() -> None:
    provider = LocalProvider("mine", LOCAL)
    for call in (provider.chat, provider.open_stream):
        with pytest.raises(ProviderError, match="serves embeddings only") as raised:
            await call("wordllama", chat("hi"), 16)
        assert raised.value.kind == "client"
        assert not raised.value.retryable


async def test_a_model_that_cannot_be_read_is_a_server_error() -> None:
    def broken() -> EmbeddingModel:
        raise ModelUnavailableError("the bundled model file /x is missing")

    provider = LocalProvider("local", LOCAL, load_model=broken)
    with pytest.raises(ProviderError, match="missing") as raised:
        await provider.embed(MODEL_NAME, ["x"], None, {})
    assert raised.value.kind == "server"
