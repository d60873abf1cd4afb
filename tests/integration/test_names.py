"""Names (an app, a user, a model or target) are identifiers that reach the log, the ledger and
the operator's terminal: one holding a control character or a bidirectional override is refused
at every door, naming the field. Before, a model named ``sim/a\\n12:00:00 error …`` made a
target of that name, whose events wrote a log line of the client's choosing, and an app named
``ESC ]0;…`` reached ``quotad spend`` as an escape sequence the terminal ran."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from quotad.client import BadRequestError, Client, QuotadError
from quotad.protocol.framing import FrameEncoder
from quotad.protocol.messages import Chat, ChatMessage, Error, Hello
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.raw_socket import read_replies, unix_connection
from tests.support.sim import SimProcess

FORGED = "sim/a\n12:00:00 error   quotad: FORGED"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[DaemonProcess, str]]:
    port = free_port()
    with (
        SimProcess() as sim,
        DaemonProcess(
            daemon_config(
                sim_provider_config("sim", sim.base_url),
                http=f'listen = "127.0.0.1:{port}"\nauth = "none"',
            )
        ) as process,
    ):
        yield process, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": FORGED}, "model"),
        ({"model": "sim/\x1b[41mX"}, "model"),
        ({"model": "sim/gpt-4o-mini", "user": "u\u202e1"}, "user"),
    ],
)
def test_a_request_naming_with_control_characters_is_refused_naming_the_field(
    daemon: tuple[DaemonProcess, str], fields: dict[str, str], named: str
) -> None:
    process, url = daemon
    with Client(process.socket_path, app="names", timeout=30) as client:
        with pytest.raises(BadRequestError, match=rf"^{named}: a name cannot hold control"):
            client.chat(fields["model"], CHAT, max_tokens=5, user=fields.get("user", ""))
        status = client.status()
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": CHAT, **fields},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == named
    assert all(target.name.isprintable() for target in status.targets)
    assert "FORGED" not in process.log()


def test_a_permit_and_a_hello_naming_with_control_characters_are_refused(
    daemon: tuple[DaemonProcess, str],
) -> None:
    process, url = daemon
    refused = r"^target: a name cannot hold control"
    with (
        Client(process.socket_path, app="names", timeout=30) as client,
        pytest.raises(BadRequestError, match=refused),
    ):
        client.acquire(FORGED, tokens=10)
    with (
        pytest.raises(QuotadError, match=r"Hello\.app: a name cannot hold control"),
        Client(process.socket_path, app="app\x1b[2K", timeout=30) as client,
    ):
        client.status()
    header = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "sim/gpt-4o-mini", "messages": CHAT},
        headers={"x-quotad-app": "a\tb"},
        timeout=30,
    )
    assert header.status_code == 400
    assert header.json()["error"]["param"] == "x-quotad-app"


def test_names_in_other_scripts_and_spaces_are_names(daemon: tuple[DaemonProcess, str]) -> None:
    process, _ = daemon
    for app in ("café", "日本語\u3000アプリ", "a\u00a0b", "émoji 😀"):
        with Client(process.socket_path, app=app, timeout=30) as client:
            assert client.chat("sim/gpt-4o-mini", CHAT, max_tokens=5, user=app).content


@pytest.mark.parametrize(
    ("tags", "refused"),
    [
        (
            ["ok", "a\x1b[2Kb"],
            r"^tags\[1\]: a name cannot hold control characters \(U\+001B at 1\)",
        ),
        (["x" * 257], r"^tags\[0\]: expected str of length <= 256$"),
        ([f"tag-{n}" for n in range(65)], r"^tags: expected array of length <= 64$"),
        (["x" * 4_000_000], r"^tags\[0\]: expected str of length <= 256$"),
    ],
)
def test_tags_are_names_and_a_request_carries_at_most_64(
    daemon: tuple[DaemonProcess, str], tags: list[str], refused: str
) -> None:
    """Tags are kept in the ledger row as sent: before, one request's 4 MB tag was a 4 MB row.
    The client refuses them before sending, and the daemon when a frame carries them."""
    process, _ = daemon
    field = "tags[1]" if len(tags) == 2 else "tags" if len(tags) > 1 else "tags[0]"
    with Client(process.socket_path, app="tags", timeout=30) as client:
        with pytest.raises(BadRequestError, match=refused) as caught:
            client.chat("sim/gpt-4o-mini", CHAT, max_tokens=5, tags=tags)
        assert caught.value.details["field"] == field
        with pytest.raises(BadRequestError, match=refused):
            client.embed("sim/text-embedding-3-small", "hi", tags=tags)
        kept = [f"tag-{n}" for n in range(64)]
        assert client.chat("sim/gpt-4o-mini", CHAT, max_tokens=5, tags=kept).content
    chat = Chat(
        id=2, model="sim/gpt-4o-mini", messages=[ChatMessage(role="user", content="hi")], tags=tags
    )
    with unix_connection(process.socket_path, timeout_s=30) as sock:
        sock.sendall(FrameEncoder().encode(Hello(id=1, app="raw")) + FrameEncoder().encode(chat))
        _, answer = read_replies(sock, 2)
    assert isinstance(answer, Error)
    assert (answer.id, answer.code, answer.details) == (2, "bad_request", {"field": field})
    assert re.search(refused.removeprefix("^"), answer.message)


FIELD_CASES = [
    ({"type": "Chat", "id": 2}, "model", "model: required"),
    (
        {"type": "Chat", "id": 2, "model": "m", "messages": [{"role": "user"}, {"content": "x"}]},
        "messages[1].role",
        "messages[1].role: required",
    ),
    ({"type": "Acquire", "id": 2, "target": "sim/m", "lease_s": 1e9}, "lease_s", "lease_s: "),
    (
        {"type": "Admin", "id": 2, "action": "cache_clear", "args": {"older_than_s": "x"}},
        "args.older_than_s",
        "args.older_than_s: expected seconds",
    ),
    ({"type": "Admin", "id": 2, "action": "enable"}, "target", "target: target_enable needs"),
    ({"type": "Settle", "id": 2, "permit_id": "nope"}, "permit_id", "permit_id: permit 'nope'"),
]


@pytest.mark.parametrize(
    ("frame", "field", "says"), FIELD_CASES, ids=[case[1] for case in FIELD_CASES]
)
def test_a_refusal_that_names_a_field_in_its_text_names_it_in_its_details(
    daemon: tuple[DaemonProcess, str], frame: dict[str, object], field: str, says: str
) -> None:
    """These named the field in their text only (``details`` empty), so a client could not
    point at it; a missing field was "message: object missing required field model"."""
    process, _ = daemon
    encoder = FrameEncoder()
    with unix_connection(process.socket_path, timeout_s=30) as sock:
        sock.sendall(encoder.encode(Hello(id=1, app="raw")) + encoder.encode(frame))
        _, answer = read_replies(sock, 2)
    assert isinstance(answer, Error)
    assert (answer.id, answer.code) == (2, "bad_request")
    assert answer.details.get("field") == field
    assert says in answer.message
