"""A real ``quotad serve`` process on a temp socket and state directory, for integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 30.0
"""How long a daemon may take to answer on its socket: a fleet test starts three at once, beside
another test on the other pytest-xdist worker."""


def run_quotad(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``quotad ARGS`` as a user would run it, in this environment plus ``env``; what it
    printed and its exit code (not checked)."""
    return subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class DaemonProcess:
    """``quotad serve --config CONFIG`` in a subprocess, with its own temp dir.

    The config text may use ``{state_dir}`` and ``{socket}``; the socket is ``$DIR/q.sock``.
    """

    def __init__(
        self,
        config_text: str,
        *,
        directory: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        launcher: tuple[str, ...] = (sys.executable,),
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
        self.socket_path = self.directory / "q.sock"
        self.state_dir = self.directory / "state"
        self.config_path = self.directory / "quotad.toml"
        self.config_path.write_text(
            config_text.format(state_dir=self.state_dir, socket=self.socket_path)
        )
        self.log_path = self.directory / "daemon.log"
        self.env = {**os.environ, "QUOTAD_SOCKET": str(self.socket_path), **(env or {})}
        self.extra_args = extra_args
        self.launcher = launcher
        """What runs ``-m quotad.daemon.cli serve …``: the interpreter, or a wrapper that
        execs it (socket activation tests)."""
        self.pass_fds = pass_fds
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the daemon process; do not wait for it."""
        command = [
            *self.launcher, "-m", "quotad.daemon.cli", "serve",
            "--config", str(self.config_path), *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, pass_fds=self.pass_fds
            )
        return self.process

    def start(self) -> DaemonProcess:
        """Start the daemon and wait until its socket answers."""
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"quotad exited with {self.process.returncode}:\n{self.log()}")
            if socket_answers(self.socket_path):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"quotad did not start within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the daemon wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait for a clean exit; the exit code."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> DaemonProcess:
        try:
            return self.start()
        except BaseException:  # __exit__ will not run: clean up here (the process is dead)
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            if self._own_directory:
                shutil.rmtree(self.directory, ignore_errors=True)


def daemon_config(
    *tables: str, daemon: str = "", http: str = 'listen = ""', cache: str = ""
) -> str:
    """A config text for :class:`DaemonProcess`: ``[daemon]`` with the state directory and the
    lines in ``daemon``, ``[http]`` with the lines in ``http`` (by default no front door),
    ``[cache]`` with the lines in ``cache`` if any (``'mode = "off"'`` for none), then
    ``tables`` (providers, apps...) in order. As in every config text DaemonProcess takes,
    ``{{`` and ``}}`` in them stand for TOML's braces."""
    head = ["[daemon]", 'state_dir = "{state_dir}"', daemon, "[http]", http]
    if cache:
        head += ["[cache]", cache]
    return "".join(f"{line}\n" for line in head if line) + "".join(tables)


def app_budget_config(app: str, daily_usd: float, target: str, usd_per_million: float) -> str:
    """``[apps.APP]`` with a daily budget, and ``target`` priced ``usd_per_million`` per
    million tokens, input and output alike."""
    return (
        f"[apps.{app}]\ndaily_usd = {daily_usd}\n"
        f'[prices."{target}"]\ninput = {usd_per_million}\noutput = {usd_per_million}\n'
    )


def sim_provider_config(name: str, base_url: str, kind: str = "openai", extra: str = "") -> str:
    """A ``[providers.NAME]`` table pointing at a sim."""
    return f'[providers.{name}]\nkind = "{kind}"\nbase_url = "{base_url}"\n{extra}\n'


TWO_SIM_TARGETS = ["sim/gpt-4o-mini", "claude/claude-3-5-haiku-latest"]
"""The targets of model group ``fast`` in :func:`two_sims_config`, in order."""


def two_sims_config(
    openai_url: str,
    anthropic_url: str,
    *,
    daemon: str = "",
    http: str = 'listen = ""',
    sim: str = "",
    extra: str = "",
) -> str:
    """A daemon over two sims: provider ``sim`` (OpenAI, more lines of its table in ``sim``)
    and ``claude`` (Anthropic), both behind model group ``fast`` (:data:`TWO_SIM_TARGETS`);
    ``daemon`` and ``http``, the lines of those tables besides the state directory; ``extra``,
    more tables at the end."""
    targets = ", ".join(f'"{target}"' for target in TWO_SIM_TARGETS)
    return daemon_config(
        sim_provider_config("sim", openai_url, extra=sim),
        sim_provider_config("claude", anthropic_url, kind="anthropic"),
        f"[models.fast]\ntargets = [{targets}]\n",
        extra,
        daemon=daemon,
        http=http,
    )
