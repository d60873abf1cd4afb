"""The ``quotad`` command line refuses what it cannot use with a usage error naming the
argument, before anything is sent: text that is not UTF-8 (argv bytes reach Python as lone
surrogates, which no frame can carry: a traceback, before), numbers that are not finite or out
of their range (``--max-tokens 99999999999999999999`` was a traceback, ``--max-wait nan`` was
sent, ``sim --port 99999`` a traceback, ``demo --duration 0``, which its help offers, refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quotad.client import InternalError
from quotad.daemon import client_commands
from quotad.daemon.cli import build_parser, main
from quotad.daemon.store import warm
from quotad.daemon.store.warm import read_warm_file

NOT_UTF8 = os.fsdecode(b"\xff\xfe")
"""What ``sys.argv`` holds for the bytes ``\\xff\\xfe``."""


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["chat", NOT_UTF8], "argument prompt: not UTF-8 text: \\xff\\xfe"),
        (["chat", "--system", NOT_UTF8, "hi"], "argument --system: not UTF-8 text"),
        (["chat", "--app", NOT_UTF8, "hi"], "argument --app: not UTF-8 text"),
        (["chat", "-m", NOT_UTF8, "hi"], "argument -m/--model: not UTF-8 text"),
        (["target", "reset", NOT_UTF8], "argument name: not UTF-8 text"),
        (["keys", "create", "--app", NOT_UTF8], "argument --app: not UTF-8 text"),
        (["keys", "revoke", NOT_UTF8], "argument id: not UTF-8 text"),
        (["sim", "--host", NOT_UTF8], "argument --host: not UTF-8 text"),
        (["chat", "--max-tokens", "99999999999999999999", "hi"], "from 1 to 2147483647"),
        (["chat", "--max-tokens", "0", "hi"], "argument --max-tokens"),
        (["chat", "--max-tokens", "many", "hi"], "argument --max-tokens"),
        (["chat", "--max-wait", "nan", "hi"], "argument --max-wait: expected a number >= 0"),
        (["chat", "--max-wait", "inf", "hi"], "argument --max-wait"),
        (["chat", "--max-wait", "1e999", "hi"], "argument --max-wait"),
        (["sim", "--port", "99999"], "argument --port: expected a whole number from 0 to 65535"),
        (["sim", "--rpm", "-1"], "argument --rpm"),
        (["sim", "--latency-ms", "nan"], "argument --latency-ms"),
        (["sim", "--fail-rate", "inf"], "argument --fail-rate"),
        (["demo", "--duration", "nan"], "argument --duration"),
        (["demo", "--duration", "-1"], "argument --duration"),
        (["cache", "clear", "--older-than", "1e999d"], "argument --older-than"),
    ],
)
def test_an_argument_it_cannot_use_is_a_usage_error_naming_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_good_arguments_still_parse() -> None:
    parser = build_parser()
    chat = parser.parse_args(["chat", "--max-tokens", "2147483647", "--max-wait", "0", "café ✓"])
    assert (chat.max_tokens, chat.max_wait, chat.prompt) == (2**31 - 1, 0.0, "café ✓")
    assert parser.parse_args(["demo", "--duration", "0"]).duration == 0.0  # until ^C
    assert parser.parse_args(["sim", "--port", "65535"]).port == 65535


def test_bytes_that_are_not_utf8_end_the_command_with_a_usage_error_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "chat", b"\xff\xfe"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"argument prompt: not UTF-8 text: \\xff\\xfe" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_warm_file_past_its_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quotad cache warm /dev/zero`` read until memory ran out."""
    monkeypatch.setattr(warm, "MAX_WARM_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="cannot read /dev/zero: larger than 1,000 bytes"):
        read_warm_file("/dev/zero", 100)
    line = '{"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, '
    line += '"response": {"content": "hello"}}\n'
    small = tmp_path / "warm.jsonl"
    small.write_text(line * 4)  # 4 lines of 100 bytes or so: under the bound
    ((numbers, entries),) = read_warm_file(str(small), 1000)
    assert numbers == [1, 2, 3, 4]
    assert len(entries) == 4


class AppliedButNoStatus:
    """A client whose daemon applies the reload, then cannot encode its status."""

    def __enter__(self) -> AppliedButNoStatus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def admin(self, action: str) -> Any:
        assert action == "reload"
        return SimpleNamespace(message="config reloaded")

    def status(self) -> Any:
        raise InternalError("could not encode its StatusReply")


@pytest.mark.parametrize("json_output", [False, True])
def test_an_applied_reload_exits_0_when_the_status_after_it_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], json_output: bool
) -> None:
    """`quotad reload` asks the daemon's status after, for the config's path; a status that
    failed made an applied reload exit 1."""
    monkeypatch.setattr(client_commands, "_client", lambda *args: AppliedButNoStatus())
    assert main(["reload", *(["--json"] if json_output else [])]) == 0
    out, err = capsys.readouterr()
    assert "the reload was applied, but the daemon's status" in err
    if json_output:
        assert json.loads(out) == {"applied": True, "source": None, "message": "config reloaded"}
    else:
        assert out == "applied: config reloaded\n"


@pytest.mark.parametrize("cost", ["1e308", "-1", "1000000001"])
def test_a_warm_entry_saving_no_amount_is_refused_by_its_line(tmp_path: Path, cost: str) -> None:
    """A recorded ``cost_usd`` of 1e308 was stored as it was, and each hit added it to its
    day's saved spend; the bound is the ledger's (a billion USD)."""
    good = '{"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, '
    good += '"response": {"content": "hello", "cost_usd": 0.5}}\n'
    bad = good.replace("0.5", cost)
    path = tmp_path / "warm.jsonl"
    path.write_text(good + bad)
    with pytest.raises(ValueError, match=r"warm.jsonl:2: Expected `float` [<>]= .*cost_usd"):
        read_warm_file(str(path), 1000)
    path.write_text(good)
    ((numbers, _),) = read_warm_file(str(path), 1000)
    assert numbers == [1]
