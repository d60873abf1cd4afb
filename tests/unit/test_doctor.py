"""``quotad doctor``'s checks one by one, on real files, sockets and SQLite databases."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotad.daemon.config import parse_config
from quotad.daemon.doctor import (
    EARLIEST_PLAUSIBLE,
    Check,
    check_clock,
    check_config,
    check_database,
    check_keys,
    check_socket,
    check_state,
    run_checks,
)


class FakeClocks:
    """Wall and monotonic clocks a test moves by hand; ``sleep`` moves both."""

    def __init__(self, wall: float, wall_step: float = 0.0) -> None:
        self.wall_now = wall
        self.mono_now = 100.0
        self.wall_step = wall_step

    def wall(self) -> float:
        return self.wall_now

    def monotonic(self) -> float:
        return self.mono_now

    def sleep(self, seconds: float) -> None:
        self.mono_now += seconds
        self.wall_now += seconds + self.wall_step


def clock_check(clocks: FakeClocks, ntp: bool | None = True) -> tuple[str, str, str]:
    check = check_clock(clocks.sleep, clocks.wall, clocks.monotonic, lambda: ntp)
    return check.status, check.detail, check.fix


def test_clock_ok_stepped_unsynchronized_and_implausible() -> None:
    now = EARLIEST_PLAUSIBLE + 86400 * 700
    status, detail, _ = clock_check(FakeClocks(now))
    assert status == "ok"
    assert "NTP synchronized" in detail
    status, detail, _ = clock_check(FakeClocks(now, wall_step=2.0))
    assert status == "warn"
    assert "moved +2.000 s" in detail
    status, _, fix = clock_check(FakeClocks(now), ntp=False)
    assert status == "warn"
    assert "set-ntp" in fix
    assert clock_check(FakeClocks(now), ntp=None)[1].endswith("NTP state unknown")
    status, detail, fix = clock_check(FakeClocks(946_684_800.0))  # 2000-01-01
    assert status == "fail"
    assert "2000-01-01" in detail
    assert fix


def test_database_integrity_ok_missing_and_corrupt(tmp_path: Path) -> None:
    assert check_database(tmp_path).status == "skip"
    database = tmp_path / "quotad.db"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT)")
        connection.executemany(
            "INSERT INTO ledger (note) VALUES (?)", [("x" * 200,) for _ in range(2000)]
        )
        connection.execute("CREATE INDEX ledger_note ON ledger (note)")
    connection.close()
    ok = check_database(tmp_path)
    assert ok.status == "ok", ok
    # Overwrite a page in the middle: the file is still SQLite, its b-trees are not.
    data = bytearray(database.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = b"\xa5" * page
    database.write_bytes(bytes(data))
    broken = check_database(tmp_path)
    assert broken.status == "fail"
    assert "quotad.db" in broken.detail
    assert ".recover" in broken.fix
    database.write_bytes(b"not a database at all" * 100)
    garbage = check_database(tmp_path)
    assert garbage.status == "fail"
    assert "not a database" in garbage.detail


def at_modes(path: Path, check: Callable[[Path], Check], *modes: int) -> list[Check]:
    """``check(path)`` with ``path`` set to each of ``modes`` in turn."""
    checks = []
    for mode in modes:
        path.chmod(mode)
        checks.append(check(path))
    return checks


def test_state_directory_missing_open_and_good(tmp_path: Path) -> None:
    missing = check_state(tmp_path / "nope")
    assert missing.status == "fail"
    assert "mkdir" in missing.fix
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ok, group_and_world_read, world = at_modes(state, check_state, 0o700, 0o755, 0o777)
    assert [ok.status, group_and_world_read.status, world.status] == ["ok", "warn", "fail"]
    assert "chmod 0700" in world.fix
    uid = state.stat().st_uid
    assert ok.detail == f"{state} (mode 0700, uid {uid})"
    assert (ok.fix, group_and_world_read.fix) == (
        "",
        f"chmod 0700 {state} (0750 for the system service)",
    )
    assert group_and_world_read.detail == (
        f"{state} (mode 0755, uid {uid}): every user may read the ledger and the cached prompts"
    )
    assert world.detail == f"{state} (mode 0777, uid {uid}): every user may write it"
    (tmp_path / "file").write_text("")
    assert check_state(tmp_path / "file").status == "fail"


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    path = directory / "q.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        yield path


def test_socket_modes(listening: Path, tmp_path: Path) -> None:
    own, group, open_socket = at_modes(listening, check_socket, 0o600, 0o660, 0o666)
    assert [own.status, group.status, open_socket.status] == ["ok", "ok", "fail"]
    assert "SocketMode=0660" in open_socket.fix
    assert (own.detail, own.fix) == (f"{listening} (mode 0600, directory 0700)", "")
    assert open_socket.detail == f"{listening} (mode 0666, directory 0700): every user may connect"
    listening.chmod(0o600)
    listening.parent.chmod(0o777)
    replaceable = check_socket(listening)
    assert replaceable.status == "fail"
    assert replaceable.detail == (
        f"{listening} (mode 0600, directory 0777): anyone may replace the socket in its directory"
    )
    listening.parent.chmod(0o700)
    missing = check_socket(tmp_path / "none.sock")
    assert missing.status == "fail"
    assert "systemctl" in missing.fix
    (tmp_path / "plain").write_text("")
    assert check_socket(tmp_path / "plain").status == "fail"


def test_config_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nbogus = 1\n")
    check, config = check_config(str(bad))
    assert config is None
    assert check.status == "fail"
    assert "daemon.bogus: unknown key" in check.detail
    assert "check-config" in check.fix

    key_file = tmp_path / "key"
    key_file.write_text("sk-doctor-key-0123456789\n")
    key_file.chmod(0o600)
    config = parse_config(
        {
            "providers": {
                "filed": {
                    "kind": "openai",
                    "base_url": "http://h/v1",
                    "api_key_file": str(key_file),
                },
                "local": {"kind": "openai", "base_url": "http://h/v1"},
                "envy": {"kind": "openai", "base_url": "http://h/v1", "api_key_env": "QD_DOC_KEY"},
            }
        }
    )
    monkeypatch.delenv("QD_DOC_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    missing = check_keys(config, daemon_answers=False)
    assert missing.status == "fail"
    assert "QD_DOC_KEY is not set" in missing.detail
    assert "credstore" in missing.fix
    assert check_keys(config, daemon_answers=True).status == "warn"
    monkeypatch.setenv("QD_DOC_KEY", "sk-from-env-0123456789")
    found = check_keys(config, daemon_answers=False)
    assert found.status == "ok"
    assert found.detail == "2 provider(s) have a key; local: no key configured"
    assert "sk-" not in found.detail
    key_file.chmod(0o644)
    exposed = check_keys(config, daemon_answers=True)
    assert exposed.status == "fail"
    assert f"every user may read providers.filed.api_key_file {key_file}" == exposed.detail
    assert "chmod 0600" in exposed.fix


def test_a_state_directory_that_cannot_be_used_fails_without_a_traceback(tmp_path: Path) -> None:
    """A NUL in the path (ValueError) or a file as a parent (NotADirectoryError) crashed
    `quotad doctor`."""
    (tmp_path / "file").write_text("")
    for directory in (tmp_path / "a\0b", tmp_path / "file" / "state"):
        check = check_state(directory)
        assert check.status == "fail"
        assert "cannot be used" in check.detail


def test_a_state_directory_variable_that_is_no_path_fails_the_state_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "quotad.toml"
    config_path.write_text("")
    monkeypatch.setenv("STATE_DIRECTORY", ":")
    checks = run_checks(config_path=str(config_path), socket=str(tmp_path / "q.sock"))
    [state] = [check for check in checks if check.name == "state"]
    assert state.status == "fail"
    assert state.detail.startswith("STATE_DIRECTORY=':': expected an absolute path")
