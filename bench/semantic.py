"""The semantic cache's figures: embedding time, lookup time at 10,000 and 100,000 questions in
one partition, memory, and the pair sets' hit rate and false hits. Prints one JSON line.

- ``embed_*``: the bundled model on one short prompt (its normalized text), p50/p99;
  ``question_*`` adds reading the request (eligibility, partition hash, match-rule facets);
  ``exact_key_us`` is what the exact cache's key costs the same request (the baseline:
  ``question_vs_exact_key`` is the ratio).
- ``lookup_*_at_N``: ``question`` + ``lookup`` of a paraphrase of a stored question (a hit: the
  rules checked on each candidate) in a partition of N questions, generated from templates so
  that many are near duplicates (a crowded, hard partition). 64 paraphrases are asked in turn,
  so their candidates' facets are among those kept (``FACETS_KEPT``, a hot answer's case);
  ``lookup_cold_*`` forgets them before each lookup (every candidate read afresh).
  ``search_*`` is the index alone (one matrix-vector product, top candidates), and
  ``matvec_*`` the bare numpy product over the same matrix: the floor (``search_vs_matvec``).
  Arms interleaved. Both run on one BLAS thread, as the index sets it.
- ``rss_*_mb``: a fresh process importing the daemon's modules, then with the model loaded
  (``rss_model_mb``, the model's cost), then holding the largest partition
  (``rss_vectors_mb``).
- ``paraphrase_hits``/``paraphrases`` and ``false_hits``/``near_misses`` on the fixed pair sets
  (``tests/support/semantic_pairs.py``) at the default threshold; ``near_misses_similar``
  counts the near misses whose similarity alone (≥ threshold) would have served them.
- ``daemon_*``: through a real ``quotad serve`` (semantic cache on) in front of a ``quotad sim``,
  with the native client: ``daemon_exact_hit_p50_ms`` (the same request again) against
  ``daemon_semantic_hit_p50_ms`` (a paraphrase, in a partition of ``daemon_questions``
  questions), interleaved (``semantic_vs_exact_hit`` is the ratio); and the daemon's RSS after
  start with the semantic cache off and on (``daemon_rss_on_mb - daemon_rss_off_mb`` is what
  turning it on costs: the model and the numpy stack).

    uv run python bench/semantic.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import percentile, sequential, sequential_async
from quotad.daemon.config import SemanticConfig
from quotad.daemon.store.cache import chat_key
from quotad.protocol.messages import Chat, ChatMessage
from tests.support.semantic_pairs import NEAR_MISSES, PARAPHRASES

if TYPE_CHECKING:  # imported where used: the memory probe measures the process before them
    from quotad.daemon.semantic.cache import SemanticCache
    from quotad.daemon.semantic.model import EmbeddingModel

PROMPT = "How do I sort a list of dictionaries by a key in Python?"
TEMPLATES = [
    "How do I {verb} a {noun} in {lang}?",
    "What is the status of order {n} for {noun}?",
    "Meeting about the {noun} moved to {h}pm on day {n}",
    "Explain the {noun} of {lang} version 3.{n}",
    "Write a {lang} function that returns {n} {noun} items",
]
WORDS = {
    key: words.split()
    for key, words in {
        "verb": "sort reverse parse merge split copy filter format validate encode",
        "noun": "string list dictionary file table column image invoice ticket report",
        "lang": "Python Java Rust Go SQL Ruby Kotlin Swift Haskell Elixir",
    }.items()
}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def request(text: str) -> Chat:
    messages = [
        ChatMessage(role="system", content="You answer questions."),
        ChatMessage(role="user", content=text),
    ]
    return Chat(model="fast", messages=messages, temperature=0.0)


def texts(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct questions from the templates (many near duplicates)."""
    rng = random.Random(seed)
    made: list[str] = []
    for number in range(count):
        template = TEMPLATES[number % len(TEMPLATES)]
        fields = {key: rng.choice(values) for key, values in WORDS.items()}
        made.append(template.format(n=number, h=1 + number % 12, **fields))
    return made


async def filled(model: EmbeddingModel, count: int) -> tuple[SemanticCache, list[str]]:
    """A cache whose one partition holds ``count`` questions."""
    from quotad.daemon.semantic.cache import SemanticCache

    cache = SemanticCache(SemanticConfig(mode="on"), model, max_entries=count)
    stored = texts(count)
    for number, text in enumerate(stored):
        question = await cache.question(request(text))
        assert question is not None, text
        cache.add(number.to_bytes(16, "big"), question)
    return cache, stored


def ms(samples: list[float], fraction: float) -> float:
    return round(percentile(samples, fraction) * 1000, 4)


