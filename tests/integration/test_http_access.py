"""Access before work at the HTTP front door of a real ``quotad serve`` (``auth = "keys"``, its
keys in its own database): a request whose key is missing, unknown or revoked is answered 401
as soon as its head is in, while its chunked body is still arriving and would never end (the
daemon of 3f8c4fd read the body first: no answer came); a key made through the socket is let
in, for the app it names. ``tests/unit/test_http_front_door_hardening.py`` checks the same in
process; this checks the daemon as it is wired (key store, authorize hook, listener)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import openai
import pytest

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

PATIENCE_S = 10.0
ONE_BYTE_CHUNKS = b"1\r\n \r\n" * 1000


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[DaemonProcess, int]]:
    port = free_port()
    with SimProcess() as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url),
            http=f'listen = "127.0.0.1:{port}"\nauth = "keys"',
        )
        with DaemonProcess(config) as daemon:
            yield daemon, port


def answer_to_an_endless_body(port: int, path: str, key_header: bytes) -> bytes:
    """Send a POST's head and then one-byte chunks without end (never the last chunk) from
    another thread; the first bytes of the answer, which must come while the body goes on."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.sendall(
        b"POST %b HTTP/1.1\r\nhost: t\r\n%btransfer-encoding: chunked\r\n"
        b"content-type: application/json\r\n\r\n1\r\n{\r\n" % (path.encode(), key_header)
    )
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            try:
                sock.sendall(ONE_BYTE_CHUNKS)
            except OSError:
                return

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        return sock.recv(65536)  # a timeout here: the daemon is reading the body first
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # the daemon may have closed it already
            sock.shutdown(socket.SHUT_RDWR)  # ends the feeder's send at once
        feeder.join(PATIENCE_S)
        sock.close()


@pytest.mark.parametrize(
    ("path", "key_header"),
    [
        ("/v1/chat/completions", b""),
        ("/v1/chat/completions", b"authorization: Bearer qk-no-such-key\r\n"),
        ("/v1/messages", b"x-api-key: qk-no-such-key\r\n"),
        ("/v1/embeddings", b"authorization: Bearer sk-not-even-a-quotad-key\r\n"),
    ],
    ids=["no key", "unknown bearer", "unknown x-api-key", "foreign key"],
)
def test_a_request_without_a_good_key_is_refused_before_its_body_is_read(
    keyed: tuple[DaemonProcess, int], path: str, key_header: bytes
) -> None:
    daemon, port = keyed
    answer = answer_to_an_endless_body(port, path, key_header)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"connection: close" in head
    assert b"x-quotad-request-id: qd-" in head
    assert daemon.process is not None
    assert daemon.process.poll() is None


def test_a_key_made_on_the_socket_is_let_in_until_revoked(
    keyed: tuple[DaemonProcess, int],
) -> None:
    daemon, port = keyed
    with Client(socket=daemon.socket_path) as operator:
        made = operator.admin("key_create", app="keyed-app").data
        key = made["key"]
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key) as client:
            reply = client.chat.completions.with_raw_response.create(
                model="sim/m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.parse().choices[0].message.content
            operator.admin("key_revoke", made["id"])
            with pytest.raises(openai.AuthenticationError):
                client.chat.completions.create(
                    model="sim/m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
                )
        spend = operator.spend(by="app")
    assert "keyed-app" in {row.key for row in spend.rows}
    answer = answer_to_an_endless_body(
        port, "/v1/chat/completions", b"x-api-key: %b\r\n" % key.encode()
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
