"""A real ``quotad sim`` process for tests: :class:`SimProcess` starts it on a loopback port,
drives it (``/sim/control``, ``/sim/stats``), stops, kills and restarts it, and always cleans
up; :func:`read_sim_log` reads its JSONL request log."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
import msgspec

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 10.0
_LISTENING = re.compile(rb"quotad sim listening on http://([^\s]+):(\d+)")


def read_sim_log(path: str | Path) -> list[dict[str, Any]]:
    """The sim's request log: one dict per request, in arrival order."""
    lines = Path(path).read_bytes().splitlines()
    return [msgspec.json.decode(line) for line in lines if line.strip()]


class SimProcess:
    """``quotad sim`` as a subprocess on 127.0.0.1; use as a context manager.

    ``log=True`` makes it log to a temp file (:attr:`log_path`) removed on exit; read it
    with :func:`read_sim_log`, preferably after :meth:`stop` (every line is then written).
    ``log_bodies=True`` (with ``log``): each line holds the request's ``body`` too.
    """

    def __init__(
        self,
        *,
        rpm: int = 0,
        tpm: int = 0,
        window_s: float = 60.0,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        fail_rate: float = 0.0,
        api_key: str = "",
        log: bool = False,
        log_bodies: bool = False,
        port: int = 0,
        seed: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port
        self._temp_dir = tempfile.mkdtemp(prefix="qsim-", dir="/tmp") if log else None
        self.log_path = os.path.join(self._temp_dir, "sim.jsonl") if self._temp_dir else None
        options = {
            "--rpm": rpm,
            "--tpm": tpm,
            "--window": window_s,
            "--latency-ms": latency_ms,
            "--jitter-ms": jitter_ms,
            "--fail-rate": fail_rate,
        }
        self._args = [part for flag, value in options.items() for part in (flag, str(value))]
        if api_key:
            self._args += ["--api-key", api_key]
        if self.log_path:
            self._args += ["--log", self.log_path]
            if log_bodies:
                self._args.append("--log-bodies")
        if seed is not None:
            self._args += ["--seed", str(seed)]
        self._args += list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The root URL (for the Anthropic SDK's base_url)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``…/v1``)."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SimProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the sim (on :attr:`port`, or a free port the first time) and wait until it
        listens."""
        if self.running:
            raise RuntimeError("the sim is already running")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap
        command = [sys.executable, "-m", "quotad.daemon.cli", "sim", "--port", str(self.port)]
        process = self._process = subprocess.Popen(
            [*command, *self._args], stdout=subprocess.PIPE, stderr=self._stderr
        )
        if process.stdout is None:
            self._fail("no stdout pipe")
        line = self._read_first_line(process.stdout)
        match = _LISTENING.match(line)
        if match is None:
            self._fail(f"quotad sim said {line!r}, not where it listens")
        self.port = int(match.group(2))

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not exit; its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL, as a crash would; its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
            process.wait()
        return self._reap()

    def restart(self) -> None:
        """Stop, then start again on the same port (clients reconnect to the same URL)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and remove what it left (the log too)."""
        self.stop()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    # ------------------------------------------------------------------ control

    def control(self, **settings: float | str) -> dict[str, Any]:
        """Change settings live (``latency_ms``, ``fail_rate``, ``rpm``, ``report_usage``, …);
        the new settings."""
        response = httpx.post(
            f"{self.url}/sim/control", json=settings, trust_env=False, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    @contextmanager
    def controlled(self, **settings: float | str) -> Iterator[dict[str, Any]]:
        """Settings changed live (as :meth:`control`) for the block, then put back as they
        were; the block gets the settings in force."""
        before = self.control()
        changed = self.control(**settings)
        try:
            yield changed
        finally:
            self.control(**{name: before[name] for name in settings})

    def stats(self) -> dict[str, Any]:
        """Request counts and the most admitted in any window so far."""
        response = httpx.get(f"{self.url}/sim/stats", trust_env=False, timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # ------------------------------------------------------------------ internals

    def _read_first_line(self, stdout: IO[bytes]) -> bytes:
        fd = stdout.fileno()
        deadline = time.monotonic() + START_TIMEOUT_S
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"quotad sim did not start in {START_TIMEOUT_S:g} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self._fail("quotad sim exited before listening")
                data += chunk
        return data.split(b"\n", 1)[0]

    def _reap(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return process.returncode

    def _fail(self, reason: str) -> NoReturn:
        """Kill the process and raise ``reason`` with the end of its stderr."""
        process, stderr = self._process, self._stderr
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        text = ""
        if stderr is not None:
            stderr.seek(0)
            text = stderr.read()[-2000:].decode(errors="replace").strip()
        code = process.returncode if process is not None else None
        self._reap()
        raise RuntimeError(f"{reason} (exit code {code}){':' if text else ''}\n{text}")
