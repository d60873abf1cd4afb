"""The HTTP front door of a real ``quotad serve`` in front of real ``quotad sim`` processes (one
OpenAI-shaped, one Anthropic-shaped), driven by the official ``openai`` and ``anthropic`` SDKs
(sync and async, plain and streaming), curl against /metrics, and hand-made bad HTTP."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotad.client import Client
from quotad.daemon.front_door.openai import completion_id
from tests.support.daemon import DaemonProcess, free_port, two_sims_config
from tests.support.sim import SimProcess

MESSAGES: list[Any] = [{"role": "user", "content": "hello front door"}]
APP = "http-tests"

SIM_LATENCY_MS = 0  # how long the two sims of tests/conftest.py take to answer


TINY_APP = "tiny"
"""An app whose token limit a request asking for 5,000 tokens can never fit in."""


def front_door_config(openai_url: str, anthropic_url: str, port: int, auth: str = "none") -> str:
    http = f'listen = "127.0.0.1:{port}"\nauth = "{auth}"\nread_timeout_s = 1.0\nmax_header_kb = 8'
    tiny = f"[apps.{TINY_APP}]\ntpm = 1000\n"
    return two_sims_config(openai_url, anthropic_url, daemon="drain_s = 5", http=http, extra=tiny)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def daemon(sims: tuple[SimProcess, SimProcess], port: int) -> Iterator[DaemonProcess]:
    with DaemonProcess(front_door_config(sims[0].base_url, sims[1].base_url, port)) as process:
        yield process


@pytest.fixture
def url(daemon: DaemonProcess, port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the SDKs' async clients are asyncio clients


def openai_client(url: str, **options: Any) -> openai.OpenAI:
    headers = {"x-quotad-app": APP}
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers=headers, **options)


def anthropic_client(url: str) -> anthropic.Anthropic:
    headers = {"x-quotad-app": APP}
    return anthropic.Anthropic(base_url=url, api_key="unused", default_headers=headers)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --------------------------------------------------------------------------- the SDKs


def test_openai_sdk_sync_plain_and_streaming(url: str) -> None:
    with openai_client(url) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=MESSAGES, max_tokens=8
        )
        stream = client.chat.completions.create(
            model="fast",
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    completion = raw.parse()
    assert completion.choices[0].message.content == "sim reply to: hello front door lorem ipsum"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert raw.headers["x-quotad-target"] == "sim/gpt-4o-mini"
    assert raw.headers["x-quotad-request-id"].startswith("qd-")
    assert raw.headers["x-quotad-attempts"] == "1"
    assert float(raw.headers["x-quotad-wait-ms"]) >= 0
    assert raw.headers["x-quotad-cache"] in ("miss", "bypass")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].message.content
    assert len(chunks) > 8  # one event per chunk, not one blob
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_a_streamed_cache_hit_says_so_in_its_headers(url: str) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "stream me twice"}]}
    with httpx.Client(trust_env=False, headers={"x-quotad-app": APP}) as client:
        answers = []
        for _ in range(2):
            with client.stream(
                "POST", f"{url}/v1/chat/completions", json=body | {"stream": True}
            ) as response:
                text = "".join(response.iter_text())
                answers.append((response.headers, text))
    (first, _), (second, second_text) = answers
    assert first["x-quotad-cache"] == "miss"
    assert second["x-quotad-cache"] == "hit"
    assert second["x-quotad-request-id"].startswith("qd-")
    assert second["x-quotad-request-id"] != first["x-quotad-request-id"]
    assert second["x-quotad-target"] == first["x-quotad-target"] == "sim/gpt-4o-mini"
    assert f'"id":"{completion_id(second["x-quotad-request-id"])}"' in second_text


@pytest.mark.anyio
async def test_openai_sdk_async_plain_streaming_embeddings_models(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
        completion = await client.chat.completions.create(
            model="claude/claude-3-5-haiku-latest", messages=MESSAGES, max_tokens=4
        )
        stream = await client.chat.completions.create(
            model="fast", messages=MESSAGES, max_tokens=6, stream=True
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream]
        embeddings = await client.embeddings.create(
            model="sim/text-embedding-3-small", input=["one", "two"], dimensions=4
        )
        models = [model.id async for model in client.models.list()]
    assert completion.choices[0].message.content == "sim reply to: hello"  # Anthropic target
    assert completion.model == "claude-3-5-haiku-latest"
    assert "".join(parts) == "sim reply to: hello front door"
    assert [len(item.embedding) for item in embeddings.data] == [4, 4]
    assert models[0] == "fast"
    assert {"sim/gpt-4o-mini", "claude/claude-3-5-haiku-latest"} <= set(models)


def test_anthropic_sdk_sync_to_both_kinds_of_target(url: str) -> None:
    lookup: dict[str, object] = {"type": "object", "properties": {"q": {"type": "string"}}}
    with anthropic_client(url) as client:
        to_anthropic = client.messages.create(
            model="claude/claude-3-5-haiku-latest",
            max_tokens=6,
            system="be brief",
            messages=MESSAGES,
        )
        to_openai = client.messages.create(model="fast", max_tokens=6, messages=MESSAGES)
        tool_use = client.messages.create(
            model="claude/claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": "use the tool please"}],
            tools=[{"name": "lookup", "input_schema": lookup}],
        )
    for message in (to_anthropic, to_openai):
        assert message.content[0].type == "text"
        assert message.content[0].text == "sim reply to: hello front door"
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 6
    assert to_anthropic.model == "claude-3-5-haiku-latest"
    assert to_openai.model == "gpt-4o-mini"
    assert tool_use.stop_reason == "tool_use"
    block = tool_use.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("lookup", {"q": "sim"})


@pytest.mark.anyio
async def test_anthropic_sdk_async_streaming(url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key="unused") as client:
        for model in ("claude/claude-3-5-haiku-latest", "sim/gpt-4o-mini"):
            async with client.messages.stream(
                model=model, max_tokens=5, messages=MESSAGES
            ) as stream:
                texts = [text async for text in stream.text_stream]
                message = await stream.get_final_message()
            assert len(texts) == 5
            assert "".join(texts) == "sim reply to: hello front"
            assert message.stop_reason == "max_tokens"
            assert message.usage.output_tokens == 5
            assert message.usage.input_tokens > 0


def test_unknown_model_is_404_in_both_sdks(url: str) -> None:
    with openai_client(url) as oai, anthropic_client(url) as claude:
        with pytest.raises(openai.NotFoundError) as openai_error:
            oai.chat.completions.create(model="no-such-model", messages=MESSAGES)
        with pytest.raises(anthropic.NotFoundError) as anthropic_error:
            claude.messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):  # before a stream starts: a status
            oai.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert "fast" in openai_error.value.message  # it names what exists
    assert openai_error.value.code == "unknown_model"
    assert anthropic_error.value.status_code == 404


def test_a_request_no_wait_can_fit_is_not_retried_by_either_sdk(
    daemon: DaemonProcess, url: str
) -> None:
    """A request over a limit outright is ``rate_limited``, which the SDKs retry after its
    ``retry-after``: both retried it twice, in vain, 2 s and two ledger rows each. It says
    ``x-should-retry: false`` (as an exhausted budget does), which both SDKs obey."""
    headers = {"x-quotad-app": TINY_APP}
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers=headers)
    claude = anthropic.Anthropic(base_url=url, api_key="unused", default_headers=headers)
    with oai, claude:
        with pytest.raises(openai.RateLimitError) as openai_error:
            oai.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=5000)
        with pytest.raises(anthropic.RateLimitError):
            claude.messages.create(model="fast", max_tokens=5000, messages=MESSAGES)
    answer = openai_error.value.response
    assert answer.headers["x-should-retry"] == "false"
    assert "retry-after" not in answer.headers
    assert "can never be admitted" in openai_error.value.message
    with sqlite3.connect(daemon.state_dir / "quotad.db") as db:
        rows = db.execute("SELECT count(*) FROM ledger WHERE app = ?", (TINY_APP,)).fetchone()
    assert rows == (2,)  # one attempt each


@pytest.mark.slow
def test_bad_key_is_401_and_a_busy_port_stops_the_daemon(
    sims: tuple[SimProcess, SimProcess],
) -> None:
    port = free_port()
    config = front_door_config(sims[0].base_url, sims[1].base_url, port, auth="keys")
    with DaemonProcess(config) as keyed:
        base = f"http://127.0.0.1:{port}"
        with (
            openai.OpenAI(base_url=f"{base}/v1", api_key="sk-no-such-key") as client,
            pytest.raises(openai.AuthenticationError) as caught,
        ):
            client.chat.completions.create(model="fast", messages=MESSAGES)
        with (
            anthropic.Anthropic(base_url=base, api_key="sk-no-such-key") as claude,
            pytest.raises(anthropic.AuthenticationError),
        ):
            claude.messages.create(model="fast", max_tokens=5, messages=MESSAGES)
        assert caught.value.status_code == 401
        assert "sk-no-such-key" not in keyed.log()
        clash = DaemonProcess(config)
        with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.1"), clash:
            pass  # a daemon that cannot start cleans up after itself, its directory too
        assert clash.process is not None
        assert clash.process.returncode == 1
        assert not clash.socket_path.exists()
        assert not clash.directory.exists()


def test_status_names_the_front_door(daemon: DaemonProcess, port: int) -> None:
    with Client(socket=daemon.socket_path) as client:
        assert client.status().http == f"127.0.0.1:{port}"


# --------------------------------------------------------------------------- metrics


def test_metrics_read_by_curl_parse_as_prometheus_text(url: str) -> None:
    with openai_client(url) as client:
        for _ in range(3):
            client.chat.completions.create(model="sim/gpt-4o-mini", messages=MESSAGES, max_tokens=2)
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--noproxy", "*", f"{url}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found = metric_samples(result.stdout)
    ok = (("app", APP), ("status", "ok"), ("target", "sim/gpt-4o-mini"))
    assert found[("quotad_requests_total", ok)] >= 3
    latency = (("target", "sim/gpt-4o-mini"),)
    assert found[("quotad_request_latency_seconds_count", latency)] >= 3
    closed = (("state", "closed"), ("target", "sim/gpt-4o-mini"))
    assert found[("quotad_target_breaker_state", closed)] == 1
    assert ("quotad_queue_depth", (("priority", "high"),)) in found
    assert ("quotad_cache_hits_total", ()) in found
    answered = (("code", "200"), ("endpoint", "chat_completions"))
    assert found[("quotad_http_responses_total", answered)] >= 3
    health = httpx.get(f"{url}/healthz", trust_env=False)
    assert health.json()["status"] == "ok"


# --------------------------------------------------------------------------- bad clients


def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_malformed_http_is_answered_or_closed_and_others_carry_on(url: str, port: int) -> None:
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-le")
        started = time.monotonic()
        bad_line = raw_exchange(port, b"HELLO THERE\r\n\r\n")
        huge = raw_exchange(
            port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n"
        )
        with openai_client(url) as client:  # everyone else is served meanwhile
            reply = client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=3)
        assert reply.choices[0].message.content == "sim reply to:"
        answer = b""
        while chunk := slow.recv(65536):  # the slowloris gets 408 after read_timeout_s
            answer += chunk
        waited = time.monotonic() - started
    finally:
        slow.close()
    assert bad_line.startswith(b"HTTP/1.1 400 ")
    assert huge.startswith(b"HTTP/1.1 431 ")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert waited < 8  # read_timeout_s = 1, not the idle or a default timeout


def test_client_leaving_mid_request_cancels_the_call(
    url: str, port: int, sims: tuple[SimProcess, SimProcess]
) -> None:
    body = b'{"model": "sim/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-quotad-app: leaver\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with sims[0].controlled(latency_ms=3000):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            time.sleep(0.3)  # the call is at the sim now
        deadline = time.monotonic() + 10
        cancelled = (("app", "leaver"), ("status", "cancelled"), ("target", "sim/gpt-4o-mini"))
        while True:
            metrics = httpx.get(f"{url}/metrics", trust_env=False).text
            if metric_samples(metrics).get(("quotad_requests_total", cancelled)) == 1:
                break
            assert time.monotonic() < deadline, "the call was not cancelled"
            time.sleep(0.05)


@pytest.mark.anyio
async def test_many_concurrent_clients_on_keep_alive_connections(url: str) -> None:
    limits = httpx.Limits(max_connections=8)
    body = {"model": "fast", "messages": MESSAGES, "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False) as http:
        statuses: list[int] = []

        async def one() -> None:
            response = await http.post("/v1/chat/completions", json=body)
            statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(one)
    assert statuses == [200] * 40


@pytest.mark.slow
def test_graceful_stop_finishes_a_stream_in_flight(sims: tuple[SimProcess, SimProcess]) -> None:
    port = free_port()
    with (
        SimProcess(extra_args=["--chunk-delay-ms", "100"]) as slow_sim,
        DaemonProcess(front_door_config(slow_sim.base_url, sims[1].base_url, port)) as process,
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client,
    ):
        stream = client.chat.completions.create(
            model="sim/gpt-4o-mini", messages=MESSAGES, max_tokens=6, stream=True
        )
        chunks = iter(stream)
        first = next(chunks)
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # draining now: new requests are refused with a retry-after
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{url}/healthz", trust_env=False)
        refused = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "sim/gpt-4o-mini", "messages": MESSAGES},
            trust_env=False,
        )
        rest = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
        assert process.process.wait(10) == 0
    text = (first.choices[0].delta.content or "") + "".join(rest)
    assert text == "sim reply to: hello front door"
    assert (health.status_code, health.json()) == (503, {"status": "draining"})
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["x-quotad-request-id"].startswith("qd-")
