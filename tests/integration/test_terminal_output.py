"""Names any client of the socket chooses (its app, a ``provider/model`` target) reach the
operator's terminal through ``quotad status``, ``spend``, ``target list`` and ``chat``: they are
printed with their control characters as escapes. Before, an app named ``ESC ]0;…`` retitled the
operator's terminal and ``ESC [41m`` coloured it, from ``quotad spend``."""

from __future__ import annotations

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess

APP = "\x1b]0;pwned\x07\x1b[31mRED\x1b[0m\rhidden"
TARGET = "sim/\x1b[41mX\x1b[0m\u202e"


def test_names_chosen_by_clients_reach_the_terminal_escaped() -> None:
    with (
        SimProcess() as sim,
        DaemonProcess(daemon_config(sim_provider_config("sim", sim.base_url))) as daemon,
    ):
        with Client(daemon.socket_path, app=APP, timeout=30) as client:
            client.chat(TARGET, [{"role": "user", "content": "hi"}], max_tokens=5)
        env = {"QUOTAD_SOCKET": str(daemon.socket_path)}
        printed = {
            command: run_quotad(*command.split(), env=env)
            for command in ("status", "spend", "target list")
        }
        printed["chat"] = run_quotad("chat", "-m", TARGET, "hi", env=env)
    for command, result in printed.items():
        assert result.returncode == 0, (command, result.stderr)
        for text in (result.stdout, result.stderr):
            assert "\x1b" not in text, command
            assert "\r" not in text, command
            assert "\u202e" not in text, command
    assert "\\x1b]0;pwned\\x07\\x1b[31mRED\\x1b[0m\\x0dhidden" in printed["spend"].stdout
    assert "sim/\\x1b[41mX\\x1b[0m\\u202e" in printed["target list"].stdout
    assert "sim/\\x1b[41mX\\x1b[0m\\u202e" in printed["chat"].stderr  # its footer
