"""Hostile and careless peers of the Unix socket against a real ``quotad serve`` process: the
frames that used to kill the daemon, a peer the allow lists refuse, running out of file
descriptors (said in status and /healthz), permits that outlive their connection, and new
connections while draining.

Each test checks that the daemon lives on and still serves others (a client connected before,
and one connecting after), and what the offending peer was answered.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import msgspec
import pytest

from quotad.client import BadRequestError, Client, RateLimitedError
from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import (
    Chat,
    ChatMessage,
    Error,
    Hello,
    Snapshot,
    Subscribe,
    Welcome,
)
from tests.integration.test_http_descriptors import healthz
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.peers import exchange_as
from tests.support.raw_socket import read_replies, replies_until_closed, unix_connection
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "are you still there?"}]
ENCODER = FrameEncoder()
HELLO = ENCODER.encode(Hello(app="hostile"))
PATIENCE_S = 10.0


def config(sim_url: str, daemon: str = "", provider: str = "", **head: str) -> str:
    """Provider ``sim`` (more lines of its table in ``provider``), ``drain_s = 5`` and the lines
    in ``daemon`` in ``[daemon]``; ``head`` (``http``, ``cache``) as in :func:`daemon_config`."""
    return daemon_config(
        sim_provider_config("sim", sim_url, extra=provider), daemon=f"drain_s = 5\n{daemon}", **head
    )


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def deep_extra(levels: int) -> bytes:
    """A Chat frame with ``levels`` nested lists in ``extra``."""
    payload = msgspec.msgpack.encode(
        {"type": "Chat", "id": 1, "model": "sim/m", "messages": [], "extra": {"x": "@@"}}
    )
    return frame(payload.replace(msgspec.msgpack.encode("@@"), b"\x91" * levels + b"\x01"))


def chat(request_id: int) -> bytes:
    return ENCODER.encode(
        Chat(id=request_id, model="sim/m", messages=[ChatMessage(role="user", content="hi")])
    )


def assert_serving(daemon: DaemonProcess, *clients: Client) -> None:
    """The process lives, the clients connected before are served, and so is a new one."""
    assert daemon.process is not None
    assert daemon.process.poll() is None, daemon.log()
    for client in clients:
        assert client.chat("sim/m", MESSAGES, max_tokens=4).content
    with Client(socket=daemon.socket_path) as fresh:
        assert fresh.chat("sim/m", MESSAGES, max_tokens=4).content


# --------------------------------------------------------------------------- killer frames


def test_killer_frames_cost_only_their_connection(sim: SimProcess) -> None:
    """Each of these ended the daemon process before (found by an adversarial test)."""
    with (
        SimProcess(latency_ms=300) as slow,
        DaemonProcess(config(slow.base_url, "allow_uids = [4242]")) as daemon,
        Client(socket=daemon.socket_path) as bystander,
    ):
        bystander.status()

        # (a) invalid UTF-8 in a string, no Hello needed (the 12 bytes of the report)
        with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
            sock.sendall(bytes.fromhex("00000008 81a474797065a1ff"))
            [error] = replies_until_closed(sock, reset_is_close=True)
        assert isinstance(error, Error)
        assert error.code == "bad_frame"
        assert "type: not valid UTF-8" in error.message

        # (b) 1,500 levels of nesting in Chat.extra: RecursionError in msgspec
        with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
            sock.sendall(HELLO + deep_extra(1500))
            welcome, error = replies_until_closed(sock, reset_is_close=True)
        assert isinstance(welcome, Welcome)
        assert isinstance(error, Error)
        assert error.code == "bad_request"
        assert "extra: nested deeper than 64 levels" in error.message

        # (c) two requests with one id in one read: KeyError at `del in_flight[id]`
        with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
            sock.sendall(HELLO + chat(5) + chat(5))
            welcome, first, second = read_replies(sock, 3)
        assert isinstance(first, Error)
        assert (first.id, first.code) == (5, "bad_request")
        assert second.id == 5
        assert not isinstance(second, Error)

        # (c') two Subscribes with one id, then a close
        with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
            sock.sendall(HELLO + ENCODER.encode(Subscribe(id=7)) + ENCODER.encode(Subscribe(id=7)))
            replies = read_replies(sock, 3)
        assert {type(reply) for reply in replies[1:]} == {Error, Snapshot}
        time.sleep(0.3)  # the close cancels the subscription

        assert_serving(daemon, bystander)
        assert "Traceback" not in daemon.log()


def test_values_json_cannot_carry_are_a_bad_request_naming_where(sim: SimProcess) -> None:
    """MessagePack can hold what a provider's JSON body cannot: an extension value, a map key
    that is an array, nil or a boolean. In a free-form field (a content part, extra) such a
    value was an internal error when the body was encoded, with a traceback, after the gates
    were passed (found by the socket fuzz). It is ``bad_request`` naming where, on a
    connection that goes on serving."""
    ext = msgspec.msgpack.Ext(5, b"abc")
    user = {"role": "user", "content": [{"type": "text", "text": "x", "meta": {(1, 2): "y"}}]}
    requests: dict[str, dict[str, Any]] = {
        "extra.meta.when: a MessagePack extension (type 5)": {
            "type": "Chat", "messages": [{"role": "user", "content": "hi"}],
            "extra": {"meta": {"when": ext}},
        },
        "messages[0].content[0].meta: a key that is an array": {
            "type": "Chat", "messages": [user], "stream": True,
        },
        "tools[0].function: a key that is nil": {
            "type": "Chat", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {None: 1}}],
        },
        "extra.tags[1]: a MessagePack extension (type 5)": {
            "type": "Embed", "input": "hi", "extra": {"tags": ["a", ext]},
        },
    }  # fmt: skip
    with DaemonProcess(config(sim.base_url)) as daemon:
        with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
            sock.sendall(HELLO)
            [welcome] = read_replies(sock, 1)
            assert isinstance(welcome, Welcome)
            for request_id, (said, fields) in enumerate(requests.items(), 1):
                payload = msgspec.msgpack.encode(dict(fields, id=request_id, model="sim/m"))
                sock.sendall(frame(payload))
                [error] = read_replies(sock, 1)
                assert isinstance(error, Error), error
                assert (error.id, error.code) == (request_id, "bad_request")
                assert error.message == f"{said}, which JSON cannot carry"
            sock.sendall(chat(99))  # the same connection is still served
            [answer] = read_replies(sock, 1)
            assert answer.id == 99
            assert not isinstance(answer, Error), answer
        assert_serving(daemon)
        assert "Traceback" not in daemon.log()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root: the refused peer is a setuid child")
def test_a_refused_peer_is_answered_before_anything_it_sent_is_read(sim: SimProcess) -> None:
    """The allow lists are checked at accept, before a byte is decoded: a refused peer sending
    a frame that is no message at all still hears ``unauthorized`` (not ``bad_frame``)."""
    with (
        DaemonProcess(config(sim.base_url, "allow_uids = [4242]")) as daemon,
        Client(socket=daemon.socket_path) as bystander,
    ):
        os.chmod(daemon.socket_path.parent, 0o711)
        os.chmod(daemon.socket_path, 0o666)  # every uid may connect: the lists decide
        for garbage in (bytes.fromhex("00000008 81a474797065a1ff"), b"\x00\x00\x00\x01\xc1"):
            [answer] = reply_decoder().feed(
                exchange_as(daemon.socket_path, garbage, uid=65534, timeout_s=PATIENCE_S)
            )
            assert isinstance(answer, Error)
            assert answer.code == "unauthorized"
            assert "uid 65534" in answer.message
        assert_serving(daemon, bystander)


# --------------------------------------------------------------------------- descriptors


def test_running_out_of_descriptors_never_wedges_the_listener(sim: SimProcess) -> None:
    """With its descriptors used up by idle connections, the daemon used to stop accepting for
    good (no log, process up). Now it says so in status and in /healthz (503, on an HTTP
    connection made before), and serves once descriptors free."""
    launcher = ("prlimit", "--nofile=64", sys.executable)
    port = free_port()
    with_http = config(sim.base_url, http=f'listen = "127.0.0.1:{port}"\nauth = "none"')
    with (
        DaemonProcess(with_http, launcher=launcher) as daemon,
        Client(socket=daemon.socket_path) as watcher,
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as http_probe,
    ):
        assert healthz(http_probe)[0] == 200
        idle: list[socket.socket] = []
        try:
            deadline = time.monotonic() + PATIENCE_S
            while True:  # idle connections until a new one is no longer taken
                assert time.monotonic() < deadline, "the daemon never ran out of descriptors"
                idle += [unix_connection(daemon.socket_path, PATIENCE_S) for _ in range(8)]
                # this one waits in the listen backlog, if need be
                waiting = unix_connection(daemon.socket_path, PATIENCE_S)
                waiting.sendall(HELLO)
                if not select.select([waiting], [], [], 0.5)[0]:
                    break
                idle.append(waiting)
            during = watcher.status()
            health_during = healthz(http_probe)
        finally:
            for sock in idle:
                sock.close()
        with waiting:
            [welcome] = read_replies(waiting, 1)
        assert isinstance(welcome, Welcome)
        [problem] = during.problems
        assert "accept failing: EMFILE (too many open files)" in problem
        assert health_during[0] == 503
        # the same problem, whose age ("since N s") may have ticked between the two reads
        assert isinstance(health_problems := health_during[1]["problems"], list)
        assert [without_age(text) for text in health_problems] == [without_age(problem)]
        assert problem.startswith(f"unix socket {daemon.socket_path}: accept failing")
        assert watcher.status().problems == []
        assert healthz(http_probe)[0] == 200
        assert "accept on" in daemon.log()
        assert "works again" in daemon.log()
        assert_serving(daemon, watcher)


def without_age(problem: str) -> str:
    """A listener problem without its trailing age, which counts whole seconds."""
    return re.sub(r" since \d+ s$", "", problem)


# --------------------------------------------------------------------------- permits


def test_permits_end_with_their_connection_and_leases_are_bounded(sim: SimProcess) -> None:
    """One in-flight slot (max_concurrency = 1): a permit held by a connection that closed used
    to keep it until its lease (any length, 1e300 s included) ran out, while status said 0."""
    with (
        DaemonProcess(config(sim.base_url, provider="max_concurrency = 1")) as daemon,
        Client(socket=daemon.socket_path) as other,
    ):
        with Client(socket=daemon.socket_path) as holder:
            with pytest.raises(BadRequestError, match=r"lease_s: 1e\+300 s is over gates\."):
                holder.acquire("sim/m", lease_s=1e300)
            holder.acquire("sim/m", lease_s=600)
            status = other.status()
            assert status.permits == 1
            shown = subprocess.run(
                [sys.executable, "-m", "quotad.daemon.cli", "status"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "QUOTAD_SOCKET": str(daemon.socket_path)},
            )
            assert "in flight 0  permits 1" in shown.stdout, shown.stderr
            with pytest.raises(RateLimitedError):
                other.acquire("sim/m", max_wait_s=0)
        deadline = time.monotonic() + PATIENCE_S
        while other.status().permits:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        permit = other.acquire("sim/m", max_wait_s=0)
        other.settle(permit.permit_id, tokens_used=1)
        assert "settled 1 permit(s) of a closed connection as reserved" in daemon.log()


# --------------------------------------------------------------------------- draining


def test_while_draining_new_connections_hear_overloaded(sim: SimProcess) -> None:
    with SimProcess(latency_ms=1500) as slow:
        daemon = DaemonProcess(config(slow.base_url)).start()
        try:
            answers: list[Any] = []

            def in_flight() -> None:
                with Client(socket=daemon.socket_path) as client:
                    answers.append(client.chat("sim/m", MESSAGES, max_tokens=4).content)

            thread = threading.Thread(target=in_flight)
            thread.start()
            time.sleep(0.5)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with unix_connection(daemon.socket_path, PATIENCE_S) as sock:
                sock.sendall(HELLO)
                [refused] = replies_until_closed(sock, reset_is_close=True)
            assert isinstance(refused, Error)
            assert refused.code == "overloaded"
            assert refused.retry_after_s is not None
            assert "shutting down" in refused.message
            thread.join(PATIENCE_S)
            assert answers
            assert answers[0]
            assert daemon.process.wait(PATIENCE_S) == 0
        finally:
            daemon.__exit__(None, None, None)
