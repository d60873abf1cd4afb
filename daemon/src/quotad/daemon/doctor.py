"""``quotad doctor``: checks an installation and says how to fix what is wrong.

The checks, in order: ``config`` (load and validate), ``keys`` (every provider's key can be
found; never shown), ``socket`` (path, type, and the modes of it and its directory),
``daemon`` (answers on the socket), ``state`` (the state directory exists and is writable),
``database`` (``PRAGMA integrity_check`` on ``quotad.db``, opened read-only), ``providers``
(a warning with what to do when there is none; with ``--online``: ``GET {base_url}/models``
with the key, a short timeout each), ``clock`` (the wall clock is plausible and steady
against the monotonic one; NTP as ``timedatectl`` reports it). Each ends ``ok``, ``warn``,
``fail`` or ``skip``; a failure (and a warning that has one) carries its fix.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, NamedTuple

import msgspec

from quotad.daemon.config import Config, ConfigError, find_and_load_config, state_dir
from quotad.daemon.hints import config_hints
from quotad.protocol.paths import SOCKET_ENV, SYSTEM_SOCKET, client_socket_candidates

CheckStatus = Literal["ok", "warn", "fail", "skip"]

PROVIDER_TIMEOUT_S: Final = 5.0
DAEMON_TIMEOUT_S: Final = 3.0
CLOCK_SAMPLE_S: Final = 0.2
CLOCK_DRIFT_S: Final = 0.05
"""More than this between wall and monotonic time over the sample: the wall clock moved."""
EARLIEST_PLAUSIBLE: Final = 1_704_067_200  # 2024-01-01T00:00:00Z
SYSTEM_STATE_DIR: Final = Path("/var/lib/quotad")
START_FIX: Final = (
    "start the daemon: `sudo systemctl start quotad.socket` (system), "
    "`systemctl --user start quotad` (user), or `quotad serve`"
)
JOIN_GROUP_FIX: Final = (
    "add this user to the socket's group: `sudo usermod -aG quotad $USER`, then log in again"
)


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The outcome of one check."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------- config, keys


def check_config(config_path: str | None) -> tuple[Check, Config | None]:
    """Load and validate the config serve would use."""
    try:
        config = find_and_load_config(config_path)
    except ConfigError as error:
        problems = "; ".join(error.problems)
        return Check(
            name="config",
            status="fail",
            detail=f"{error.source}: {problems}",
            fix=f"correct the keys named; `quotad check-config {error.source}` checks again",
        ), None
    return Check(
        name="config",
        status="ok",
        detail=f"{config.source}: {len(config.providers)} providers, {len(config.models)} "
        f"groups, {len(config.apps)} apps",
    ), config


def check_keys(config: Config, daemon_answers: bool) -> Check:
    """Whether every provider's key can be found from here (the key is never shown)."""
    from quotad.daemon.providers import resolve_api_key

    problems: list[str] = []
    without_key: list[str] = []
    exposed: list[str] = []
    for name, provider_config in config.providers.items():
        try:
            if resolve_api_key(name, provider_config) is None:
                without_key.append(name)
        except ConfigError as error:
            problems += error.problems
            continue
        key_file = Path(provider_config.api_key_file)
        if provider_config.api_key_file and key_file.stat().st_mode & stat.S_IROTH:
            exposed.append(f"providers.{name}.api_key_file {key_file}")
    if exposed:
        return Check(
            name="keys",
            status="fail",
            detail="every user may read " + ", ".join(exposed),
            fix="chmod 0600 each of them (0640 with the group quotad for the system service)",
        )
    if not problems:
        detail = f"{len(config.providers) - len(without_key)} provider(s) have a key"
        if without_key:
            detail += f"; {', '.join(without_key)}: no key configured"
        return Check(name="keys", status="ok", detail=detail)
    fix = (
        "give each provider api_key_file (a 0600 file), set its api_key_env variable, or, "
        "under systemd, put the key in /etc/credstore/quotad.<provider> "
        "(LoadCredential=<provider>:quotad.<provider>)"
    )
    if daemon_answers:  # it started, so it found its keys where it runs (a credential, say)
        return Check(
            name="keys",
            status="warn",
            detail="not found from this shell, though the running daemon has them: "
            + "; ".join(problems),
        )
    return Check(name="keys", status="fail", detail="; ".join(problems), fix=fix)


