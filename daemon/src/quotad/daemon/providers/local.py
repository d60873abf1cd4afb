"""``kind = "local"``: embeddings computed inside the daemon from the bundled model, offline.

Target ``local/wordllama`` (``<provider name>/wordllama``) embeds with the model the semantic
cache uses (:mod:`quotad.daemon.semantic.model`, from the optional extra ``quotad[semantic]``):
no HTTP, no key, no network. ``dimensions`` may be 64, 128 or 256 (the model's Matryoshka
sizes; 256 when unset). The usage reported is the tokens the model read. Chat is refused with a
``client`` error: this provider serves embeddings only.

An input may be :data:`MAX_INPUT_TOKENS` tokens at most, and a request's inputs together
:data:`MAX_REQUEST_TOKENS` (OpenAI's limits); past either, the request is the caller's error
(400, naming ``input``). A text's UTF-8 bytes bound its tokens from below (no token stands for
more than :attr:`~quotad.daemon.semantic.model.EmbeddingModel.max_token_bytes` bytes), so an
input that cannot fit is refused before it is read; the others are counted as they are read,
which stops at the first one past a limit. Before, only the number of inputs was bounded: one
input of 3.5 million emoji (13 MB) took the daemon from 100 MB to 7.9 GB for 84 s.

The model is loaded on first use (in a worker thread, ~0.1 s) and shared with the semantic
cache. A request of more than :data:`INLINE_BYTES` bytes of UTF-8 is embedded in a worker
thread, so that a large batch does not hold up the event loop (a token is at most a byte of
text, plus one per input: a request embedded on the loop reads a few thousand tokens at most).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from quotad.daemon.config import ProviderConfig
from quotad.daemon.providers.base import ChatResult, ChatStream, EmbedResult, ProviderError
from quotad.daemon.tokens import text_tokens_upper_bound
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
MAX_INPUT_TOKENS: Final = 8192
"""Tokens of one input at most (OpenAI's own limit)."""
MAX_REQUEST_TOKENS: Final = 300_000
"""Tokens of a request's inputs together at most (OpenAI's own limit)."""
INLINE_BYTES: Final = 4096
"""Requests of more UTF-8 bytes than this are embedded in a worker thread (counted in
characters before, 16,384 emoji were 65,537 tokens read on the event loop: 187 ms)."""
INPUT_FIELD: Final = "input"
"""The request field its errors about inputs name."""
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
        size = self._check_sizes(inputs, embedder.max_token_bytes)

        def run() -> EmbedResult:
            from quotad.daemon.semantic.model import TooManyTokensError

            try:
                vectors, tokens = embedder.embed_counting(
                    inputs,
                    dimensions,
                    max_text_tokens=MAX_INPUT_TOKENS,
                    max_total_tokens=MAX_REQUEST_TOKENS,
                )
            except TooManyTokensError as error:
                raise self._refused(f"cannot embed {error}", INPUT_FIELD) from None
            return EmbedResult(embeddings=vectors.tolist(), usage=Usage(prompt_tokens=tokens))

        if size <= INLINE_BYTES:
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
        """Refuse what this provider cannot do, as the caller's error (not retried), naming
        the request field that asks it."""
        field, problem = "", None
        if model != MODEL_NAME:
            field = "model"
            problem = f"serves only the model {MODEL_NAME!r} (target {self.name}/{MODEL_NAME})"
        elif not inputs or len(inputs) > MAX_INPUTS:
            field, problem = INPUT_FIELD, f"takes 1 to {MAX_INPUTS} inputs, got {len(inputs)}"
        elif dimensions is not None and dimensions not in DIMENSIONS:
            field = "dimensions"
            problem = f"takes dimensions {', '.join(map(str, DIMENSIONS))}, got {dimensions}"
        elif unknown := sorted(set(extra) - IGNORED_EXTRA):
            named = ", ".join(repr(name[:40]) for name in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            field, problem = unknown[0], f"does not take {named}{more}"
        else:
            empty = next((index for index, text in enumerate(inputs) if not text), None)
            if empty is not None:
                field, problem = INPUT_FIELD, f"cannot embed input[{empty}]: it is empty"
        if problem is not None:
            raise self._refused(problem, field)

    def _check_sizes(self, inputs: list[str], max_token_bytes: int) -> int:
        """The UTF-8 bytes of ``inputs`` together, after refusing an input, or inputs
        together, too long to fit :data:`MAX_INPUT_TOKENS` or :data:`MAX_REQUEST_TOKENS` even
        if each token stood for ``max_token_bytes`` bytes (which none does for more)."""
        total = 0
        for index, text in enumerate(inputs):
            size = text_tokens_upper_bound(text)
            if size > MAX_INPUT_TOKENS * max_token_bytes:
                raise self._refused(
                    f"cannot embed input[{index}]: {size:,} bytes of UTF-8 text, more than the "
                    f"{MAX_INPUT_TOKENS:,} tokens allowed",
                    INPUT_FIELD,
                )
            total += size
        if total > MAX_REQUEST_TOKENS * max_token_bytes:
            raise self._refused(
                f"cannot embed the inputs: {total:,} bytes of UTF-8 text together, more than "
                f"the {MAX_REQUEST_TOKENS:,} tokens allowed",
                INPUT_FIELD,
            )
        return total

    def _refused(self, problem: str, field: str) -> ProviderError:
        """The caller's error (400, not retried), naming the request ``field`` it is about."""
        return ProviderError(
            "client", f"local provider {self.name!r} {problem}", status=400, field=field
        )

    def _no_chat(self, model: str) -> ProviderError:
        return ProviderError(
            "client",
            f"provider {self.name!r} (kind local) serves embeddings only "
            f"(target {self.name}/{MODEL_NAME}); {self.name}/{model} cannot chat",
            status=400,
        )
