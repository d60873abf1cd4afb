"""The semantic cache and local embeddings through a real ``quotad serve`` in front of a real
``quotad sim`` (DESIGN §11, issue 16): the fixed pair sets at the default threshold through the
native client (every paraphrase served semantically, no near miss ever: each reaches the sim,
as its request log shows), plain and streamed, and through the ``openai`` SDK against the front
door (``x-quotad-cache: semantic``); warm requests never served; ``quotad cache stats`` and
``quotad spend`` count semantic hits; shadow mode serves nothing and counts; a restart keeps the
index (vectors read back from ``quotad.db``); local embeddings through both clients, listed in
``/v1/models``, at no cost, cached; and under strace, the daemon with all of it on makes no
connection beyond loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from quotad.client import Client
from quotad.daemon.semantic.model import EmbeddingModel
from tests.support.daemon import (
    DaemonProcess,
    daemon_config,
    free_port,
    run_quotad,
    sim_provider_config,
)
from tests.support.offline import traced_offline
from tests.support.semantic_pairs import NEAR_MISSES, PARAPHRASES
from tests.support.sim import SimProcess, read_sim_log

APP = "semantic-tests"
MODEL = "fast"
ASKED = "How do I reverse a string in Python?"
PARAPHRASE = "What's the best way to reverse a string in Python?"


def semantic_config(sim_url: str, *, mode: str = "on", port: int = 0) -> str:
    listen = f"127.0.0.1:{port}" if port else ""
    return daemon_config(
        f'[cache.semantic]\nmode = "{mode}"\n',
        sim_provider_config("sim", sim_url),
        '[providers.local]\nkind = "local"\n',
        f'[models.{MODEL}]\ntargets = ["sim/gpt-4o-mini"]\n',
        daemon="drain_s = 5",
        http=f'listen = "{listen}"\nauth = "none"',
    )


def messages(text: str, partition: str = "") -> list[Any]:
    """A conversation whose last user turn is ``text``; ``partition`` names its system prompt
    (each pair asked in its own partition, so that no pair answers another)."""
    system = f"You answer questions. {partition}".strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def sim_requests(sim: SimProcess) -> int:
    """How many requests the sim's log holds so far (each line is written whole)."""
    assert sim.log_path is not None
    return len(read_sim_log(sim.log_path))


def quotad(daemon: DaemonProcess, *args: str) -> Any:
    """A ``quotad ... --json`` command against ``daemon``: its parsed output."""
    return json.loads(quotad_text(daemon, *args, "--json"))


