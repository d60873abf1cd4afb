"""``quotad doctor`` end to end: a real daemon and sim, the CLI's exit codes, text and JSON."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotad.daemon.cli import main
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with SimProcess(latency_ms=1) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url),
            '[models.fast]\ntargets = ["sim/gpt-4o-mini"]\n',
        )
        with DaemonProcess(config) as process:
            process.state_dir.mkdir(mode=0o700, exist_ok=True)
            yield process


def doctor(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    code = main(
        ["--socket", str(daemon.socket_path), "doctor", "--config", str(daemon.config_path), *args]
    )
    return code, capsys.readouterr().out


def test_doctor_passes_on_a_healthy_install(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(daemon.state_dir / "quotad.db") as database:
        database.execute("CREATE TABLE IF NOT EXISTS t (x)")
    database.close()
    code, out = doctor(daemon, capsys, "--online")
    assert code == 0, out
    assert "FAIL" not in out
    for name in ("config", "keys", "socket", "daemon", "state", "database", "provider sim"):
        assert f"ok    {name} " in out, out
    assert "integrity ok" in out
    assert f"pid {daemon.process.pid}" in out  # type: ignore[union-attr]


def test_doctor_names_each_failure_and_its_fix(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken_state = tmp_path / "state"  # not the running daemon's own database
    broken_state.mkdir()
    (broken_state / "quotad.db").write_bytes(b"garbage, not SQLite" * 64)
    daemon.socket_path.chmod(0o666)
    config = tmp_path / "quotad.toml"
    config.write_text(
        daemon.config_path.read_text().replace(str(daemon.state_dir), str(broken_state))
        + sim_provider_config("gone", f"http://127.0.0.1:{free_port()}/v1")
    )
    try:
        socket_path = str(daemon.socket_path)
        code = main(
            ["--socket", socket_path, "doctor", "--config", str(config), "--online", "--json"]
        )
        report = json.loads(capsys.readouterr().out)
    finally:
        daemon.socket_path.chmod(0o600)
    assert code == 1
    assert report["ok"] is False
    checks = {check["name"]: check for check in report["checks"]}
    failed = {name for name, check in checks.items() if check["status"] == "fail"}
    assert failed == {"socket", "database", "provider gone"}
    assert all(checks[name]["fix"] for name in failed)
    assert checks["daemon"]["status"] == "ok"
    assert checks["provider sim"]["status"] == "ok"
    assert "cannot connect" in checks["provider gone"]["detail"]


def test_doctor_without_a_daemon(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "quotad.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
    code = main(["--socket", str(tmp_path / "q.sock"), "doctor", "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  daemon" in out
    assert "fix: start the daemon" in out
