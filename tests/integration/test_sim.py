"""``quotad sim`` as a real process, driven by the official OpenAI and Anthropic SDKs and by
raw HTTP: both wire formats, its sliding-window limits and headers, live fault injection, its
request log, API-key checks, stop and restart. Its limiter is also checked on its own, as a
property: exact, never over a limit, never refusing what fits."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import ToolParam
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from quotad.daemon.sim import SlidingWindowLog, go_duration
from tests.support.sim import SimProcess, read_sim_log
from tests.support.sim_tools import send_tool

WEATHER_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
}
OPENAI_TOOLS: list[ChatCompletionFunctionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
]
ANTHROPIC_TOOLS: list[ToolParam] = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(seed=7) as process:
        yield process


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the SDKs' async clients are asyncio clients


def openai_client(
    sim: SimProcess, api_key: str = "test-key", timeout: float = 10.0
) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def anthropic_client(sim: SimProcess, api_key: str = "test-key") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=api_key, max_retries=0, timeout=10.0)


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.floats(0, 0.4), st.integers(0, 40)), max_size=60),
    max_requests=st.integers(0, 6),
    max_tokens=st.integers(0, 120),
)
@example(  # now - window_s and admitted + window_s round apart: refused with a wait of 0
    arrivals=[(0.18672125572424353, 0)] + [(1 / 3, 0)] * 3, max_requests=1, max_tokens=0
)
def test_sliding_window_log_is_exact(
    arrivals: list[tuple[float, int]], max_requests: int, max_tokens: int
) -> None:
    window_s = 1.0
    log = SlidingWindowLog(window_s)
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for gap, tokens in arrivals:
        now += gap
        limit, wait_s = log.try_admit(now, tokens, max_requests, max_tokens)
        recent = [(t, k) for t, k in admitted if t + window_s > now]  # as the log counts
        if not limit:
            admitted.append((now, tokens))
            recent.append((now, tokens))
            assert not max_requests or len(recent) <= max_requests
            assert not max_tokens or sum(k for _, k in recent) <= max_tokens
            continue
        assert wait_s > 0
        over_requests = bool(max_requests) and len(recent) >= max_requests
        over_tokens = bool(max_tokens) and sum(k for _, k in recent) + tokens > max_tokens
        assert over_requests or over_tokens  # refused only what would not fit
        left = [(t, k) for t, k in recent if t + window_s > now + wait_s + 1e-9]
        if limit == "requests":
            assert len(left) < max_requests  # after the wait there is room
        elif limit == "tokens":
            assert sum(k for _, k in left) + tokens <= max_tokens
    windows = [[(a, k) for a, k in admitted if a <= t < a + window_s] for t, _ in admitted]
    assert log.most_requests == max((len(w) for w in windows), default=0)
    assert log.most_tokens == max((sum(k for _, k in w) for w in windows), default=0)


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [go_duration(s) for s in (0, 0.02, 1, 1.5, 360, 3723.5)] == [
        "0s",
        "20ms",
        "1s",
        "1.5s",
        "6m0s",
        "1h2m3.5s",
    ]


def test_openai_chat_plain_and_streamed_with_usage(sim: SimProcess) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello quotad world"}]
    with openai_client(sim) as client:
        reply = client.chat.completions.create(model="any-model", messages=messages, max_tokens=8)
        chunks = list(
            client.chat.completions.create(
                model="any-model",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert reply.choices[0].message.content == "sim reply to: hello quotad world lorem ipsum"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith("sim reply to: hello quotad world")
    assert len(text.split()) == 16
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16


@pytest.mark.anyio
async def test_openai_async_client_chat_stream_and_embeddings(sim: SimProcess) -> None:
    async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "async hi"}]
        )
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "async hi"}], stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        default = await client.embeddings.create(model="e", input=["one", "two"])
        small = await client.embeddings.create(model="e", input="one", dimensions=4)
    assert reply.choices[0].message.content == streamed
    assert [len(item.embedding) for item in default.data] == [8, 8]
    assert default.data[0].embedding != default.data[1].embedding
    assert len(small.data[0].embedding) == 4
    for item in (*default.data, *small.data):
        assert math.isclose(sum(v * v for v in item.embedding), 1.0, rel_tol=1e-6)
    assert default.usage.prompt_tokens == 2


def test_openai_embeddings_are_deterministic_and_models_list(sim: SimProcess) -> None:
    with openai_client(sim) as client:
        first = client.embeddings.create(model="e", input="same text").data[0].embedding
        again = client.embeddings.create(model="e", input="same text").data[0].embedding
        models = [model.id for model in client.models.list()]
    assert first == again
    assert models == ["sim-small", "sim-large", "sim-embed"]
    without_v1 = httpx.get(f"{sim.url}/models", trust_env=False)
    assert [m["id"] for m in without_v1.json()["data"]] == models


def test_anthropic_messages_plain_and_streamed(sim: SimProcess) -> None:
    with anthropic_client(sim) as client:
        message = client.messages.create(
            model="claude-any",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello from anthropic"}],
        )
        with client.messages.stream(
            model="claude-any",
            max_tokens=4,
            system="be brief",
            messages=[{"role": "user", "content": "hello from anthropic"}],
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
    block = message.content[0]
    assert block.type == "text"
    assert block.text.startswith("sim reply to: hello from anthropic")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 16
    assert streamed == "sim reply to: hello"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 4
    assert final.usage.input_tokens > message.usage.input_tokens  # the system prompt counts


def sim_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON data of a streamed answer's events (``[DONE]`` left out)."""
    lines = response.text.splitlines()
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]


