"""Provider keys never leave the daemon: three sentinel keys (from ``api_key_file``, from
``api_key_env``, and a systemd credential in ``$CREDENTIALS_DIRECTORY``) are used for good and
refused requests, against a sim that quotes a refused key back in its 401; then every output
is searched for them: the daemon's log at debug level, what clients receive (errors, details,
raw frames), ``quotad status``, ``quotad doctor --online``, ``quotad check-config``, and every
byte of the state directory."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from quotad.client import Client, QuotadError
from quotad.protocol.framing import FrameEncoder
from quotad.protocol.messages import Chat, ChatMessage, Embed, Hello, Status
from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess
from tests.support.systemd import NotifyReceiver

MESSAGES = [{"role": "user", "content": "tell me a secret"}]


class Sentinels:
    """Three unique keys; :meth:`find` names any of them (or its random part) in a text."""

    def __init__(self) -> None:
        self.unique = {kind: uuid.uuid4().hex for kind in ("file", "env", "credential")}
        self.keys = {kind: f"sk-qdsentinel-{token}" for kind, token in self.unique.items()}

    def find(self, data: bytes | str) -> list[str]:
        raw = data.encode(errors="replace") if isinstance(data, str) else data
        return [kind for kind, token in self.unique.items() if token.encode() in raw]


def quotad(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_quotad(*args, env=env)


def wire_bytes(path: Path, requests: list[Any]) -> bytes:
    """Everything the daemon writes back on one raw connection to ``requests``."""
    encoder = FrameEncoder()
    received = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(encoder.encode(Hello(app="wire")))
        for request in requests:
            sock.sendall(encoder.encode(request))
        sock.shutdown(socket.SHUT_WR)  # the daemon answers what is in flight, then closes
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.slow
def test_sentinel_keys_appear_in_no_output(directory: Path) -> None:
    sentinels = Sentinels()
    keys_dir = directory / "keys"
    credentials = directory / "credentials"
    keys_dir.mkdir(mode=0o700)
    credentials.mkdir(mode=0o700)
    (keys_dir / "good").write_text(sentinels.keys["file"] + "\n")
    (credentials / "cred").write_text(sentinels.keys["credential"])
    state = directory / "state"
    state.mkdir()
    env = {"QD_SENTINEL_KEY": sentinels.keys["env"], "CREDENTIALS_DIRECTORY": str(credentials)}

    with (
        SimProcess(api_key=sentinels.keys["file"]) as accepting,
        SimProcess(api_key="sk-the-one-it-wants-" + uuid.uuid4().hex) as refusing,
    ):
        # The leak path is real: this server quotes a refused key back.
        echoed = httpx.post(
            f"{refusing.base_url}/chat/completions",
            headers={"authorization": f"Bearer {sentinels.keys['env']}"},
            json={"model": "m", "messages": MESSAGES},
            trust_env=False,
        )
        assert echoed.status_code == 401
        assert sentinels.find(echoed.text) == ["env"]

        config = daemon_config(
            sim_provider_config(
                "good", accepting.base_url, extra=f'api_key_file = "{keys_dir / "good"}"'
            ),
            sim_provider_config(
                "envkey", refusing.base_url, extra='api_key_env = "QD_SENTINEL_KEY"'
            ),
            sim_provider_config("cred", refusing.base_url, kind="anthropic"),
            '[models.fast]\ntargets = ["good/gpt-4o-mini"]\n',
            '[models.refused]\ntargets = ["envkey/gpt-4o-mini"]\n',
            '[models.refusedcred]\ntargets = ["cred/claude-3-5-haiku-latest"]\n',
        )
        outputs: dict[str, bytes | str] = {}
        with NotifyReceiver(directory) as notify:
            daemon = DaemonProcess(
                config,
                directory=directory,
                env={**env, **notify.env},
                extra_args=("--log-level", "debug"),
            )
            with daemon:
                socket_env = {"QUOTAD_SOCKET": str(daemon.socket_path)}
                seen: list[str] = []
                with Client(socket=daemon.socket_path, app="keys") as client:
                    assert client.chat("fast", MESSAGES, max_tokens=4).content
                    stream = client.chat_stream("fast", MESSAGES, max_tokens=4)
                    assert "".join(chunk.delta for chunk in stream)
                    client.embed("good/text-embedding-3-small", ["x"])
                    for model in ("refused", "refusedcred"):
                        with pytest.raises(QuotadError) as refused:
                            client.chat(model, MESSAGES)
                        seen.append(f"{refused.value!r} {refused.value} {refused.value.details}")
                        with pytest.raises(QuotadError) as refused:
                            list(client.chat_stream(model, MESSAGES))
                        seen.append(f"{refused.value!r} {refused.value} {refused.value.details}")
                    with pytest.raises(QuotadError) as refused:
                        client.embed("envkey/text-embedding-3-small", ["x"])
                    seen.append(f"{refused.value!r} {refused.value.details}")
                    outputs["status via client"] = repr(client.status())
                outputs["client errors"] = "\n".join(seen)
                assert "[redacted]" in outputs["client errors"]  # the echo came, and was cut

                user = [ChatMessage(role="user", content="wire")]
                outputs["raw frames"] = wire_bytes(
                    daemon.socket_path,
                    [
                        Chat(id=1, model="refused", messages=user),
                        Chat(id=2, model="refusedcred", messages=user, stream=True),
                        Embed(id=3, model="envkey/e", input="x"),
                        Chat(id=4, model="fast", messages=user),
                        Status(id=5),
                    ],
                )
                status = quotad("status", "--json", env=socket_env)
                assert status.returncode == 0, status.stderr
                outputs["status --json"] = status.stdout + status.stderr
                assert json.loads(status.stdout)["targets"]
                text_status = quotad("status", env=socket_env)
                outputs["status"] = text_status.stdout + text_status.stderr
                doctor = quotad(
                    "doctor", "--online", "--json", "--config", str(daemon.config_path),
                    env={**env, **socket_env},
                )  # fmt: skip
                outputs["doctor"] = doctor.stdout + doctor.stderr
                report = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
                assert report["provider good"]["status"] == "ok"
                assert report["provider envkey"]["status"] == "fail"
                assert "[redacted]" in report["provider envkey"]["detail"]
                check = quotad("check-config", "--json", str(daemon.config_path), env=env)
                outputs["check-config"] = check.stdout + check.stderr

                assert daemon.process is not None
                daemon.process.send_signal(signal.SIGHUP)
                notify.wait_for("RELOADING=1")
                notify.wait_for("READY=1")
                assert daemon.stop() == 0
            outputs["daemon log"] = daemon.log()
            assert "reloaded" in str(outputs["daemon log"])

    state_files = [path for path in state.rglob("*") if path.is_file()]
    for path in state_files:
        outputs[f"state file {path.name}"] = path.read_bytes()
    leaks = {name: found for name, data in outputs.items() if (found := sentinels.find(data))}
    assert not leaks, f"provider keys leaked into: {leaks}"
