"""What ``quotad`` prints reaches the operator's terminal with its control characters as
escapes: a provider's reply (the sim echoes the prompt) printed by ``quotad chat``, and names
in the tables of ``quotad spend`` from ledger rows written before the daemon refused such
names. Before, ``ESC ]0;…`` in either retitled the operator's terminal."""

from __future__ import annotations

import json
import sqlite3

from quotad.client import Client
from quotad.daemon.report import table
from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess

PROMPT = "\x1b]0;pwned\x07\x1b[31mRED\x1b[0m\rhidden\u202e"
SHOWN = "\\u001b]0;pwned\\u0007\\u001b[31mRED\\u001b[0m\\u000dhidden\\u202e"


def test_a_reply_and_old_names_reach_the_terminal_escaped() -> None:
    with (
        SimProcess() as sim,
        DaemonProcess(daemon_config(sim_provider_config("sim", sim.base_url))) as daemon,
    ):
        with Client(daemon.socket_path, app="terminal", timeout=30) as client:
            client.chat("sim/gpt-4o-mini", [{"role": "user", "content": "hi"}], max_tokens=5)
        with sqlite3.connect(daemon.state_dir / "quotad.db") as db:  # as if from before
            db.execute("UPDATE ledger SET app = ?", (PROMPT,))
            db.execute("UPDATE spend_daily SET app = ?", (PROMPT,))
        env = {"QUOTAD_SOCKET": str(daemon.socket_path)}
        chat = run_quotad("chat", "-m", "sim/gpt-4o-mini", PROMPT, env=env)
        stream = run_quotad("chat", "--stream", "-m", "sim/gpt-4o-mini", PROMPT, env=env)
        spend = run_quotad("spend", env=env)
        as_json = run_quotad("chat", "--json", "-m", "sim/gpt-4o-mini", "a\x7fb\x9bc", env=env)
    assert "a\x7fb\x9bc" in json.loads(as_json.stdout)["content"]  # still JSON, same text
    for result in (chat, stream, spend, as_json):
        assert result.returncode == 0, result.stderr
        for text in (result.stdout, result.stderr):
            assert "\x1b" not in text
            assert "\r" not in text
            assert "\u202e" not in text
    for reply in (chat.stdout, stream.stdout):  # the sim's echo makes the CR a space
        assert "sim reply to: \\u001b]0;pwned\\u0007\\u001b[31mRED\\u001b[0m hidden\\u202e" in reply
    assert SHOWN in spend.stdout


def test_a_table_lines_up_as_printed() -> None:
    printed = table(["app", "n"], [["\x1b[31mred", 1], ["plain", 22]]).splitlines()
    assert printed == ["app            n", "\\u001b[31mred  1", "plain          22"]