# --------------------------------------------------------------------------- socket, daemon


def socket_to_check(config: Config | None, explicit: str | None) -> Path:
    """The socket a client would use: ``--socket``, ``$QUOTAD_SOCKET``, ``daemon.socket``, else
    the first of the user and system sockets that exists (the user one when neither does)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if config is not None and config.daemon.socket:
        return Path(config.daemon.socket)
    candidates = client_socket_candidates()
    return next((path for path in candidates if path.exists()), candidates[0])


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


class _Problem(NamedTuple):
    """A problem a check may find with what it looks at (a file's modes, say)."""

    found: bool
    status: CheckStatus
    what: str
    fix: str = ""


def _first_problem(name: str, detail: str, *problems: _Problem) -> Check:
    """Check ``name``: the first of ``problems`` found (they come gravest first), else ok."""
    for problem in problems:
        if problem.found:
            detail = f"{detail}: {problem.what}"
            return Check(name=name, status=problem.status, detail=detail, fix=problem.fix)
    return Check(name=name, status="ok", detail=detail)


def check_socket(path: Path) -> Check:
    """The socket exists, is a socket, and only its owner (and group) may use it."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return Check(name="socket", status="fail", detail=f"no socket at {path}", fix=START_FIX)
    except PermissionError:
        return Check(
            name="socket",
            status="fail",
            detail=f"{path.parent} cannot be entered by this user (uid {os.getuid()})",
            fix=JOIN_GROUP_FIX,
        )
    if not stat.S_ISSOCK(info.st_mode):
        return Check(
            name="socket",
            status="fail",
            detail=f"{path} is not a socket",
            fix="remove it or point daemon.socket elsewhere, then restart quotad",
        )
    directory_mode = path.parent.stat().st_mode
    mode = stat.S_IMODE(info.st_mode)
    return _first_problem(
        "socket",
        f"{path} (mode {mode:04o}, directory {_mode(path.parent)})",
        _Problem(
            bool(mode & 0o007),
            "fail",
            "every user may connect",
            "SocketMode=0660 in quotad.socket, or restart quotad (it makes its socket 0600)",
        ),
        _Problem(
            bool(directory_mode & stat.S_IWOTH) and not directory_mode & stat.S_ISVTX,
            "fail",
            "anyone may replace the socket in its directory",
            f"chmod 0700 {path.parent} (0750 with a group for the system service)",
        ),
    )


def check_daemon(path: Path) -> Check:
    """A daemon answers Hello and Status on the socket."""
    from quotad.client import Client, DaemonUnavailableError, QuotadError, UnauthorizedError

    try:
        with Client(socket=path, app="quotad-doctor", timeout=DAEMON_TIMEOUT_S) as client:
            status = client.status()
    except UnauthorizedError as error:
        return Check(
            name="daemon",
            status="fail",
            detail=str(error),
            fix="add this uid to daemon.allow_uids (or its group to allow_gids), then reload: "
            "`sudo systemctl reload quotad`",
        )
    except DaemonUnavailableError as error:
        if "permission denied" in str(error):
            return Check(
                name="daemon",
                status="fail",
                detail=f"{path}: permission denied",
                fix=JOIN_GROUP_FIX,
            )
        return Check(
            name="daemon", status="fail", detail=f"no daemon answers on {path}", fix=START_FIX
        )
    except QuotadError as error:
        return Check(
            name="daemon",
            status="fail",
            detail=f"{path}: {error.code}: {error}",
            fix="see the daemon's log: `journalctl -u quotad`",
        )
    return Check(
        name="daemon",
        status="ok",
        detail=f"quotad {status.daemon_version}, pid {status.pid}, up {status.uptime_s:.0f} s, "
        f"{status.connections} connection(s), config {status.config_path}",
    )


# --------------------------------------------------------------------------- state, database


def state_dir_to_check(config: Config, socket_path: Path) -> Path:
    """The daemon's state directory: as configured, else the system service's when checking
    the system socket, else what ``quotad serve`` here would use."""
    configured = config.daemon.state_dir or os.environ.get("STATE_DIRECTORY")
    if not configured and socket_path == SYSTEM_SOCKET:
        return SYSTEM_STATE_DIR
    return state_dir(config)


def check_state(directory: Path) -> Check:
    """The state directory exists, is a directory, and is writable by its owner."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return Check(
            name="state",
            status="fail",
            detail=f"{directory} does not exist",
            fix=f"mkdir -p -m 0700 {directory} (StateDirectory= makes it for the service)",
        )
    except PermissionError:
        return Check(
            name="state",
            status="warn",
            detail=f"{directory} cannot be read by this user (uid {os.getuid()})",
        )
    except (OSError, ValueError) as error:  # a parent is a file; a NUL in the path
        reason = getattr(error, "strerror", None) or str(error)
        return Check(
            name="state",
            status="fail",
            detail=f"{str(directory)!r:.200} cannot be used: {reason}",
            fix="set daemon.state_dir to a directory",
        )
    if not stat.S_ISDIR(info.st_mode):
        return Check(
            name="state",
            status="fail",
            detail=f"{directory} is not a directory",
            fix="move it away, or set daemon.state_dir to a directory",
        )
    writable = os.access(directory, os.W_OK)
    ours = info.st_uid == os.getuid() or os.getuid() == 0
    return _first_problem(
        "state",
        f"{directory} (mode {stat.S_IMODE(info.st_mode):04o}, uid {info.st_uid})",
        _Problem(
            bool(info.st_mode & stat.S_IWOTH),
            "fail",
            "every user may write it",
            f"chmod 0700 {directory}",
        ),
        _Problem(not writable and ours, "fail", "not writable", f"chmod u+w {directory}"),
        _Problem(not writable, "warn", "not writable by this user; the daemon's user owns it"),
        _Problem(
            bool(info.st_mode & stat.S_IROTH),
            "warn",
            "every user may read the ledger and the cached prompts",
            f"chmod 0700 {directory} (0750 for the system service)",
        ),
    )


