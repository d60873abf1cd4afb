"""The walking skeleton end to end: a real ``quotad serve`` in front of real ``quotad sim``
processes, driven by the real clients, the CLI, and hand-made bad frames."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from quotad.client import (
    AsyncClient,
    Client,
    ConnectionLostError,
    DaemonUnavailableError,
    RequestCancelledError,
    RequestTimeoutError,
    UnknownModelError,
    UpstreamError,
)
from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import Error, Hello, Status, StatusReply, Welcome
from tests.support.daemon import DaemonProcess, run_quotad, two_sims_config
from tests.support.raw_socket import read_replies, replies_until_closed, unix_connection
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "hello there quotad"}]


def skeleton_config(openai_url: str, anthropic_url: str, extra: str = "") -> str:
    return two_sims_config(
        openai_url,
        anthropic_url,
        daemon="drain_s = 5",
        sim='[providers.sim.models."sim-small"]',
        extra=extra,
    )


@pytest.fixture(scope="module")
def daemon(sims: tuple[SimProcess, SimProcess]) -> Iterator[DaemonProcess]:
    openai_sim, anthropic_sim = sims
    config = skeleton_config(openai_sim.base_url, anthropic_sim.base_url)
    with DaemonProcess(config) as process:
        yield process


# --------------------------------------------------------------------------- the happy path


def test_sync_client_chat_stream_embed_status(daemon: DaemonProcess) -> None:
    with Client(socket=daemon.socket_path, app="skeleton") as client:
        reply = client.chat("fast", MESSAGES, max_tokens=8)
        assert reply.target == "sim/gpt-4o-mini"
        assert reply.content
        assert reply.usage.prompt_tokens > 0
        assert 0 < reply.usage.completion_tokens <= 8
        assert reply.request_id.startswith("qd-")
        assert reply.latency_s > 0
        assert reply.attempts == 1

        stream = client.chat_stream("fast", MESSAGES, max_tokens=8)
        deltas = [chunk.delta for chunk in stream]
        assert stream.end is not None
        assert "".join(deltas) == stream.end.content
        assert stream.end.usage.completion_tokens > 0
        assert len(deltas) > 1

        embedded = client.embed("sim/text-embedding-3-small", ["one", "two"], dimensions=4)
        assert len(embedded.embeddings) == 2
        assert all(len(vector) == 4 for vector in embedded.embeddings)

        status = client.status()
        assert status.socket == str(daemon.socket_path)
        names = {target.name for target in status.targets}
        assert {"sim/gpt-4o-mini", "sim/sim-small"} <= names
        assert [group.name for group in status.groups] == ["fast"]


def test_anthropic_target_and_bare_model(daemon: DaemonProcess) -> None:
    with Client(socket=daemon.socket_path) as client:
        reply = client.chat("claude/claude-3-5-haiku-latest", MESSAGES, max_tokens=8)
        assert reply.target == "claude/claude-3-5-haiku-latest"
        assert reply.content
        assert reply.usage.completion_tokens > 0
        stream = client.chat_stream("claude/claude-3-5-haiku-latest", MESSAGES, max_tokens=8)
        assert "".join(chunk.delta for chunk in stream) == stream.end.content  # type: ignore[union-attr]
        bare = client.chat("sim-small", MESSAGES, max_tokens=4)  # declared by one provider
        assert bare.target == "sim/sim-small"


def test_unknown_model_lists_names(daemon: DaemonProcess) -> None:
    with Client(socket=daemon.socket_path) as client:
        with pytest.raises(UnknownModelError) as caught:
            client.chat("no-such-model", MESSAGES)
        assert "fast" in caught.value.message
        assert caught.value.code == "unknown_model"
        # the connection is still good after an error
        assert client.chat("fast", MESSAGES, max_tokens=4).content


@pytest.mark.anyio
async def test_async_client_fifty_concurrent_on_one_connection(daemon: DaemonProcess) -> None:
    results: dict[int, str] = {}
    async with AsyncClient(socket=daemon.socket_path, app="many") as client:

        async def one(number: int) -> None:
            messages = [{"role": "user", "content": f"request number {number}"}]
            reply = await client.chat("fast", messages, max_tokens=6)
            results[number] = reply.request_id

        async with anyio.create_task_group() as group:
            for number in range(50):
                group.start_soon(one, number)
        stream = client.chat_stream("fast", MESSAGES, max_tokens=6)
        text = "".join([chunk.delta async for chunk in stream])
        assert stream.end is not None
        assert text == stream.end.content
    assert len(results) == 50
    assert len(set(results.values())) == 50


def test_cancel_stops_a_request(sims: tuple[SimProcess, SimProcess]) -> None:
    with SimProcess(latency_ms=5000) as slow:
        config = skeleton_config(slow.base_url, sims[1].base_url)
        with (
            DaemonProcess(config) as daemon,
            Client(socket=daemon.socket_path, timeout=0.5) as client,
        ):
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError):
                client.chat("fast", MESSAGES)
            assert time.monotonic() - started < 4
            # the client's Cancel made the daemon drop the request: nothing is left in flight
            deadline = time.monotonic() + 3
            while client.status().in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.status().in_flight == 0


@pytest.mark.anyio
async def test_async_cancel_answers_cancelled(sims: tuple[SimProcess, SimProcess]) -> None:
    with SimProcess(latency_ms=5000) as slow:
        config = skeleton_config(slow.base_url, sims[1].base_url)
        with DaemonProcess(config) as daemon:
            async with AsyncClient(socket=daemon.socket_path) as client:
                with anyio.move_on_after(0.3):
                    await client.chat("fast", MESSAGES)
                for _ in range(60):
                    if not (await client.status()).in_flight:
                        break
                    await anyio.sleep(0.05)
                assert (await client.status()).in_flight == 0


def test_upstream_failure_is_a_clear_error(sims: tuple[SimProcess, SimProcess]) -> None:
    with SimProcess(fail_rate=1.0) as failing:
        config = skeleton_config(failing.base_url, sims[1].base_url)
        with DaemonProcess(config) as daemon, Client(socket=daemon.socket_path) as client:
            with pytest.raises(UpstreamError) as caught:
                client.chat("sim/gpt-4o-mini", MESSAGES)
            attempts = caught.value.details["attempts"]
            assert attempts[0]["target"] == "sim/gpt-4o-mini"
            assert attempts[0]["status"] == 500


# --------------------------------------------------------------------------- restart, socket


def test_client_reconnects_after_daemon_restart(sims: tuple[SimProcess, SimProcess]) -> None:
    config = skeleton_config(sims[0].base_url, sims[1].base_url)
    daemon = DaemonProcess(config).start()
    try:
        with Client(socket=daemon.socket_path, reconnect_s=10) as client:
            first = client.chat("fast", MESSAGES, max_tokens=4)
            assert daemon.stop() == 0
            daemon.start()
            second = client.chat("fast", MESSAGES, max_tokens=4)
            assert second.request_id != first.request_id
            assert second.request_id.rsplit("-", 1)[0] != first.request_id.rsplit("-", 1)[0]
    finally:
        daemon.__exit__(None, None, None)


def test_in_flight_request_sees_connection_lost(sims: tuple[SimProcess, SimProcess]) -> None:
    with SimProcess(latency_ms=3000) as slow:
        config = skeleton_config(slow.base_url, sims[1].base_url)
        with DaemonProcess(config) as daemon, Client(socket=daemon.socket_path) as client:
            threading.Timer(0.5, daemon.kill).start()
            with pytest.raises(ConnectionLostError):
                client.chat("fast", MESSAGES)


def test_socket_modes_stale_socket_and_live_daemon(sims: tuple[SimProcess, SimProcess]) -> None:
    config = skeleton_config(sims[0].base_url, sims[1].base_url)
    with DaemonProcess(config) as daemon:
        assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(daemon.socket_path.parent.stat().st_mode) == 0o700
        second = quotad(
            "serve", "--config", str(daemon.config_path),
            env={"QUOTAD_SOCKET": str(daemon.socket_path)},
        )  # fmt: skip
        assert second.returncode == 1
        assert "already serving" in second.stderr
        daemon.kill()  # leaves a stale socket file behind
        assert daemon.socket_path.exists()
        daemon.start()  # replaces it
        with Client(socket=daemon.socket_path) as client:
            assert client.status().pid == daemon.process.pid  # type: ignore[union-attr]


def test_unreachable_daemon_lists_paths(tmp_path: Path) -> None:
    missing = "/tmp/quotad-no-such-dir/q.sock"
    with pytest.raises(DaemonUnavailableError) as caught:
        Client(socket=missing).status()
    assert missing in str(caught.value)


def test_sigterm_lets_requests_in_flight_finish(sims: tuple[SimProcess, SimProcess]) -> None:
    with SimProcess(latency_ms=800) as slow:
        config = skeleton_config(slow.base_url, sims[1].base_url)
        daemon = DaemonProcess(config).start()
        try:
            replies: list[str] = []

            def call() -> None:
                with Client(socket=daemon.socket_path) as client:
                    replies.append(client.chat("fast", MESSAGES, max_tokens=4).content or "")

            threads = [threading.Thread(target=call) for _ in range(3)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(10)
            assert daemon.process.wait(10) == 0
            assert len(replies) == 3
            assert all(replies)
            assert not daemon.socket_path.exists()
        finally:
            daemon.__exit__(None, None, None)


# --------------------------------------------------------------------------- bad input


def assert_still_serving(daemon: DaemonProcess) -> None:
    with Client(socket=daemon.socket_path) as client:
        assert client.chat("fast", MESSAGES, max_tokens=4).content


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param((4 * 1024**3 - 1).to_bytes(4, "big"), "bad_frame", id="4GiB-prefix"),
        pytest.param(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", "bad_frame", id="garbage"),
        pytest.param(
            len(b := msgspec.msgpack.encode(Welcome())).to_bytes(4, "big") + b,
            "bad_request",
            id="wrong-message-type",
        ),
    ],
)
def test_bad_frames_close_only_that_connection(
    daemon: DaemonProcess, payload: bytes, code: str
) -> None:
    encoder = FrameEncoder()
    with Client(socket=daemon.socket_path) as bystander:  # connected before, used after
        with unix_connection(daemon.socket_path) as sock:
            sock.sendall(encoder.encode(Hello(app="bad")) + payload)
            replies = replies_until_closed(sock)
        assert isinstance(replies[0], Welcome)
        error = replies[-1]
        assert isinstance(error, Error)
        assert error.code == code
        assert error.message
        assert bystander.chat("fast", MESSAGES, max_tokens=4).content
    assert_still_serving(daemon)


def test_invalid_message_names_the_field(daemon: DaemonProcess) -> None:
    """DESIGN §5: replies carry their request's id, and an invalid message gets an Error
    naming the field. Its frame's bounds are sound, so it costs only its request: it was
    answered with id 0 and the connection closed, failing everything else in flight on it."""
    body = msgspec.msgpack.encode(
        {"type": "Chat", "id": 1, "model": "fast", "messages": [{"role": "robot"}]}
    )
    frames = [FrameEncoder().encode(Hello()), len(body).to_bytes(4, "big") + body]
    with unix_connection(daemon.socket_path) as sock:
        sock.sendall(b"".join([*frames, FrameEncoder().encode(Status(id=2))]))
        welcome, refused, status = read_replies(sock, 3)
    assert isinstance(welcome, Welcome)
    assert isinstance(refused, Error)
    assert (refused.id, refused.code) == (1, "bad_request")
    assert "messages[0].role" in refused.message
    assert isinstance(status, StatusReply)
    assert status.id == 2


def test_truncated_frame_then_close(daemon: DaemonProcess) -> None:
    sock = unix_connection(daemon.socket_path)
    frame = FrameEncoder().encode(Status(id=1))
    sock.sendall(FrameEncoder().encode(Hello()) + frame[:-3])
    sock.shutdown(socket.SHUT_WR)
    replies = replies_until_closed(sock)
    sock.close()
    assert [type(reply) for reply in replies] == [Welcome]
    assert_still_serving(daemon)


def test_first_frame_must_be_hello(daemon: DaemonProcess) -> None:
    sock = unix_connection(daemon.socket_path)
    sock.sendall(FrameEncoder().encode(Status(id=1)))
    replies = replies_until_closed(sock)
    sock.close()
    assert isinstance(replies[0], Error)
    assert "Hello" in replies[0].message


def test_many_requests_in_flight_answered_by_id(daemon: DaemonProcess) -> None:
    sock = unix_connection(daemon.socket_path)
    encoder = FrameEncoder()
    sock.sendall(
        encoder.encode(Hello()) + b"".join(encoder.encode(Status(id=n)) for n in range(1, 21))
    )
    decoder = reply_decoder()
    seen: set[int] = set()
    while len(seen) < 20:
        for reply in decoder.feed(sock.recv(65536)):
            if isinstance(reply, StatusReply):
                seen.add(reply.id)
    sock.close()
    assert seen == set(range(1, 21))


# --------------------------------------------------------------------------- the command line


def quotad(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_quotad(*args, env=env, timeout=30)


def test_cli_status_chat_and_exit_codes(daemon: DaemonProcess) -> None:
    env = {"QUOTAD_SOCKET": str(daemon.socket_path)}
    status = quotad("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["socket"] == str(daemon.socket_path)
    assert "targets" in quotad("status", env=env).stdout
    chat = quotad("chat", "-m", "fast", "--max-tokens", "4", "hi there", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    streamed = quotad("chat", "-m", "fast", "--stream", "hi there", env=env)
    assert streamed.returncode == 0
    assert streamed.stdout.strip()
    unknown = quotad("chat", "-m", "nope", "hi", env=env)
    assert unknown.returncode == 1
    assert "unknown_model" in unknown.stderr
    gone = quotad("--socket", "/tmp/quotad-none/q.sock", "status")
    assert gone.returncode == 3
    assert "/tmp/quotad-none/q.sock" in gone.stderr


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[providers.openai]\nkind = "openai"\nbase_url = "https://x/v1"\nrpm = "500"\nbogus = 1\n'
        '[models.fast]\ntargets = ["groq/llama"]\n'
    )
    result = quotad("check-config", str(bad))
    assert result.returncode == 2
    assert "providers.openai.rpm: expected int, got str" in result.stderr
    assert "providers.openai.bogus: unknown key" in result.stderr
    assert "models.fast.targets[0]: unknown provider 'groq'" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[providers.openai]\nkind = "openai"\nbase_url = "https://x/v1"\n')
    assert quotad("check-config", str(good)).returncode == 0
    as_json = json.loads(quotad("check-config", "--json", str(bad)).stdout)
    assert as_json["ok"] is False
    assert len(as_json["problems"]) == 3


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\ndurability = "sometimes"\n')
    result = quotad("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "daemon.durability" in result.stderr


def test_cancelled_error_class_exists() -> None:
    assert RequestCancelledError("x").code == "cancelled"


@pytest.mark.anyio
async def test_subscribe_sends_snapshots_with_finished_requests(daemon: DaemonProcess) -> None:
    async with AsyncClient(socket=daemon.socket_path, app="watcher") as client:
        seen: list[str] = []
        with anyio.fail_after(10):
            async for snapshot in client.subscribe(interval_s=0.1):
                if snapshot.seq == 1:
                    await client.chat("fast", MESSAGES, max_tokens=4)
                    with pytest.raises(UnknownModelError):
                        await client.chat("nope", MESSAGES)
                seen += [f"{record.app}:{record.status}" for record in snapshot.requests]
                if len(seen) >= 2:
                    break
        assert "watcher:ok" in seen
        assert "watcher:unknown_model" in seen
        assert snapshot.status.targets


def test_status_shows_each_apps_activity(daemon: DaemonProcess) -> None:
    with Client(socket=daemon.socket_path, app="busy-app") as client:
        for _ in range(3):
            client.chat("fast", MESSAGES, max_tokens=4, cache="bypass")
        app = next(a for a in client.status().apps if a.name == "busy-app")
        assert app.requests == 3
        assert app.in_flight == 0
        assert app.priority == "normal"


def test_admin_takes_designs_words_for_the_target_actions(daemon: DaemonProcess) -> None:
    """DESIGN §5 names them "enable/disable target, reset breaker" (and ``Client.admin``
    documents ``enable``, ``disable``, ``reset``): those words work, as ``target_*`` do."""
    target = "sim/gpt-4o-mini"
    with Client(socket=daemon.socket_path) as client:
        disabled = client.admin("disable", target)
        assert disabled.message == f"{target} disabled"
        assert disabled.data["enabled"] is False
        assert client.admin("enable", target).data.get("enabled", True) is True
        reset = client.admin("reset", target)
        assert reset.message == f"{target} reset: its breaker is closed and its 429 pause lifted"
        assert all(state.enabled for state in client.status().targets)


def test_a_daemon_that_does_not_start_leaves_no_directory_behind() -> None:
    """The suite's daemons clean up after themselves even when they never start (a config
    the daemon refuses left its temp directory in /tmp)."""
    process = DaemonProcess("[daemon]\nbogus = 1\n")
    with pytest.raises(RuntimeError, match="quotad exited with 2"), process:
        pass
    assert not process.directory.exists()