def quotad_text(daemon: DaemonProcess, *args: str) -> str:
    """A ``quotad ...`` command against ``daemon`` that must succeed: what it printed."""
    done = run_quotad(*args, env=daemon.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(log=True) as process:
        yield process


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def daemon(sim: SimProcess, port: int) -> Iterator[DaemonProcess]:
    with DaemonProcess(semantic_config(sim.base_url, port=port)) as process:
        yield process


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(socket=str(daemon.socket_path), app=APP) as qd:
        yield qd


@pytest.fixture
def sdk(daemon: DaemonProcess, port: int) -> Iterator[openai.OpenAI]:
    headers = {"x-quotad-app": APP}
    base_url = f"http://127.0.0.1:{port}/v1"
    with openai.OpenAI(base_url=base_url, api_key="unused", default_headers=headers) as client:
        yield client


# --------------------------------------------------------------------------- the pair sets


def test_every_paraphrase_is_served_semantically_through_the_native_client(
    client: Client, sim: SimProcess
) -> None:
    before = sim_requests(sim)
    served = []
    for number, (first, second) in enumerate(PARAPHRASES):
        partition = f"paraphrase {number}"
        asked = client.chat(MODEL, messages(first, partition), temperature=0.0)
        reply = client.chat(MODEL, messages(second, partition), temperature=0.0)
        assert not asked.cached
        if reply.cached:
            assert (reply.cache, reply.content) == ("semantic", asked.content)
            assert 0.92 <= reply.similarity <= 1.0
            assert reply.cost_usd == 0
            assert reply.saved_usd == asked.cost_usd
            served.append(number)
    missed = [PARAPHRASES[n] for n in range(len(PARAPHRASES)) if n not in served]
    assert missed == []  # phase 1 measured 60 of 60 in process: the daemon must match it
    assert sim_requests(sim) - before == len(PARAPHRASES)  # only the first of each pair


def test_no_near_miss_is_ever_served_each_reaches_the_sim(client: Client, sim: SimProcess) -> None:
    before = sim_requests(sim)
    pairs = [pair for category in NEAR_MISSES.values() for pair in category]
    for number, (first, second) in enumerate(pairs):
        partition = f"near miss {number}"
        client.chat(MODEL, messages(first, partition), temperature=0.0)
        reply = client.chat(MODEL, messages(second, partition), temperature=0.0)
        assert (reply.cached, reply.cache) == (False, ""), (first, second)
    assert len(pairs) >= 100
    assert sim_requests(sim) - before == 2 * len(pairs)


def test_a_streamed_paraphrase_replays_its_chunks_marked(client: Client, sim: SimProcess) -> None:
    partition = "stream"
    first = list(client.chat_stream(MODEL, messages(ASKED, partition), temperature=0.0))
    before = sim_requests(sim)
    with client.chat_stream(MODEL, messages(PARAPHRASE, partition), temperature=0.0) as stream:
        chunks = list(stream)
    end = stream.end
    assert sim_requests(sim) == before
    assert end is not None
    assert (end.cached, end.cache) == (True, "semantic")
    assert (chunks[0].cached, chunks[0].cache) == (True, "semantic")
    assert chunks[0].similarity == end.similarity >= 0.92
    assert [c.delta for c in chunks] == [c.delta for c in first]
    assert len(chunks) > 1


def test_the_openai_sdk_gets_semantic_hits_plain(sdk: openai.OpenAI, sim: SimProcess) -> None:
    create = sdk.chat.completions.with_raw_response.create
    first = create(model=MODEL, messages=messages(ASKED, "sdk"), temperature=0, max_tokens=12)
    before = sim_requests(sim)
    again = create(model=MODEL, messages=messages(PARAPHRASE, "sdk"), temperature=0, max_tokens=12)
    assert sim_requests(sim) == before
    assert (first.headers["x-quotad-cache"], again.headers["x-quotad-cache"]) == (
        "miss",
        "semantic",
    )
    texts = [response.parse().choices[0].message.content for response in (first, again)]
    assert texts[0] == texts[1]
    assert (texts[0] or "").startswith("sim reply to: How do I")


def test_the_openai_sdk_gets_semantic_hits_streamed(sdk: openai.OpenAI, sim: SimProcess) -> None:
    create = sdk.chat.completions.with_raw_response.create
    options: dict[str, Any] = {"temperature": 0, "max_tokens": 12, "stream": True}
    first = create(model=MODEL, messages=messages(ASKED, "sdk stream"), **options)
    before = sim_requests(sim)
    again = create(model=MODEL, messages=messages(PARAPHRASE, "sdk stream"), **options)
    assert sim_requests(sim) == before
    assert (first.headers["x-quotad-cache"], again.headers["x-quotad-cache"]) == (
        "miss",
        "semantic",
    )
    texts = []
    for response in (first, again):
        chunks: Any = response.parse()
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert texts[0] == texts[1]
    assert texts[0].startswith("sim reply to: How do I")


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_warm_requests_are_never_served_semantically(
    client: Client, sim: SimProcess, temperature: float | None
) -> None:
    """No temperature counts as 1.0; both are above max_temperature (0.0 by default)."""
    partition = f"warm {temperature}"
    client.chat(MODEL, messages(ASKED, partition), temperature=temperature)
    before = sim_requests(sim)
    reply = client.chat(MODEL, messages(PARAPHRASE, partition), temperature=temperature)
    assert not reply.cached
    assert sim_requests(sim) == before + 1
    # the same words again are an exact hit: the cache works, semantics do not apply
    repeat = client.chat(MODEL, messages(PARAPHRASE, partition), temperature=temperature)
    assert (repeat.cached, repeat.cache) == (True, "exact")


def test_cache_stats_and_spend_count_semantic_hits_apart(
    daemon: DaemonProcess, client: Client
) -> None:
    partition = "stats"
    client.chat(MODEL, messages(ASKED, partition), temperature=0.0)
    client.chat(MODEL, messages(ASKED, partition), temperature=0.0)  # exact
    client.chat(MODEL, messages(PARAPHRASE, partition), temperature=0.0)  # semantic
    stats = quotad(daemon, "cache", "stats")
    assert stats["semantic_mode"] == "on"
    assert stats["hits"] >= 1
    assert stats["semantic_hits"] >= 1
    assert stats["semantic_entries"] >= 1
    assert stats["semantic_lookups"] >= stats["semantic_hits"]
    assert stats["semantic_ineligible"].get("warm", 0) >= 0
    text = quotad_text(daemon, "cache", "stats")
    assert re.search(r"semantic hits\s+\d+", text), text
    spend = quotad(daemon, "spend", "--by", "model")
    assert spend["total"]["semantic_hits"] == stats["semantic_hits"]
    assert spend["total"]["cache_hits"] == stats["hits"] + stats["semantic_hits"]
    assert spend["total"]["saved_usd"] == pytest.approx(stats["saved_usd"])


# --------------------------------------------------------------------------- local embeddings


def test_local_embeddings_through_the_sdk_and_the_native_client(
    sdk: openai.OpenAI, client: Client, daemon: DaemonProcess
) -> None:
    texts = ["Turn off dark mode", "How do I reverse a string in Python?"]
    expected = EmbeddingModel().embed(texts)
    listed = {model.id for model in sdk.models.list()}
    assert "local/wordllama" in listed
    raw = sdk.embeddings.with_raw_response.create(model="local/wordllama", input=texts)
    vectors = np.array([item.embedding for item in raw.parse().data], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert raw.headers["x-quotad-cache"] == "miss"
    assert raw.headers["x-quotad-target"] == "local/wordllama"
    assert float(raw.headers["x-quotad-cost-usd"]) == 0.0
    again = sdk.embeddings.with_raw_response.create(model="local/wordllama", input=texts)
    assert again.headers["x-quotad-cache"] == "hit"
    small = sdk.embeddings.create(model="local/wordllama", input="hello", dimensions=64)
    assert len(small.data[0].embedding) == 64
    native = client.embed("local/wordllama", texts)
    np.testing.assert_allclose(np.array(native.embeddings), expected, atol=1e-6)
    assert native.target == "local/wordllama"
    assert native.cost_usd == 0.0
    assert native.usage.prompt_tokens > 0
    spend = quotad(daemon, "spend", "--by", "target")
    [local] = [row for row in spend["rows"] if row["key"] == "local/wordllama"]
    assert local["requests"] >= 4
    assert local["cost_usd"] == 0.0
    assert not local.get("unpriced")


# --------------------------------------------------------------------------- own daemons


def test_shadow_mode_serves_nothing_and_counts_would_be_hits(sim: SimProcess) -> None:
    with (
        DaemonProcess(semantic_config(sim.base_url, mode="shadow")) as shadow,
        Client(socket=str(shadow.socket_path), app=APP) as qd,
    ):
        before = sim_requests(sim)
        pairs = PARAPHRASES[:10]
        for number, (first, second) in enumerate(pairs):
            qd.chat(MODEL, messages(first, f"shadow {number}"), temperature=0.0)
            reply = qd.chat(MODEL, messages(second, f"shadow {number}"), temperature=0.0)
            assert (reply.cached, reply.cache) == (False, "")
        assert sim_requests(sim) - before == 2 * len(pairs)
        stats = qd.status().cache
        for _ in range(100):  # comparisons run after the replies, in a worker thread
            if stats.shadow_compared == stats.would_be_hits:
                break
            stats = qd.status().cache
        assert stats.semantic_mode == "shadow"
        assert stats.semantic_hits == 0
        assert stats.would_be_hits == len(pairs)
        assert stats.shadow_compared == len(pairs)
        assert 0 <= stats.shadow_agreed <= len(pairs)
        text = quotad_text(shadow, "cache", "stats")
        assert f"would-be hits {len(pairs)}" in " ".join(text.split()), text


def test_a_restart_keeps_the_index(sim: SimProcess) -> None:
    directory = Path(tempfile.mkdtemp(prefix="qdsem", dir="/tmp"))
    config = semantic_config(sim.base_url)
    try:
        with (
            DaemonProcess(config, directory=directory) as first,
            Client(socket=str(first.socket_path), app=APP) as qd,
        ):
            qd.chat(MODEL, messages(ASKED, "restart"), temperature=0.0)
            assert qd.status().cache.semantic_entries == 1
        before = sim_requests(sim)
        with (
            DaemonProcess(config, directory=directory) as second,
            Client(socket=str(second.socket_path), app=APP) as qd,
        ):
            assert qd.status().cache.semantic_entries == 1  # read back before serving
            reply = qd.chat(MODEL, messages(PARAPHRASE, "restart"), temperature=0.0)
            assert (reply.cached, reply.cache) == (True, "semantic")
        assert sim_requests(sim) == before
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_INET = re.compile(r"AF_INET6?")
_LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"|"::ffff:127\.')


def test_the_daemon_with_semantic_caching_on_reaches_nothing_beyond_loopback(
    sim: SimProcess, tmp_path: Path
) -> None:
    """strace follows the daemon and every thread (the tokenizer's Rust code included): each
    connect or send with an internet address goes to loopback (the sim), nothing else."""
    launcher, env, trace = traced_offline(tmp_path)
    process = DaemonProcess(
        semantic_config(sim.base_url), env=env, launcher=(*launcher, sys.executable)
    )
    try:
        try:
            process.start()
        except RuntimeError as error:
            if "ptrace" in str(error).lower():
                pytest.skip(f"strace cannot trace here: {error}")
            raise
        with Client(socket=str(process.socket_path), app=APP) as qd:
            qd.chat(MODEL, messages(ASKED, "offline"), temperature=0.0)
            reply = qd.chat(MODEL, messages(PARAPHRASE, "offline"), temperature=0.0)
            assert reply.cache == "semantic"
            assert len(qd.embed("local/wordllama", "offline please").embeddings[0]) == 256
            daemon_pid = qd.status().pid
        # strace blocks fatal signals when it runs a command: the daemon itself is stopped,
        # and strace ends with it
        os.kill(daemon_pid, signal.SIGTERM)
        assert process.process is not None
        assert process.process.wait(30) == 0
    finally:
        process.__exit__(None, None, None)  # killed if still running; its directory removed
    calls = trace.read_text().splitlines()
    inet = [line for line in calls if _INET.search(line)]
    assert inet, "the trace saw no connection at all: it traced nothing"
    beyond = [line for line in inet if not _LOOPBACK.search(line)]
    assert beyond == [], f"network system calls beyond loopback: {beyond}"