def check_database(directory: Path) -> Check:
    """``PRAGMA integrity_check`` of ``quotad.db``, opened read-only."""
    path = directory / "quotad.db"
    if not path.exists():
        return Check(name="database", status="skip", detail=f"no {path} yet")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        if not os.access(path, os.R_OK):
            return Check(
                name="database",
                status="warn",
                detail=f"{path} cannot be read by this user: {error}",
            )
        rows = [str(error)]
    except sqlite3.DatabaseError as error:
        rows = [str(error)]
    if rows == ["ok"]:
        return Check(name="database", status="ok", detail=f"{path}: integrity ok")
    return Check(
        name="database",
        status="fail",
        detail=f"{path}: " + "; ".join(rows[:5]),
        fix=f"stop quotad, keep a copy, then `sqlite3 {path} .recover | sqlite3 recovered.db` "
        "and put recovered.db in its place",
    )


# --------------------------------------------------------------------------- providers


def check_providers(config: Config) -> list[Check]:
    """``GET {base_url}/models`` at every provider, with its key, concurrently."""
    import anyio

    from quotad.daemon.providers import build_provider, resolve_api_key
    from quotad.daemon.providers.base import ProviderError

    results: dict[str, Check] = {}

    async def probe(name: str) -> None:
        provider_config = config.providers[name]
        check_name = f"provider {name}"
        try:
            key = resolve_api_key(name, provider_config)
        except ConfigError as error:
            results[name] = Check(
                name=check_name,
                status="skip",
                detail=f"no key from this shell: {'; '.join(error.problems)}",
            )
            return
        provider = build_provider(name, provider_config, key)
        try:
            with anyio.fail_after(PROVIDER_TIMEOUT_S):
                models = await provider.list_models()
        except ProviderError as error:
            results[name] = Check(
                name=check_name,
                status="fail",
                detail=f"{provider_config.base_url}: {error.kind}: {error.message}",
                fix=_provider_fix(name, error.kind, error.status),
            )
        except TimeoutError:
            results[name] = Check(
                name=check_name,
                status="fail",
                detail=f"{provider_config.base_url}: no answer within {PROVIDER_TIMEOUT_S:g} s",
                fix=_provider_fix(name, "timeout", None),
            )
        else:
            results[name] = Check(
                name=check_name,
                status="ok",
                detail=f"{provider_config.base_url}: {len(models)} models",
            )
        finally:
            with anyio.CancelScope(shield=True):
                await provider.aclose()

    async def probe_all() -> None:
        async with anyio.create_task_group() as tasks:
            for name in config.providers:
                tasks.start_soon(probe, name)

    anyio.run(probe_all)
    return [results[name] for name in config.providers]