async def per_prompt(model: EmbeddingModel, cache: SemanticCache, count: int) -> dict[str, Any]:
    """Embedding and reading one short prompt, against the exact key as the baseline."""
    from quotad.daemon.semantic.cache import INDEX_DIMENSIONS

    asked = request(PROMPT)
    question = await cache.question(asked)
    assert question is not None
    text = question.facets.embedding_text
    sequential(lambda: model.embed_one(text, INDEX_DIMENSIONS), 200)  # warm up
    embed: list[float] = []
    whole: list[float] = []
    exact: list[float] = []

    async def ask() -> None:
        fresh = await cache.question(asked)
        assert fresh is not None
        cache.vector_of(fresh)

    for _ in range(4):  # interleaved rounds
        embed += sequential(lambda: model.embed_one(text, INDEX_DIMENSIONS), count // 4)
        whole += await sequential_async(ask, count // 4)
        exact += sequential(lambda: chat_key(asked), count // 4)
    exact_us = percentile(exact, 0.5) * 1e6
    return {
        "embed_p50_ms": ms(embed, 0.5),
        "embed_p99_ms": ms(embed, 0.99),
        "question_p50_ms": ms(whole, 0.5),
        "question_p99_ms": ms(whole, 0.99),
        "exact_key_us": round(exact_us, 2),
        "question_vs_exact_key": round(percentile(whole, 0.5) * 1e6 / exact_us, 1),
    }


async def lookups(model: EmbeddingModel, count: int, samples: int) -> dict[str, Any]:
    """Lookup, index search and bare matvec in one partition of ``count`` questions."""
    import numpy as np

    from quotad.daemon.semantic.cache import CANDIDATES
    from quotad.daemon.semantic.question import Question

    cache, stored = await filled(model, count)
    rng = random.Random(11)
    asked = [rng.choice(stored).replace("How do I", "What's the best way to") for _ in range(64)]
    questions = [await cache.question(request(text)) for text in asked]
    index = next(iter(cache._partitions.values()))  # the one partition
    matrix = index._matrix[: len(index)]
    vectors = [cache.vector_of(q) for q in questions if q is not None]
    lookup_s: list[float] = []
    cold_s: list[float] = []
    search_s: list[float] = []
    matvec_s: list[float] = []
    hits = 0

    async def timed_lookup(text: str) -> None:
        nonlocal hits
        question: Question | None = await cache.question(request(text))
        assert question is not None
        hits += cache.lookup(question) is not None

    for round_ in range(4):
        for number in range(samples // 4):
            pick = (round_ * samples + number) % len(asked)
            started = time.perf_counter()
            await timed_lookup(asked[pick])
            lookup_s.append(time.perf_counter() - started)
            cache._facets_of.cache_clear()  # the candidates read again, as never seen before
            started = time.perf_counter()
            await timed_lookup(asked[pick])
            cold_s.append(time.perf_counter() - started)
            vector = vectors[pick % len(vectors)]
            started = time.perf_counter()
            index.search(vector, cache.threshold, CANDIDATES)
            search_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            np.dot(matrix, vector)
            matvec_s.append(time.perf_counter() - started)
    return {
        f"lookup_p50_ms_at_{count}": ms(lookup_s, 0.5),
        f"lookup_p99_ms_at_{count}": ms(lookup_s, 0.99),
        f"lookup_cold_p50_ms_at_{count}": ms(cold_s, 0.5),
        f"lookup_cold_p99_ms_at_{count}": ms(cold_s, 0.99),
        f"search_p50_ms_at_{count}": ms(search_s, 0.5),
        f"matvec_p50_ms_at_{count}": ms(matvec_s, 0.5),
        f"search_vs_matvec_at_{count}": round(
            percentile(search_s, 0.5) / percentile(matvec_s, 0.5), 2
        ),
        f"lookup_hit_rate_at_{count}": round(hits / (len(lookup_s) + len(cold_s)), 3),
    }


async def pair_sets(model: EmbeddingModel) -> dict[str, Any]:
    """Hits and false hits on the fixed pair sets, through the engine at its defaults."""
    from quotad.daemon.semantic.cache import SemanticCache

    async def answers(stored: str, asked: str) -> tuple[bool, bool]:
        cache = SemanticCache(SemanticConfig(mode="on"), model)
        first = await cache.question(request(stored))
        second = await cache.question(request(asked))
        if first is None or second is None:
            return False, False
        cache.add(b"0" * 16, first)
        similar = float(cache.vector_of(first) @ cache.vector_of(second)) >= cache.threshold
        return cache.lookup(second) is not None, similar

    hits = sum([(await answers(a, b))[0] and (await answers(b, a))[0] for a, b in PARAPHRASES])
    near = [pair for pairs in NEAR_MISSES.values() for pair in pairs]
    false_hits = similar = 0
    for first, second in near:
        one, two = await answers(first, second), await answers(second, first)
        false_hits += one[0] or two[0]
        similar += one[1]
    return {
        "paraphrases": len(PARAPHRASES),
        "paraphrase_hits": hits,
        "paraphrase_hit_rate": round(hits / len(PARAPHRASES), 3),
        "near_misses": len(near),
        "near_misses_similar": similar,
        "false_hits": false_hits,
    }


def rss_probe(count: int) -> dict[str, float]:
    """Memory of this process at each stage (run in a fresh process)."""
    from quotad.daemon import broker, server  # the daemon's own imports

    del broker, server
    base = rss_mb()
    assert "numpy" not in sys.modules
    from quotad.daemon.semantic.model import EmbeddingModel

    model = EmbeddingModel()
    model.embed_one(PROMPT)
    with_model = rss_mb()
    cache, _ = anyio.run(filled, model, count)
    with_vectors = rss_mb()
    return {
        "rss_daemon_modules_mb": round(base, 1),
        "rss_model_mb": round(with_model - base, 1),
        "rss_vectors_mb": round(with_vectors - with_model, 1),
        "rss_vectors_entries": len(cache),
        "index_matrix_mb": round(cache.nbytes / 2**20, 1),
    }


def daemon_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def through_daemon(questions: int, samples: int) -> dict[str, Any]:
    """Exact and semantic hit latency through a real daemon and the native client, and the
    daemon's RSS with the semantic cache off and on."""
    from quotad.client import Client
    from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
    from tests.support.sim import SimProcess

    def ask(text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "bench"}, {"role": "user", "content": text}]

    figures: dict[str, Any] = {}
    with SimProcess() as sim:
        rss: dict[str, float] = {}
        for mode in ("off", "on"):
            config = daemon_config(
                f'[cache.semantic]\nmode = "{mode}"\n',
                sim_provider_config("sim", sim.base_url),
                '[models.fast]\ntargets = ["sim/gpt-4o-mini"]\n',
            )
            with DaemonProcess(config) as daemon:
                assert daemon.process is not None
                with Client(socket=str(daemon.socket_path), app="bench") as qd:
                    qd.status()
                    rss[mode] = daemon_rss_mb(daemon.process.pid)
                    if mode == "off":
                        continue
                    for text in texts(questions):
                        qd.chat("fast", ask(text), temperature=0.0, max_tokens=8)
                    exact_text = PROMPT
                    paraphrase = PROMPT.replace("How do I", "What's the best way to")
                    qd.chat("fast", ask(exact_text), temperature=0.0, max_tokens=8)
                    exact: list[float] = []
                    semantic: list[float] = []
                    for _ in range(4):  # interleaved rounds
                        for latencies, text, kind in (
                            (exact, exact_text, "exact"),
                            (semantic, paraphrase, "semantic"),
                        ):
                            for _ in range(samples // 4):
                                started = time.perf_counter()
                                reply = qd.chat("fast", ask(text), temperature=0.0, max_tokens=8)
                                latencies.append(time.perf_counter() - started)
                                assert reply.cache == kind, (reply.cache, kind)
                    held = qd.status().cache.semantic_entries
        figures |= {
            "daemon_questions": held,
            "daemon_exact_hit_p50_ms": ms(exact, 0.5),
            "daemon_exact_hit_p99_ms": ms(exact, 0.99),
            "daemon_semantic_hit_p50_ms": ms(semantic, 0.5),
            "daemon_semantic_hit_p99_ms": ms(semantic, 0.99),
            "semantic_vs_exact_hit": round(percentile(semantic, 0.5) / percentile(exact, 0.5), 2),
            "daemon_rss_off_mb": round(rss["off"], 1),
            "daemon_rss_on_mb": round(rss["on"], 1),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: partitions of 1,000 and 5,000"
    )
    parser.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe)), flush=True)
        return
    from quotad.daemon.semantic.cache import INDEX_DIMENSIONS, SemanticCache
    from quotad.daemon.semantic.model import EmbeddingModel

    sizes = (1_000, 5_000) if args.quick else (10_000, 100_000)
    samples = 40 if args.quick else 400
    model = EmbeddingModel()
    figures: dict[str, Any] = {"bench": "semantic", "quick": args.quick}

    async def in_process() -> None:  # the engine's coroutines, in one event loop
        cache = SemanticCache(SemanticConfig(mode="on"), model)
        figures.update(await per_prompt(model, cache, samples * 5))
        for size in sizes:
            figures.update(await lookups(model, size, samples))
        figures.update(await pair_sets(model))

    anyio.run(in_process)
    figures.update(through_daemon(200 if args.quick else 2_000, samples))
    probe = subprocess.run(
        [sys.executable, __file__, "--rss-probe", str(sizes[-1])],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures.update(json.loads(probe.stdout.splitlines()[-1]))
    figures["index_dimensions"] = INDEX_DIMENSIONS
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