def usages_sent(sim: SimProcess) -> dict[str, list[Any]]:
    """The usage objects each kind of answer carries: plain OpenAI chat, OpenAI stream (with
    ``include_usage``), plain Anthropic message, Anthropic stream (its ``message_start`` and
    ``message_delta``), embeddings."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 4}

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(sim.base_url + path, json=body, trust_env=False)

    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    openai_events = sim_events(post("/chat/completions", stream))
    anthropic_events = sim_events(post("/messages", {**chat, "stream": True}))
    return {
        "openai": [post("/chat/completions", chat).json().get("usage")],
        "openai_stream": [event["usage"] for event in openai_events if "usage" in event],
        "anthropic": [post("/messages", chat).json().get("usage")],
        "anthropic_stream": [
            anthropic_events[0]["message"].get("usage"),
            *(e.get("usage") for e in anthropic_events if e["type"] == "message_delta"),
        ],
        "embeddings": [
            post("/embeddings", {"model": "e", "input": "count me"}).json().get("usage")
        ],
    }


def test_report_usage_leaves_out_what_it_says(sim: SimProcess) -> None:
    with sim.controlled(report_usage="prompt"):
        prompt_only = usages_sent(sim)
    with sim.controlled(report_usage="none"):
        none = usages_sent(sim)
    everything = usages_sent(sim)
    assert everything["openai"] == [
        {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    ]
    assert everything["openai_stream"][-1] == everything["openai"][0]
    assert everything["anthropic_stream"] == [
        {"input_tokens": 9, "output_tokens": 1},
        {"output_tokens": 4},
    ]
    assert prompt_only == {
        "openai": [{"prompt_tokens": 9}],
        "openai_stream": [None] * 6 + [{"prompt_tokens": 9}],
        "anthropic": [{"input_tokens": 9}],
        "anthropic_stream": [{"input_tokens": 9, "output_tokens": 1}, None],
        "embeddings": everything["embeddings"],
    }
    assert none == {
        "openai": [None],
        "openai_stream": [],  # as a server that ignores include_usage: no usage key at all
        "anthropic": [None],
        "anthropic_stream": [None, None],
        "embeddings": [None],
    }


def test_anthropic_errors_use_its_shape(sim: SimProcess) -> None:
    response = httpx.post(
        f"{sim.url}/v1/messages",
        json={"model": "m", "messages": [{"role": "user", "content": "no max_tokens"}]},
        trust_env=False,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_tool_calls_in_both_formats(sim: SimProcess) -> None:
    prompt = "please use the tool"
    with openai_client(sim) as client:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}], tools=OPENAI_TOOLS
        )
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": prompt}],
                tools=OPENAI_TOOLS,
                stream=True,
            )
        )
        no_tool = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "just talk"}], tools=OPENAI_TOOLS
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim"}
    streamed_arguments = "".join(
        part.function.arguments or ""
        for chunk in chunks
        if chunk.choices
        for part in chunk.choices[0].delta.tool_calls or []
        if part.function is not None
    )
    assert json.loads(streamed_arguments) == {"city": "sim"}
    assert no_tool.choices[0].finish_reason == "stop"

    with anthropic_client(sim) as client:
        message = client.messages.create(
            model="m",
            max_tokens=64,
            messages=[{"role": "user", "content": prompt}],
            tools=ANTHROPIC_TOOLS,
        )
        with client.messages.stream(
            model="m",
            max_tokens=64,
            messages=[{"role": "user", "content": prompt}],
            tools=ANTHROPIC_TOOLS,
        ) as stream:
            final = stream.get_final_message()
    for answer in (message, final):
        assert answer.stop_reason == "tool_use"
        block = answer.content[0]
        assert block.type == "tool_use"
        assert block.name == "get_weather"
        assert block.input == {"city": "sim"}


def test_sliding_window_limits_and_their_headers() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    with SimProcess(rpm=5, window_s=1.0) as sim, httpx.Client(trust_env=False) as http:
        url = f"{sim.base_url}/chat/completions"
        remaining = []
        for _ in range(5):
            response = http.post(url, json=chat)
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-requests"] == "5"
            assert response.headers["x-ratelimit-reset-requests"].endswith("s")
            remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["4", "3", "2", "1", "0"]
        assert "x-ratelimit-limit-tokens" not in response.headers  # no token limit set

        refused = http.post(url, json=chat)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        with openai_client(sim) as client, pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])

        time.sleep(1.0)  # every admission so far is now more than a window old
        assert http.post(url, json=chat).status_code == 200

        sim.control(rpm=0, tpm=100, window_s=60)
        messages = {"model": "m", "max_tokens": 60, "messages": [{"role": "user", "content": "a"}]}
        first = http.post(f"{sim.url}/v1/messages", json=messages)
        assert first.status_code == 200
        assert first.headers["anthropic-ratelimit-tokens-limit"] == "100"
        assert int(first.headers["anthropic-ratelimit-tokens-remaining"]) < 40
        reset = datetime.fromisoformat(first.headers["anthropic-ratelimit-input-tokens-reset"])
        assert reset.tzinfo is not None
        assert "anthropic-ratelimit-requests-limit" not in first.headers
        second = http.post(f"{sim.url}/v1/messages", json=messages)
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert int(second.headers["retry-after"]) >= 1

        stats = sim.stats()
    assert stats["max_in_window_requests"] == 5  # window_s was 1 s for those
    assert stats["ok"] == 7
    assert stats["rate_limited"] == 3


def test_control_switches_fault_injection_on_and_off(sim: SimProcess) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "chaos"}]
    failed_before = sim.stats()["failed"]
    try:
        with openai_client(sim, timeout=0.5) as client:
            assert sim.control(fail_rate=1.0)["fail_rate"] == 1.0
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=messages)
            sim.control(fail_rate=0.0, reset_rate=1.0)
            with pytest.raises(openai.APIConnectionError):
                client.chat.completions.create(model="m", messages=messages)
            sim.control(reset_rate=0.0, hang_rate=1.0)
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="m", messages=messages)
            sim.control(hang_rate=0.0, break_stream_rate=1.0, chunk_delay_ms=1.0)
            stream = client.chat.completions.create(model="m", messages=messages, stream=True)
            with pytest.raises((httpx.HTTPError, openai.APIError)):
                for _ in stream:
                    pass
            sim.control(break_stream_rate=0.0, chunk_delay_ms=0.0)
            reply = client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content is not None
        assert sim.stats()["failed"] == failed_before + 4
    finally:
        sim.control(fail_rate=0, reset_rate=0, hang_rate=0, break_stream_rate=0, chunk_delay_ms=0)
    bad = httpx.post(f"{sim.url}/sim/control", json={"fail_rate": 2}, trust_env=False)
    assert bad.status_code == 400


def test_request_log_stop_and_restart() -> None:
    with SimProcess(log=True) as sim:
        assert sim.log_path is not None
        with openai_client(sim) as client:
            client.chat.completions.create(
                model="logged",
                messages=[{"role": "user", "content": "log me"}],
                max_tokens=10,
                extra_headers={"x-quotad-app": "indexer"},
            )
            client.embeddings.create(model="embedder", input="text")
        port = sim.port
        assert sim.stop() == 0
        lines = read_sim_log(sim.log_path)
        sim.restart()
        assert sim.port == port
        httpx.get(f"{sim.base_url}/models", trust_env=False).raise_for_status()
        assert sim.stop() == 0
        after_restart = read_sim_log(sim.log_path)
    assert [(line["path"], line["model"], line["status"]) for line in lines] == [
        ("/v1/chat/completions", "logged", 200),
        ("/v1/embeddings", "embedder", 200),
    ]
    assert lines[0]["app"] == "indexer"
    assert lines[1]["app"] is None
    assert lines[0]["tokens"] > 10  # prompt estimate + max_tokens
    assert lines[0]["mono"] <= lines[1]["mono"]
    assert lines[0]["t"] <= lines[1]["t"]
    assert len(after_restart) == 3
    assert after_restart[2]["path"] == "/v1/models"


def test_request_log_with_bodies_and_tool_defaults() -> None:
    tool = send_tool(to="x@y.z")
    with SimProcess(log=True, log_bodies=True) as sim:
        assert sim.log_path is not None
        with openai_client(sim) as client:
            reply = client.chat.completions.create(
                model="logged",
                messages=[{"role": "user", "content": "use the tool"}],
                tools=[tool],  # type: ignore[list-item]
            )
        assert sim.stop() == 0
        [line] = read_sim_log(sim.log_path)
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    assert json.loads(calls[0].function.arguments) == {"to": "x@y.z", "n": 1}  # type: ignore[union-attr]
    assert json.loads(line["body"])["messages"] == [{"role": "user", "content": "use the tool"}]


def test_api_key_is_enforced() -> None:
    with SimProcess(api_key="sekret") as sim:
        with (
            openai_client(sim, api_key="wrong") as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.models.list()
        with openai_client(sim, api_key="sekret") as client:
            assert client.models.list().data
        with (
            anthropic_client(sim, api_key="wrong") as client,
            pytest.raises(anthropic.AuthenticationError),
        ):
            client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        with anthropic_client(sim, api_key="sekret") as client:
            message = client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        raw = httpx.post(
            f"{sim.url}/v1/messages",
            headers={"x-api-key": "sekret", "anthropic-version": "2023-06-01"},
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            trust_env=False,
        )
    assert message.usage.output_tokens == 5
    assert raw.status_code == 200
