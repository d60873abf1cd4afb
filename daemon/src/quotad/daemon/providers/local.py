"""``kind = "local"``: embeddings computed inside the daemon from the bundled model, offline.

Target ``local/wordllama`` (``<provider name>/wordllama``) embeds with the model the semantic
cache uses (:mod:`quotad.daemon.semantic.model`, from the optional extra ``quotad[semantic]``):
no HTTP, no key, no network. ``dimensions`` may be 64, 128 or 256 (the model's Matryoshka
sizes; 256 when unset). The usage reported is the tokens the model read. Chat is refused with a
``client`` error: this provider serves embeddings only.

The model is loaded on first use (in a worker thread, ~0.1 s) and shared with the semantic
cache. A request of more than :data:`INLINE_CHARS` characters is embedded in a worker thread,
so that a large batch does not hold up the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from quotad.daemon.config import ProviderConfig
from quotad.daemon.providers.base import ChatResult, ChatStream, EmbedResult, ProviderError
from quotad.protocol.messages import Chat, Usage

if TYPE_CHECKING:
    from quotad.daemon.semantic.model import EmbeddingModel

MODEL_NAME: Final = "wordllama"
"""The one model a local provider serves (mirrors :data:`quotad.daemon.semantic.model.
MODEL_NAME`, kept here so that listing models does not import numpy)."""
DIMENSIONS: Final = (64, 128, 256)
"""The ``dimensions`` a request may ask for (mirrors :data:`quotad.daemon.semantic.model.
MATRYOSHKA_DIMENSIONS`)."""
MAX_INPUTS: Final = 2048
"""Inputs in one request at most (OpenAI's own limit)."""
INLINE_CHARS: Final = 16_384
"""Requests with more characters than this are embedded in a worker thread."""
IGNORED_EXTRA: Final = frozenset({"encoding_format", "user"})
"""Keys of ``extra`` an OpenAI client may send that change nothing here."""


def _load_shared_model() -> EmbeddingModel:
    from quotad.daemon.semantic.model import shared_model

    return shared_model()


class LocalProvider:
    """The bundled embedding model as a provider: ``embed`` and ``list_models`` only."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        load_model: Callable[[], EmbeddingModel] = _load_shared_model,
    ) -> None:
        self.name = name
        self.kind: str = config.kind
        self._load_model = load_model
        self._model: EmbeddingModel | None = None

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        """Refused: a local provider has no chat model."""
        raise self._no_chat(model)

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        """Refused: a local provider has no chat model."""
        raise self._no_chat(model)

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        """Embeddings of ``inputs`` (unit vectors, in input order) from the bundled model."""
        self._check(model, inputs, dimensions, extra)
        embedder = self._model
        if embedder is None:
            embedder = await anyio.to_thread.run_sync(self._load)
        size = sum(len(text) for text in inputs)

        def run() -> EmbedResult:
            vectors, tokens = embedder.embed_counting(inputs, dimensions)
            return EmbedResult(embeddings=vectors.tolist(), usage=Usage(prompt_tokens=tokens))

        if size <= INLINE_CHARS:
            return run()
        return await anyio.to_thread.run_sync(run)

    async def list_models(self) -> list[str]:
        """The one model served."""
        return [MODEL_NAME]

    async def aclose(self) -> None:
        """Nothing to close (the model is shared and stays loaded)."""

    def _load(self) -> EmbeddingModel:
        from quotad.daemon.semantic.model import ModelUnavailableError

        try:
            self._model = self._load_model()
        except ModelUnavailableError as error:
            raise ProviderError("server", f"provider {self.name!r}: {error}") from None
        return self._model

    def _check(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> None:
        """Refuse what this provider cannot do, as the caller's error (not retried)."""
        problem = None
        if model != MODEL_NAME:
            problem = f"serves only the model {MODEL_NAME!r} (target {self.name}/{MODEL_NAME})"
        elif not inputs or len(inputs) > MAX_INPUTS:
            problem = f"takes 1 to {MAX_INPUTS} inputs, got {len(inputs)}"
        elif dimensions is not None and dimensions not in DIMENSIONS:
            problem = f"takes dimensions {', '.join(map(str, DIMENSIONS))}, got {dimensions}"
        elif unknown := sorted(set(extra) - IGNORED_EXTRA):
            problem = f"does not take {', '.join(unknown)}"
        else:
            empty = next((index for index, text in enumerate(inputs) if not text), None)
            if empty is not None:
                problem = f"input[{empty}] is empty"
        if problem is not None:
            raise ProviderError("client", f"local provider {self.name!r} {problem}", status=400)

    def _no_chat(self, model: str) -> ProviderError:
        return ProviderError(
            "client",
            f"provider {self.name!r} (kind local) serves embeddings only "
            f"(target {self.name}/{MODEL_NAME}); {self.name}/{model} cannot chat",
            status=400,
        )
