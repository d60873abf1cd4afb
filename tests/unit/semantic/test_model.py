"""The bundled embedding model: it computes what WordLlama computes, from the files inside the
wheel, with no network at all (proved twice: a socket guard in the process, and every system
call of a fresh process traced), and the daemon loads numpy only when it uses the model."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from quotad.daemon.semantic import missing_extra
from quotad.daemon.semantic.model import (
    DIMENSIONS,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    EmbeddingModel,
    ModelUnavailableError,
    package_dir,
)
from quotad.daemon.semantic.rules import read
from tests.support.offline import traced_offline
from tests.unit.semantic.conftest import NetworkAttempt

TEXTS = [
    "How do I reverse a string in Python?",
    "meeting moved to 3pm",
    "Éteins la lumière",
    "会議は3時に",
    "a " * 300,
]


def test_vectors_equal_wordllamas_own(model: EmbeddingModel, offline: list[str]) -> None:
    from wordllama import WordLlama  # type: ignore[import-untyped]

    reference = WordLlama.load(disable_download=True, cache_dir=package_dir())
    expected = reference.embed(TEXTS, norm=True)
    assert np.allclose(model.embed(TEXTS), expected, atol=1e-6)
    assert offline == []


def test_loading_and_embedding_make_no_network_attempt(offline: list[str]) -> None:
    fresh = EmbeddingModel()  # not the session's: this one is read under the guard
    vectors = fresh.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), DIMENSIONS)
    assert offline == []


def test_the_offline_guard_catches_an_attempt(offline: list[str]) -> None:
    """0.0.0.0 is not loopback to the guard, yet a real connect to it would stay on this
    machine: the guard is checked without any chance of traffic leaving it."""
    with socket.socket() as probe, pytest.raises(NetworkAttempt):
        probe.connect(("0.0.0.0", 9))
    with pytest.raises(NetworkAttempt):
        socket.getaddrinfo("0.0.0.0", 9)
    assert offline == ["connect ('0.0.0.0', 9)", "getaddrinfo '0.0.0.0'"]
    offline.clear()  # seen: let the fixture's own check pass


TRACED = textwrap.dedent(
    """
    import sys
    from quotad.daemon.semantic.model import EmbeddingModel
    model = EmbeddingModel()
    vectors = model.embed(["How do I reverse a string in Python?", "Turn off dark mode"])
    assert vectors.shape == (2, 256)
    print("embedded")
    """
)


def test_a_fresh_process_makes_no_network_system_call(tmp_path: Path) -> None:
    """strace sees every connect/sendto of the process and its threads (the tokenizer's Rust
    code included, which a Python-level guard would not see)."""
    traced, env, log = traced_offline(tmp_path)
    result = subprocess.run(
        [*traced, sys.executable, "-c", TRACED],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if result.returncode != 0 and "ptrace" in result.stderr.lower():
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "embedded"
    calls = log.read_text()
    inet = [line for line in calls.splitlines() if re.search(r"AF_INET6?|sin6?_", line)]
    assert inet == [], f"network system calls: {inet}"


def test_the_daemon_does_not_import_numpy_until_the_model_is_used() -> None:
    """Building the daemon's parts, parsing a config that asks for semantic caching and a
    local provider, and building that provider import neither numpy nor the model."""
    program = textwrap.dedent(
        """
        import sys
        from quotad.daemon import broker, cli, server
        from quotad.daemon.config import parse_config
        from quotad.daemon.providers import build_provider
        config = parse_config({
            "cache": {"semantic": {"mode": "shadow"}},
            "providers": {"local": {"kind": "local"}},
        })
        provider = build_provider("local", config.providers["local"], None)
        heavy = sorted(
            name
            for name in ("numpy", "wordllama", "tokenizers", "safetensors", "threadpoolctl")
            if name in sys.modules
        )
        print(",".join(heavy) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_truncated_vectors_are_unit_length_prefixes(model: EmbeddingModel) -> None:
    full = model.embed(TEXTS[:2])
    for width in (64, 128):
        short = model.embed(TEXTS[:2], dimensions=width)
        assert short.shape == (2, width)
        assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
        expected = full[:, :width] / np.linalg.norm(full[:, :width], axis=1, keepdims=True)
        assert np.allclose(short, expected, atol=1e-6)
        assert np.allclose(model.embed_one(TEXTS[0], width), short[0], atol=1e-6)
    with pytest.raises(ValueError, match="dimensions"):
        model.embed(TEXTS[:1], dimensions=100)


def test_a_text_without_tokens_is_a_zero_vector(model: EmbeddingModel) -> None:
    vector = model.embed_one("")
    assert vector.shape == (DIMENSIONS,)
    assert not vector.any()


def test_usage_counts_the_tokens_read(model: EmbeddingModel) -> None:
    vectors, tokens = model.embed_counting(["hello there", "how are you"])
    assert vectors.shape == (2, DIMENSIONS)
    assert tokens == len(model.token_ids("hello there")) + len(model.token_ids("how are you"))
    assert tokens >= 4


def test_missing_or_damaged_files_are_a_clear_error() -> None:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        with pytest.raises(ModelUnavailableError, match="missing"):
            EmbeddingModel(directory)
        for name in (WEIGHTS_FILE, TOKENIZER_FILE):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(b"\x00 not a model")
        with pytest.raises(ModelUnavailableError, match="cannot read"):
            EmbeddingModel(directory)
    finally:
        shutil.rmtree(directory)


def test_the_extra_is_found_installed_and_reported_missing_when_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert missing_extra() == []
    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if not installed
    assert missing_extra() == ["wordllama"]


def test_normalized_text_is_what_is_embedded(model: EmbeddingModel) -> None:
    """Case and contractions change the raw vector (the tokenizer is case-sensitive) but not
    the normalized text's."""
    first, second = "What is the capital of France?", "what's the capital of france"
    raw = model.embed([first, second])
    assert float(raw[0] @ raw[1]) < 0.9
    facets = [read(first), read(second)]
    texts = [f.embedding_text for f in facets if not isinstance(f, str)]
    normalized = model.embed(texts)
    assert float(normalized[0] @ normalized[1]) > 0.99
