"""A daemon restarted mid-run, for the tests of what survives it: chats sent at once from
threads, what the running daemon has saved of its provider's window (``gates.state``), and a
restart after a clean stop or a kill once that is saved."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from quotad.client import Client
from quotad.daemon.gates.saved import read_saved, saved_path
from tests.support.daemon import DaemonProcess
from tests.support.polling import wait_until


def chats_at_once(daemons: Sequence[DaemonProcess], count: int) -> list[str]:
    """``count`` chats at once to each of ``daemons`` (app ``a``, model ``sim/m``), each from
    its own thread: the target that answered each, or its error."""
    outcomes: list[str] = []

    def chat(daemon: DaemonProcess, n: int) -> None:
        try:
            with Client(daemon.socket_path, app="a", timeout=60) as client:
                messages = [{"role": "user", "content": f"q{n}"}]
                reply = client.chat("sim/m", messages, max_tokens=5, max_wait_s=30)
            outcomes.append(reply.target)
        except Exception as error:  # counted by the caller
            outcomes.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=chat, args=(d, n)) for d in daemons for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def saved_units(daemon: DaemonProcess, provider: str = "sim") -> int:
    """Units the daemon has saved in ``provider``'s windows so far."""
    saved = read_saved(saved_path(daemon.state_dir))
    return sum(
        units
        for gate in (saved.gates if saved is not None else [])
        if gate.name == f"provider:{provider}"
        for window in gate.windows
        for _, units in window.admissions
    )


def restart(daemon: DaemonProcess, *, killed: bool, saved: int) -> None:
    """Stop ``daemon`` cleanly, or kill it once it has saved ``saved`` units (it saves every
    second), then start it again."""
    if killed:
        wait_until(lambda: saved_units(daemon) >= saved)
        daemon.kill()
    else:
        assert daemon.stop() == 0
    daemon.start()
