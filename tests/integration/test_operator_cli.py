"""The ``quotad`` command as a new user meets it, on real processes (a daemon, a sim): finding
the socket the config names, warnings when no provider is configured, ``--version`` and
``reload``, figures that do not mislead (targets never reached, limits in force, money,
sizes), ``chat`` footers and JSON errors, and the per-request debug log line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quotad.client import Client, RateLimitedError
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "hello from the operator tests"}]
ISOLATED = (
    "QUOTAD_SOCKET",
    "QUOTAD_CONFIG",
    "QUOTAD_APP",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GROQ_API_KEY",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "JOURNAL_STREAM",
)
FOOTER = re.compile(r"^\[sim/gpt-4o-mini  \d+\+\d+ tokens  \$\d\.\d+  wait \d+ ms  \d+ ms\]$", re.M)


@pytest.fixture
def home() -> Iterator[Path]:
    """A temp dir standing for the user's XDG directories (config, runtime, state)."""
    directory = Path(tempfile.mkdtemp(prefix="qdcli", dir="/tmp"))
    for name in ("config", "run", "state"):
        (directory / name).mkdir(mode=0o700)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user with no quotad variables, no provider keys, and XDG
    directories of their own (so nothing of this machine's own quotad is found)."""
    env = {key: value for key, value in os.environ.items() if key not in ISOLATED}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    env["XDG_STATE_HOME"] = str(home / "state")
    return env


def quotad(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def configured_daemon(home: Path, text: str, extra_args: tuple[str, ...] = ()) -> DaemonProcess:
    """A daemon run by the user of ``home``: its socket is the one the config names, not
    $QUOTAD_SOCKET."""
    daemon = DaemonProcess(
        text, directory=home / "daemon", env=user_env(home), extra_args=extra_args
    )
    daemon.env.pop("QUOTAD_SOCKET")
    return daemon


def sim_config(
    sim: SimProcess, *tables: str, daemon: str = "", provider_extra: str = "", **head: str
) -> str:
    """A daemon whose socket is the one its config names, over provider ``sim`` (more lines of
    its table in ``provider_extra``) as group ``default``; ``tables``, ``daemon`` and ``head``
    (``http``, ``cache``) as in :func:`daemon_config`."""
    return daemon_config(
        sim_provider_config("sim", sim.base_url, extra=provider_extra),
        '[models.default]\ntargets = ["sim/gpt-4o-mini"]\n',
        *tables,
        daemon=f'socket = "{{socket}}"\n{daemon}',
        **head,
    )


UserHome = tuple[Path, dict[str, str]]
"""A user's XDG home (with a directory for the daemon's own files) and that user's environment."""


@pytest.fixture
def directory_home(home: Path) -> UserHome:
    """``home`` with a directory for the daemon's own files, and the environment of its user."""
    (home / "daemon").mkdir()
    return home, user_env(home)


# --------------------------------------------------------------------------- 2: the socket


def test_client_commands_read_the_socket_from_the_config_serve_reads(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    with configured_daemon(home, sim_config(sim)) as daemon:
        config = str(daemon.config_path)
        status = quotad("status", "--json", "--config", config, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["socket"] == str(daemon.socket_path)

        from_env = quotad("status", env={**env, "QUOTAD_CONFIG": config})
        assert from_env.returncode == 0, from_env.stderr

        (home / "config" / "quotad").mkdir()
        shutil.copy(config, home / "config" / "quotad" / "quotad.toml")  # the user's config
        chat = quotad("chat", "hello", env=env)
        assert chat.returncode == 0, chat.stderr
        assert quotad("target", "list", env=env).returncode == 0

        # $QUOTAD_SOCKET and --socket still come first
        elsewhere = quotad("--socket", str(home / "none.sock"), "status", env=env)
        assert elsewhere.returncode == 3

        # A config that cannot be read is warned of; the default sockets are still tried.
        broken = home / "broken.toml"
        broken.write_text("[daemon\n")
        unreadable = quotad("status", "--config", str(broken), env=env)
        assert unreadable.returncode == 3
        assert f"warning: cannot read daemon.socket from {broken}" in unreadable.stderr
        assert str(home / "run" / "quotad" / "quotad.sock") in unreadable.stderr
        wrong_type = home / "wrong.toml"
        wrong_type.write_text("[daemon]\nsocket = 5\n")
        typed = quotad("status", "--config", str(wrong_type), env=env)
        assert "daemon.socket: expected a path, got int" in typed.stderr
        assert typed.returncode == 3
        with_socket = quotad(
            "status", env={**env, "QUOTAD_SOCKET": str(daemon.socket_path)}
        )  # the variable wins over the (good) user config, and needs no config at all
        assert with_socket.returncode == 0


# --------------------------------------------------------------------------- 3: no providers


def test_no_providers_is_warned_of_with_what_to_do(directory_home: UserHome) -> None:
    home, env = directory_home
    check = quotad("check-config", env=env)
    assert check.returncode == 0, check.stderr
    assert "built-in default: ok (0 providers" in check.stdout
    for advice in ("warning: no providers configured", "OPENAI_API_KEY", "[providers.", "sim"):
        assert advice in check.stderr
    as_json = json.loads(quotad("check-config", "--json", env=env).stdout)
    assert as_json["ok"] is True
    assert "no providers configured" in as_json["warnings"][0]

    doctor = quotad("doctor", "--json", env=env)
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert checks["providers"]["status"] == "warn"
    assert "OPENAI_API_KEY" in checks["providers"]["fix"]
    text = quotad("doctor", env=env).stdout
    assert re.search(r"^warn\s+providers\s+no providers configured", text, re.M)

    empty = daemon_config(daemon='socket = "{socket}"')
    with configured_daemon(home, empty) as daemon:
        log = daemon.log()
        assert "no providers configured" in log
        assert "OPENAI_API_KEY" in log
        chat = quotad("chat", "--config", str(daemon.config_path), "hi", env=env)
        assert chat.returncode == 1
        assert "unknown_model" in chat.stderr
        assert "asks for the group 'default'" in chat.stderr  # and says what that is


# --------------------------------------------------------------------------- 4: --version, reload


def test_version_names_the_command_and_the_daemon_when_one_answers(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    alone = quotad("--version", env=env)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.startswith("quotad 0.1.0\n")
    assert "no daemon answers" in alone.stdout
    with configured_daemon(home, sim_config(sim)) as daemon:
        both = quotad("--version", env={**env, "QUOTAD_CONFIG": str(daemon.config_path)})
        assert both.returncode == 0
        assert f"daemon 0.1.0 at {daemon.socket_path}" in both.stdout
    missing = quotad(env=env)
    assert missing.returncode == 2
    assert "required" in missing.stderr


def test_reload_prints_applied_or_rejected_with_every_problem(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    good = sim_config(sim)
    with configured_daemon(home, good) as daemon:
        env["QUOTAD_CONFIG"] = str(daemon.config_path)
        applied = quotad("reload", env=env)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.startswith("applied:")

        daemon.config_path.write_text(
            daemon.config_path.read_text()
            + '[apps.batch]\nshare = "big"\n[models.fast]\ntargets = ["nope/m"]\n'
        )
        rejected = quotad("reload", env=env)
        assert rejected.returncode == 1
        assert "rejected:" in rejected.stderr
        assert "apps.batch.share: expected float, got str" in rejected.stderr
        assert "models.fast.targets[0]: unknown provider 'nope'" in rejected.stderr
        as_json = json.loads(quotad("reload", "--json", env=env).stdout)
        assert as_json["applied"] is False
        assert len(as_json["problems"]) == 2

        events = json.loads(quotad("status", "--json", env=env).stdout)["events"]
        kinds = [event["kind"] for event in events]
        assert "reload_rejected" in kinds
        assert "reload" in kinds  # the applied one
        assert quotad("chat", "hi", env=env).returncode == 0  # still on the previous config
    gone = quotad("--socket", str(home / "none.sock"), "reload", env=env)
    assert gone.returncode == 3


# --------------------------------------------------------------------------- 6: figures


def test_a_request_refused_by_its_app_gate_counts_against_no_target(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    port = free_port()
    text = sim_config(
        sim, "[apps.capped]\nrpm = 1\n", http=f'listen = "127.0.0.1:{port}"\nauth = "none"'
    )
    with configured_daemon(home, text) as daemon:
        env["QUOTAD_CONFIG"] = str(daemon.config_path)
        with Client(socket=daemon.socket_path, app="capped") as client:
            client.chat("default", MESSAGES, max_tokens=4)
            with pytest.raises(RateLimitedError):
                client.chat("default", MESSAGES, max_tokens=4, max_wait_s=0, cache="bypass")
        report = json.loads(quotad("spend", "--by", "target", "--json", env=env).stdout)
        rows = {row["key"]: row for row in report["rows"]}
        assert rows["sim/gpt-4o-mini"]["requests"] == 1
        assert rows["sim/gpt-4o-mini"]["errors"] == 0
        assert rows[""]["errors"] == 1  # reached no target
        by_target = quotad("spend", "--by", "target", env=env).stdout
        assert re.search(r"^\(none\)\s+1\s+1\s", by_target, re.M)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'quotad_requests_total{target="",app="capped",status="rate_limited"} 1' in metrics
        assert 'target="sim/gpt-4o-mini",app="capped",status="rate_limited"' not in metrics


def test_the_limit_in_force_is_the_providers_when_it_is_tighter(directory_home: UserHome) -> None:
    home, env = directory_home
    with SimProcess(rpm=10, latency_ms=1) as limited:
        for _ in range(8):  # another user of the same account, outside quotad
            answer = httpx.post(
                f"{limited.base_url}/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2},
                timeout=10,
            )
            assert answer.status_code == 200
        with configured_daemon(home, sim_config(limited, provider_extra="rpm = 10")) as daemon:
            env["QUOTAD_CONFIG"] = str(daemon.config_path)
            assert quotad("chat", "hi", env=env).returncode == 0
            text = quotad("status", env=env).stdout
            assert "1/2 requests per 60s  (provider's limit now; 10 configured)" in text
            status = json.loads(quotad("status", "--json", env=env).stdout)
            window = status["gates"][0]["windows"][0]
            in_force = (window["limit"], window["limit_in_force"], window["used_in_force"])
            assert in_force == (10, 2, 1)


def test_money_keeps_its_digits_and_sizes_are_mib(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    text = sim_config(sim, "[budgets]\ndaily_usd = 0.001\n", cache='mode = "on"')
    with configured_daemon(home, text) as daemon:
        env["QUOTAD_CONFIG"] = str(daemon.config_path)
        chat = quotad("chat", "a cheap question", env=env)
        assert chat.returncode == 0, chat.stderr
        cost = re.search(r"tokens  \$(\d\.\d+)  wait", chat.stderr)
        assert cost is not None, chat.stderr
        assert float(cost[1]) > 0  # never $0.00
        status = quotad("status", env=env).stdout
        budget = r"global daily\s+day\s+\$0\.0000\d+\s+\$0\.00\s+\$0\.0010\s"
        assert re.search(budget, status), status
        assert "/256.0 MiB" in status
        assert " MB" not in status
        assert "of 256.0 MiB" in quotad("cache", "stats", env=env).stdout
        csv_text = quotad("spend", "--csv", env=env).stdout
        header, *lines = csv_text.splitlines()
        cost_column = header.split(",").index("cost_usd")
        for line in lines:
            assert re.fullmatch(r"\d+\.\d{8}", line.split(",")[cost_column]), line
        assert "e-" not in csv_text


# --------------------------------------------------------------------------- 8: chat


def test_chat_stream_prints_the_footer_and_json_errors_are_json(
    sim: SimProcess, directory_home: UserHome
) -> None:
    home, env = directory_home
    with configured_daemon(home, sim_config(sim)) as daemon:
        env["QUOTAD_CONFIG"] = str(daemon.config_path)
        plain = quotad("chat", "--cache", "bypass", "hi", env=env)
        streamed = quotad("chat", "--stream", "--cache", "bypass", "hi", env=env)
        assert plain.returncode == streamed.returncode == 0
        assert FOOTER.search(plain.stderr), plain.stderr
        assert FOOTER.search(streamed.stderr), streamed.stderr

        lines = quotad("chat", "--stream", "--json", "hi", env=env).stdout.splitlines()
        objects = [json.loads(line) for line in lines]  # every line is JSON
        assert objects[-1]["target"] == "sim/gpt-4o-mini"
        assert "".join(o.get("delta", "") for o in objects[:-1]) == objects[-1]["content"]

        for stream in ((), ("--stream",)):
            args = ("chat", "-m", "nope", *stream, "--json", "hi")
            failed = quotad(*args, env=env)
            assert failed.returncode == 1
            error = json.loads(failed.stdout.splitlines()[-1])["error"]
            assert error["code"] == "unknown_model"
            assert "nope" in error["message"]
    gone = quotad("--socket", str(home / "none.sock"), "status", "--json", env=env)
    assert gone.returncode == 3
    assert json.loads(gone.stdout)["error"]["code"] == "daemon_unavailable"


# --------------------------------------------------------------------------- 5: logs


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_debug_logs_one_line_per_request_without_prompt_or_key(
    log_format: str, directory_home: UserHome
) -> None:
    home, _ = directory_home
    secret = "sk-operator-test-" + "k" * 24
    key_file = home / "key"
    key_file.write_text(secret)
    key_file.chmod(0o600)
    prompt = "the prompt text that must never reach the log"
    with SimProcess(api_key=secret, latency_ms=1) as keyed:
        text = sim_config(
            keyed,
            daemon=f'log_level = "debug"\nlog_format = "{log_format}"',
            provider_extra=f'api_key_file = "{key_file}"',
        )
        with configured_daemon(home, text) as daemon:
            with Client(socket=daemon.socket_path, app="logged") as client:
                reply = client.chat("default", [{"role": "user", "content": prompt}], max_tokens=4)
            daemon.stop()
            log = daemon.log()
    assert prompt not in log
    assert secret not in log
    lines = [line for line in log.splitlines() if reply.request_id in line]
    assert len(lines) == 1, log
    if log_format == "json":
        entry = json.loads(lines[0])
        assert entry["level"] == "debug"
        fields = entry["request"]
        assert fields["id"] == reply.request_id
        assert (fields["app"], fields["target"], fields["status"]) == ("logged", reply.target, "ok")
        assert fields["prompt_tokens"] == reply.usage.prompt_tokens
        assert fields["cost_usd"] == pytest.approx(reply.cost_usd)
        assert {"wait_s", "latency_s", "completion_tokens"} <= set(fields)
    else:
        assert (
            f"request {reply.request_id} app=logged target=sim/gpt-4o-mini status=ok "
            f"tokens={reply.usage.prompt_tokens}+{reply.usage.completion_tokens} cost=$"
        ) in lines[0]
        assert " wait=" in lines[0]
        assert " latency=" in lines[0]


def test_log_format_is_a_validated_config_key(directory_home: UserHome) -> None:
    home, env = directory_home
    bad = home / "bad.toml"
    bad.write_text('[daemon]\nlog_format = "xml"\n')
    result = quotad("check-config", str(bad), env=env)
    assert result.returncode == 2
    assert "daemon.log_format: invalid enum value 'xml'" in result.stderr