def _provider_fix(name: str, kind: str, status: int | None) -> str:
    if kind == "client" and status in (401, 403):
        return f"the provider refused the key: replace the key of providers.{name}"
    if kind in ("connect", "timeout"):
        return f"check providers.{name}.base_url and this machine's network (proxy, firewall)"
    return f"check providers.{name}.base_url points at an OpenAI- or Anthropic-compatible API"


# --------------------------------------------------------------------------- clock


def _ntp_synchronized() -> bool | None:
    """``timedatectl``'s NTPSynchronized; None when it cannot tell."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl is None:
        return None
    try:
        result = subprocess.run(
            [timedatectl, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = result.stdout.strip()
    return None if result.returncode or answer not in ("yes", "no") else answer == "yes"


def check_clock(
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    ntp: Callable[[], bool | None] = _ntp_synchronized,
) -> Check:
    """The wall clock is plausible and does not move against the monotonic clock (budgets
    count days by it); NTP synchronization as far as ``timedatectl`` knows."""
    wall_start, mono_start = wall(), monotonic()
    sleep(CLOCK_SAMPLE_S)
    wall_end, mono_end = wall(), monotonic()
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall_end))
    if wall_end < EARLIEST_PLAUSIBLE:
        return Check(
            name="clock",
            status="fail",
            detail=f"the wall clock says {now}",
            fix="set the clock: `sudo timedatectl set-ntp true` (or set the time by hand)",
        )
    drift = (wall_end - wall_start) - (mono_end - mono_start)
    if abs(drift) > CLOCK_DRIFT_S:
        return Check(
            name="clock",
            status="warn",
            detail=f"{now}; the wall clock moved {drift:+.3f} s against the monotonic clock "
            f"in {CLOCK_SAMPLE_S:g} s (stepped, or adjusting)",
        )
    synchronized = ntp()
    if synchronized is False:
        return Check(
            name="clock",
            status="warn",
            detail=f"{now}; not synchronized by NTP",
            fix="`sudo timedatectl set-ntp true`",
        )
    sync = {True: "NTP synchronized", None: "NTP state unknown"}[synchronized]
    return Check(name="clock", status="ok", detail=f"{now}; {sync}")


# --------------------------------------------------------------------------- all of it


def run_checks(
    *, config_path: str | None = None, socket: str | None = None, online: bool = False
) -> list[Check]:
    """Every check, in order."""
    checks: list[Check] = []
    config_check, config = check_config(config_path)
    checks.append(config_check)
    path = socket_to_check(config, socket)
    socket_check = check_socket(path)
    daemon_check = check_daemon(path)
    if config is not None:
        checks.append(check_keys(config, daemon_answers=daemon_check.status == "ok"))
    checks += [socket_check, daemon_check]
    if config is not None:
        try:
            directory = state_dir_to_check(config, path)
        except ConfigError as error:
            checks.append(Check(name="state", status="fail", detail="; ".join(error.problems)))
        else:
            checks += [check_state(directory), check_database(directory)]
        hints = config_hints(config)
        checks += [
            Check(name=hint.topic, status="warn", detail=hint.problem, fix=hint.fix)
            for hint in hints
        ]
        if all(hint.topic != "providers" for hint in hints):  # else there is none to ask
            if online:
                checks += check_providers(config)
            else:
                checks.append(
                    Check(name="providers", status="skip", detail="--online asks each provider")
                )
    checks.append(check_clock())
    return checks


_MARK: Final = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def print_report(checks: list[Check], *, as_json: bool = False) -> None:
    """Print the checks: one line each and a fix under each failure, or one JSON object."""
    failed = any(check.status == "fail" for check in checks)
    if as_json:
        print(msgspec.json.encode({"ok": not failed, "checks": checks}).decode())
        return
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{_MARK[check.status]:4}  {check.name:{width}}  {check.detail}")
        if check.fix:
            print(f"{'':4}  {'':{width}}  fix: {check.fix}")
    summary = "some checks failed" if failed else "all checks passed"
    print(f"\n{summary}", file=sys.stderr if failed else sys.stdout)
