"""The files in ``systemd/``: what they promise (read as unit files), and what
``systemd-analyze verify`` and ``systemd-analyze security`` say of them where systemd is
installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quotad.daemon.config import DaemonConfig
from quotad.daemon.runtime import STOP_GRACE_S
from quotad.protocol.paths import SYSTEM_SOCKET

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)


def settings(name: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value it is given, in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def one(found: dict[str, list[str]], key: str) -> str:
    values = found[key]
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_socket_unit_listens_where_clients_look() -> None:
    unit = settings("quotad.socket")
    assert one(unit, "Socket.ListenStream") == str(SYSTEM_SOCKET)
    assert one(unit, "Socket.SocketMode") == "0660"
    assert one(unit, "Socket.SocketGroup") == "quotad"


def test_system_service_unit() -> None:
    unit = settings("quotad.service")
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.ExecStart") == "quotad serve"
    assert one(unit, "Service.ExecReload") == "kill -HUP $MAINPID"
    assert seconds(one(unit, "Service.WatchdogSec")) > 0
    # systemd waits for the drain the daemon asks of it (drain_s + the grace to close).
    assert seconds(one(unit, "Service.TimeoutStopSec")) >= DaemonConfig().drain_s + STOP_GRACE_S
    assert one(unit, "Service.User") == one(unit, "Service.Group") == "quotad"
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one(unit, f"Service.{key}") == "quotad"
    assert one(unit, "Service.RuntimeDirectoryPreserve") == "yes"  # the socket lives there
    credentials = unit["Service.LoadCredential"]
    assert "openai:quotad.openai" in credentials
    assert all(re.fullmatch(r"(\w+):quotad\.\1", value) for value in credentials)
    assert one(unit, "Service.RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert "@system-service" in unit["Service.SystemCallFilter"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one(unit, f"Service.{key}") == "yes"
    assert one(unit, "Service.ProtectSystem") == "strict"
    assert "Service.PrivateUsers" not in unit  # it would hide the peers' uids
    assert "quotad.socket" in one(unit, "Unit.Requires")


def test_user_service_unit() -> None:
    unit = settings("quotad-user.service")
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.ExecStart") == "%h/.local/bin/quotad serve"
    assert one(unit, "Service.RuntimeDirectory") == "quotad"
    assert one(unit, "Service.RuntimeDirectoryMode") == "0700"
    assert "Service.StateDirectory" not in unit  # its place differs between systemd versions
    assert one(unit, "Install.WantedBy") == "default.target"


def test_sysusers_and_tmpfiles_snippets() -> None:
    sysusers = (UNITS / "sysusers.d" / "quotad.conf").read_text()
    assert re.search(r"^u quotad - ", sysusers, re.MULTILINE)
    tmpfiles = (UNITS / "tmpfiles.d" / "quotad.conf").read_text()
    assert re.search(r"^d /run/quotad\s+0750 quotad quotad", tmpfiles, re.MULTILINE)
    assert re.search(r"^d /etc/credstore\s+0700 root\s+root", tmpfiles, re.MULTILINE)


def installed_copy(directory: Path, name: str) -> Path:
    """The unit as installed: its command names this environment's ``quotad``."""
    quotad = shutil.which("quotad") or str(Path(sys.executable).parent / "quotad")
    assert Path(quotad).exists(), "the quotad command is not installed in this environment"
    text = (UNITS / name).read_text()
    text = text.replace("ExecStart=quotad ", f"ExecStart={quotad} ")
    text = text.replace("ExecStart=%h/.local/bin/quotad ", f"ExecStart={quotad} ")
    copy = directory / name
    copy.write_text(text)
    return copy


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    runtime = cwd / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        cwd=cwd,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_PAGER": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in ("quotad.socket", "quotad.service", "quotad-user.service"):
        installed_copy(tmp_path, name)
    system = analyze("verify", "quotad.socket", "quotad.service", cwd=tmp_path)
    user = analyze("verify", "--user", "quotad-user.service", cwd=tmp_path)
    for result in (system, user):
        complaints = [line for line in result.stderr.splitlines() if "quotad" in line]
        assert result.returncode == 0, result.stderr
        assert not complaints, complaints


@needs_systemd_analyze
def test_system_service_exposure_is_low(tmp_path: Path) -> None:
    installed_copy(tmp_path, "quotad.service")
    result = analyze("security", "--offline=true", "--threshold=20", "quotad.service", cwd=tmp_path)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    exposure = re.search(r"Overall exposure level for quotad.service: ([\d.]+)", result.stdout)
    assert exposure is not None
    assert float(exposure[1]) <= 2.0


@pytest.mark.skipif(
    os.getuid() != 0
    or not shutil.which("systemd-sysusers")
    or not shutil.which("systemd-tmpfiles"),
    reason="needs root and systemd-sysusers/systemd-tmpfiles (they chown in a scratch root)",
)
def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    for kind in ("sysusers.d", "tmpfiles.d"):
        (tmp_path / "etc" / kind).mkdir(parents=True)
        shutil.copy(UNITS / kind / "quotad.conf", tmp_path / "etc" / kind / "quotad.conf")
    for tool, *args in (("systemd-sysusers",), ("systemd-tmpfiles", "--create")):
        result = subprocess.run(
            [tool, f"--root={tmp_path}", *args, "quotad.conf"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    user = next(
        line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("quotad:")
    )
    uid, gid = int(user[2]), int(user[3])
    for path, mode, owner in (
        ("run/quotad", 0o750, (uid, gid)),
        ("var/lib/quotad", 0o750, (uid, gid)),
        ("etc/credstore", 0o700, (0, 0)),
    ):
        info = (tmp_path / path).stat()
        assert (info.st_mode & 0o7777, (info.st_uid, info.st_gid)) == (mode, owner), path
