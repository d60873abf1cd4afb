"""The daemon as a service, on real processes: socket activation (a listening fd 3 with
LISTEN_FDS/LISTEN_PID), sd_notify (READY only once serving, STATUS, WATCHDOG, RELOADING,
STOPPING), SIGHUP reloads good and bad, SIGTERM with requests in flight, and allow_uids
refusing another uid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quotad.client import Client
from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import Error, Hello, Welcome
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.peers import exchange_as
from tests.support.polling import wait_until
from tests.support.sim import SimProcess
from tests.support.systemd import ACTIVATION_LAUNCHER, NotifyReceiver, activation_env

MESSAGES = [{"role": "user", "content": "hello from operations"}]


@contextlib.contextmanager
def notified_service(
    directory: Path, config: str, **env: str
) -> Iterator[tuple[NotifyReceiver, DaemonProcess, subprocess.Popen[bytes]]]:
    """A daemon spawned (not waited for) in ``directory`` as systemd would, its sd_notify
    messages to the receiver, with ``env`` besides; killed on the way out."""
    with NotifyReceiver(directory) as notify:
        daemon = DaemonProcess(config, directory=directory, env={**notify.env, **env})
        process = daemon.spawn()
        try:
            yield notify, daemon, process
        finally:
            daemon.kill()


def reload_by_sighup(
    notify: NotifyReceiver, daemon: DaemonProcess, config: str | bytes
) -> list[str]:
    """Write ``config`` over the daemon's file and SIGHUP it; the READY=1 message that ends the
    reload (after its RELOADING=1)."""
    assert daemon.process is not None
    if isinstance(config, bytes):
        daemon.config_path.write_bytes(config)
    else:
        daemon.config_path.write_text(config)
    daemon.process.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    return notify.wait_for("READY=1")


def service_config(
    directory: Path, sims: tuple[SimProcess, SimProcess], extra: str = "", drain_s: int = 5
) -> str:
    """Two providers on the two sims, a group over the first; no HTTP front door; the state
    in ``directory``/state (filled in here: reload_by_sighup writes the text as it is)."""
    config = daemon_config(
        sim_provider_config("sim", sims[0].base_url),
        sim_provider_config("other", sims[1].base_url),
        '[models.fast]\ntargets = ["sim/gpt-4o-mini"]\n',
        daemon=f"drain_s = {drain_s}\n{extra}",
        cache='mode = "off"',
    )
    return config.format(state_dir=directory / "state")


def in_flight(path: Path) -> int:
    with Client(socket=path) as client:
        return client.status().in_flight


def chat_in_thread(path: Path, model: str, results: list[Any]) -> threading.Thread:
    """A chat on its own connection, in a thread; its reply (or exception) lands in results."""

    def call() -> None:
        try:
            with Client(socket=path, app="in-flight") as client:
                results.append(client.chat(model, MESSAGES, max_tokens=4))
        except Exception as error:  # the assertion reports it
            results.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


# --------------------------------------------------------------------------- socket activation


@pytest.mark.slow
def test_socket_activation_serves_the_passed_socket_and_leaves_it(
    sims: tuple[SimProcess, SimProcess], directory: Path
) -> None:
    path = directory / "q.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o660)
    listener.listen(16)
    early: list[Any] = []
    try:
        # A client connecting before the daemon runs waits in the socket's queue.
        def status_early() -> None:  # its handshake waits for the daemon to start: on a
            # busy machine that takes more than the 5 s a handshake is given by default
            with Client(socket=path, timeout=60, connect_timeout=60) as client:
                early.append(client.status())

        waiting = threading.Thread(target=status_early)
        waiting.start()
        with NotifyReceiver(directory) as notify:
            daemon = DaemonProcess(
                service_config(directory, sims),
                directory=directory,
                env={**notify.env, **activation_env(listener.fileno())},
                launcher=ACTIVATION_LAUNCHER,
                pass_fds=(listener.fileno(),),
            )
            process = daemon.spawn()
            try:
                notify.wait_for("READY=1")
                waiting.join(60)
                assert len(early) == 1
                assert early[0].pid == process.pid
                with Client(socket=path) as client:
                    status = client.status()
                    assert status.socket == str(path)
                    assert client.chat("fast", MESSAGES, max_tokens=4).content
                assert stat.S_IMODE(path.stat().st_mode) == 0o660  # systemd's mode, untouched
                assert daemon.stop() == 0
                assert path.exists()  # the socket is the socket unit's: the daemon leaves it
                assert "stale" not in daemon.log()
            finally:
                daemon.kill()
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["datagram-socket", "regular-file"])
def test_socket_activation_refuses_an_fd_it_cannot_serve(directory: Path, kind: str) -> None:
    if kind == "datagram-socket":
        passed: Any = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        passed.bind(str(directory / "dgram.sock"))
        expected = "fd 3 from systemd is an AF_UNIX/SOCK_DGRAM socket"
    else:
        passed = (directory / "file").open("w")
        expected = "fd 3 from systemd is a regular file"
    config = directory / "quotad.toml"
    config.write_text(f'[daemon]\nstate_dir = "{directory}"\n[http]\nlisten = ""\n')
    with passed:
        result = subprocess.run(
            [*ACTIVATION_LAUNCHER, "-m", "quotad.daemon.cli", "serve", "--config", str(config)],
            env={
                **os.environ,
                "QUOTAD_SOCKET": str(directory / "q.sock"),
                **activation_env(passed.fileno()),
            },
            pass_fds=(passed.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert expected in result.stderr
    assert "ListenStream=" in result.stderr


# --------------------------------------------------------------------------- notify, stop


@pytest.mark.slow
def test_ready_only_once_serving_then_watchdog_status_and_stopping(
    sims: tuple[SimProcess, SimProcess], directory: Path
) -> None:
    config = service_config(directory, sims, drain_s=30)
    with notified_service(directory, config, WATCHDOG_USEC="200000") as (notify, daemon, process):
        ready = notify.wait_for("READY=1")
        # The moment READY arrives the socket answers a whole Hello/Status exchange:
        # one attempt, no retry.
        with Client(socket=daemon.socket_path, reconnect_s=0) as client:
            assert client.status().pid == process.pid
        assert f"STATUS=serving {daemon.socket_path}: 2 providers, 1 groups" in ready

        notify.wait_for_count("WATCHDOG=1", 3)

        # No log line per request at the default level.
        lines_before = len(daemon.log().splitlines())
        with Client(socket=daemon.socket_path) as client:
            for _ in range(20):
                assert client.chat("fast", MESSAGES, max_tokens=4).content
        assert len(daemon.log().splitlines()) == lines_before

        # SIGTERM with requests in flight: STOPPING, they complete, exit 0. A subscriber
        # (quotad top) is no request in flight: the drain does not wait out drain_s for it.
        watcher = Client(socket=daemon.socket_path)
        subscription = watcher.subscribe(interval_s=60)
        next(subscription)
        with sims[0].controlled(latency_ms=1200):
            results: list[Any] = []
            threads = [chat_in_thread(daemon.socket_path, "fast", results) for _ in range(3)]
            wait_until(lambda: in_flight(daemon.socket_path) == 3)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            stopping = notify.wait_for("STOPPING=1")
            assert "STATUS=stopping: 3 request(s) in flight" in stopping
            assert "EXTEND_TIMEOUT_USEC=35000000" in stopping  # drain_s 30 + 5 to close
            for thread in threads:
                thread.join(30)
            assert process.wait(30) == 0
            assert time.monotonic() - signalled < 30 / 2  # well inside drain_s
        assert len(results) == 3
        assert all(reply.content for reply in results), results
        subscription.close()
        watcher.close()


# --------------------------------------------------------------------------- reload


@pytest.mark.slow
def test_sighup_applies_a_good_config_without_dropping_anything(
    sims: tuple[SimProcess, SimProcess], directory: Path
) -> None:
    config = service_config(directory, sims)
    with notified_service(directory, config) as (notify, daemon, _):
        notify.wait_for("READY=1")
        with Client(socket=daemon.socket_path, app="steady") as client:
            assert client.chat("fast", MESSAGES, max_tokens=4).target == "sim/gpt-4o-mini"
            welcome = client.welcome

            # A request in flight on provider "sim", whose table the reload changes (its
            # timeout: so the provider is rebuilt and the old one closed once the request is
            # done; a limit alone would keep it).
            with sims[0].controlled(latency_ms=1500):
                results: list[Any] = []
                thread = chat_in_thread(daemon.socket_path, "sim/gpt-4o-mini", results)
                wait_until(lambda: client.status().in_flight == 1)

                ready = reload_by_sighup(
                    notify,
                    daemon,
                    config.replace('["sim/gpt-4o-mini"]', '["other/gpt-4o-mini"]').replace(
                        f'"{sims[0].base_url}"\n', f'"{sims[0].base_url}"\ntimeout_s = 61\n'
                    )
                    + '[models.second]\ntargets = ["sim/gpt-4o-mini"]\n'
                    + "[providers.sim.models.extra]\nrpm = 10\n",
                )
                assert any(line.endswith("; config reloaded") for line in ready), ready

                status = client.status()
                assert sorted(group.name for group in status.groups) == ["fast", "second"]
                order = {group.name: group.order for group in status.groups}
                assert order["fast"] == ["other/gpt-4o-mini"]
                counts = {target.name: target.requests for target in status.targets}
                assert counts["sim/gpt-4o-mini"] == 2  # the target's counters lived on
                assert client.chat("fast", MESSAGES, max_tokens=4).target == "other/gpt-4o-mini"

                thread.join(15)
            assert len(results) == 1
            assert getattr(results[0], "content", None), results  # finished on the old pool
            assert client.welcome is welcome  # the same connection all along
        log = daemon.log()
        assert "(1 rebuilt)" in log
        assert "operator action reload" in log
        assert daemon.stop() == 0


def test_sighup_with_a_bad_config_keeps_the_running_one(
    sims: tuple[SimProcess, SimProcess], directory: Path
) -> None:
    first = sims[0]
    good = service_config(directory, sims)
    with notified_service(directory, good) as (notify, daemon, _):
        notify.wait_for("READY=1")
        with Client(socket=daemon.socket_path) as client:
            welcome = client.welcome
            bad = good.replace("drain_s = 5\n", "drain_s = 5\nbogus = 1\n")
            bad = bad.replace('[models.fast]\ntargets = ["sim/', '[models.fast]\ntargets = ["nope/')
            bad += 'rpm = "many"\n'  # lands in [models.fast]: an unknown key there
            bad += '[apps.batch]\nshare = "big"\n'
            ready = reload_by_sighup(notify, daemon, bad)
            assert any("reload rejected: 4 problem(s)" in line for line in ready), ready
            log = daemon.log()
            for problem in (
                "daemon.bogus: unknown key",
                "models.fast.rpm: unknown key",
                "apps.batch.share: expected float, got str",
                "models.fast.targets[0]: unknown provider 'nope'",
            ):
                assert f"reload rejected: {problem}" in log
            assert client.chat("fast", MESSAGES, max_tokens=4).target == "sim/gpt-4o-mini"

            ready = reload_by_sighup(notify, daemon, "[daemon\n")
            assert any("reload rejected: 1 problem(s)" in line for line in ready)
            assert "not valid TOML" in daemon.log()

            # a file that is not UTF-8 (found by the config fuzz): its error, not a traceback
            ready = reload_by_sighup(notify, daemon, good.encode() + b"# caf\xe9\n")
            assert any("reload rejected: 1 problem(s)" in line for line in ready), ready
            assert "reload rejected: not valid TOML: not UTF-8 at byte" in daemon.log()
            assert "Traceback" not in daemon.log()

            missing_key = good.replace(
                'base_url = "' + first.base_url + '"',
                'base_url = "' + first.base_url + '"\napi_key_file = "/nonexistent/key"',
            )
            reload_by_sighup(notify, daemon, missing_key)
            assert "providers.sim.api_key_file: cannot read /nonexistent/key" in daemon.log()

            # what httpx cannot encode (it killed the daemon): a header, a key file
            ready = reload_by_sighup(
                notify,
                daemon,
                good.replace("[models.fast]", 'headers = { X = "\u00fc" }\n[models.fast]'),
            )
            assert any("reload rejected: 1 problem(s)" in line for line in ready), ready
            key_file = directory / "key"
            key_file.write_text("sk-\u00e9")
            ready = reload_by_sighup(
                notify, daemon, missing_key.replace("/nonexistent/key", str(key_file))
            )
            assert any("reload rejected: 1 problem(s)" in line for line in ready), ready
            assert "api_key_file: the key in" in daemon.log()
            assert "Traceback" not in daemon.log()

            assert client.chat("fast", MESSAGES, max_tokens=4).target == "sim/gpt-4o-mini"
            assert [group.name for group in client.status().groups] == ["fast"]

            ready = reload_by_sighup(
                notify, daemon, good + '[models.again]\ntargets = ["other/m"]\n'
            )
            assert any(line.endswith("; config reloaded") for line in ready)
            assert client.chat("again", MESSAGES, max_tokens=4).target == "other/m"
            assert client.welcome is welcome
        assert daemon.stop() == 0


# --------------------------------------------------------------------------- allow_uids


def handshake_as(path: Path, uid: int, gid: int, groups: list[int]) -> Any:
    """Hello from a forked child running as ``uid``/``gid`` (+ ``groups``); the first reply."""
    hello = FrameEncoder().encode(Hello(app="other-user"))
    data = exchange_as(path, hello, uid=uid, gid=gid, groups=groups, first_frame_only=True)
    replies = list(reply_decoder().feed(data))
    assert len(replies) == 1, replies
    return replies[0]


@pytest.mark.skipif(
    os.getuid() != 0, reason="needs root: clients of other uids are forked children that setuid"
)
@pytest.mark.slow
def test_allow_uids_and_gids_refuse_other_peers(
    sims: tuple[SimProcess, SimProcess], directory: Path
) -> None:
    allow = "allow_uids = [4242]\nallow_gids = [4444, 5555]\n"
    with NotifyReceiver(directory) as notify:
        daemon = DaemonProcess(
            service_config(directory, sims, extra=allow),
            directory=directory,
            env=notify.env,
        )
        with daemon:
            os.chmod(directory, 0o711)
            os.chmod(daemon.socket_path, 0o666)  # let every uid reach it: the lists decide
            refused = handshake_as(daemon.socket_path, 65534, 65534, [])
            assert isinstance(refused, Error)
            assert refused.code == "unauthorized"
            assert "uid 65534" in refused.message
            assert isinstance(handshake_as(daemon.socket_path, 4242, 4242, []), Welcome)
            assert isinstance(handshake_as(daemon.socket_path, 4343, 4444, []), Welcome)
            supplementary = handshake_as(daemon.socket_path, 4343, 4343, [5555])
            assert isinstance(supplementary, Welcome)  # a supplementary group (SO_PEERGROUPS)
            with Client(socket=daemon.socket_path) as client:  # the daemon's own uid
                assert client.chat("fast", MESSAGES, max_tokens=4).content
            assert "uid 65534 (gid 65534) is not allowed" in daemon.log()

            # A reload changes who is let in, for connections made from then on.
            reload_by_sighup(
                notify, daemon, service_config(directory, sims, "allow_uids = [65534]\n")
            )
            assert isinstance(handshake_as(daemon.socket_path, 65534, 65534, []), Welcome)
            refused = handshake_as(daemon.socket_path, 4242, 4242, [])
            assert isinstance(refused, Error)
            assert "uid 4242" in refused.message
