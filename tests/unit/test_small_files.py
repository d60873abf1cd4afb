"""The files an operator names (the config, a provider's key file, the Redis password file) are
read up to a bound and never wait for a FIFO's writer: ``/dev/zero`` as a key file once took
every byte of memory there was (a MemoryError, or the OOM killer, at ``quotad serve``), and a
FIFO no process writes held ``quotad serve`` for ever."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quotad.daemon import small_files
from quotad.daemon.cluster.settings import resolve_settings
from quotad.daemon.config import ClusterConfig, ConfigError, ProviderConfig, load_config
from quotad.daemon.providers import resolve_api_key
from quotad.daemon.small_files import (
    MAX_CONFIG_BYTES,
    MAX_SECRET_BYTES,
    FileTooLarge,
    read_small_file,
)

FIFO_WAIT_S = 20.0
"""How long a read of a FIFO with no writer may take before the test calls it stuck (it
returns at once; the bound only keeps a regression from hanging the suite)."""


def finished(call: Callable[[], Any], fifo: Path) -> tuple[bool, Any]:
    """Run ``call`` in a thread; (whether it returned or raised within :data:`FIFO_WAIT_S`,
    what it returned or raised). A call still blocked on ``fifo`` is released by opening the
    FIFO for writing, so that no thread outlives the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # the outcome under test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(FIFO_WAIT_S)
    stuck = thread.is_alive()
    if stuck:
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        thread.join(FIFO_WAIT_S)
    return not stuck, outcome[0] if outcome else None


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_file_is_read_whole_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"k" * 100)
    assert read_small_file(path, 100) == b"k" * 100
    with pytest.raises(FileTooLarge, match="larger than 99 bytes"):
        read_small_file(path, 99)
    with pytest.raises(IsADirectoryError):
        read_small_file(tmp_path, 100)


def test_a_small_file_under_a_large_bound_needs_no_more_memory_than_it_holds(
    tmp_path: Path,
) -> None:
    """``os.read`` allocates what it is asked for: asking for the whole bound at once (a GiB
    for a warm file) was a MemoryError under a 512 MiB address-space limit, for a 5-byte file."""
    path = tmp_path / "key"
    path.write_bytes(b"sk-42")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
        "from quotad.daemon.small_files import read_small_file\n"
        "sys.stdout.write(read_small_file(sys.argv[1], 4 << 30).decode())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "sk-42"


def test_an_endless_file_is_too_large_not_read_for_ever() -> None:
    with pytest.raises(FileTooLarge):
        read_small_file("/dev/zero", MAX_SECRET_BYTES)


def test_a_fifo_with_no_writer_reads_as_empty(fifo: Path) -> None:
    done, data = finished(lambda: read_small_file(fifo, 100), fifo)
    assert done
    assert data == b""


def test_a_fifo_with_a_writer_is_read(fifo: Path) -> None:
    """``api_key_file = "/dev/fd/63"`` from a shell's ``<(pass show key)`` still works: with a
    writer there, the read waits for its end."""
    writer = os.open(fifo, os.O_RDWR)  # a writer (and a reader) that never blocks to open
    os.write(writer, b"sk-from-a-pipe\n")

    def close_once_read() -> None:
        while int.from_bytes(fcntl.ioctl(writer, termios.FIONREAD, b"\0" * 4), "little"):
            time.sleep(0.01)  # the reader has opened the FIFO and taken what was written
        os.close(writer)

    closer = threading.Thread(target=close_once_read)
    closer.start()
    done, data = finished(lambda: read_small_file(fifo, 100), fifo)
    closer.join(FIFO_WAIT_S)
    assert done
    assert data == b"sk-from-a-pipe\n"


def test_a_config_that_never_ends_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("/dev/zero")
    expected = f"cannot read the file: larger than {MAX_CONFIG_BYTES:,} bytes"
    assert raised.value.problems == [expected]


def test_a_config_fifo_with_no_writer_does_not_hold_the_daemon(fifo: Path) -> None:
    done, config = finished(lambda: load_config(fifo), fifo)
    assert done
    assert config.providers == {}  # an empty file: an empty config


def test_a_config_or_key_fifo_whose_writer_sends_nothing_is_refused_in_bounded_time(
    fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO whose writer held it open and sent nothing held ``quotad serve``, or a reload
    and every reload after it (SIGHUP and ``quotad reload``), for ever."""
    monkeypatch.setattr(small_files, "WRITER_WAIT_S", 0.2, raising=False)
    silent_writer = os.open(fifo, os.O_RDWR)  # a writer (and a reader) that never blocks
    try:
        done, error = finished(lambda: load_config(fifo), fifo)
        assert done
        assert isinstance(error, ConfigError)
        assert error.problems == ["cannot read the file: its writer sent no more within 0.2 s"]
        provider = ProviderConfig(kind="openai", base_url="http://x", api_key_file=str(fifo))
        done, error = finished(lambda: resolve_api_key("oa", provider, {}), fifo)
        assert done
        assert isinstance(error, ConfigError)
        assert error.problems == [
            f"providers.oa.api_key_file: cannot read {fifo}: its writer sent no more within 0.2 s"
        ]
    finally:
        os.close(silent_writer)


def test_a_key_file_that_never_ends_is_refused_naming_the_provider() -> None:
    provider = ProviderConfig(kind="openai", base_url="http://x", api_key_file="/dev/zero")
    with pytest.raises(ConfigError) as raised:
        resolve_api_key("oa", provider, {})
    assert raised.value.problems == [
        f"providers.oa.api_key_file: cannot read /dev/zero: larger than {MAX_SECRET_BYTES:,} bytes"
    ]


def test_a_key_fifo_with_no_writer_is_an_empty_key_file(fifo: Path) -> None:
    provider = ProviderConfig(kind="openai", base_url="http://x", api_key_file=str(fifo))
    done, error = finished(lambda: resolve_api_key("oa", provider, {}), fifo)
    assert done
    assert isinstance(error, ConfigError)
    assert error.problems == [f"providers.oa.api_key_file: {fifo} is empty"]


def test_a_password_file_that_never_ends_is_refused(fifo: Path) -> None:
    endless = ClusterConfig(redis_url="redis://r", redis_password_file="/dev/zero")
    with pytest.raises(ConfigError, match="is empty or too long"):
        resolve_settings(endless, {})
    silent = ClusterConfig(redis_url="redis://r", redis_password_file=str(fifo))
    done, error = finished(lambda: resolve_settings(silent, {}), fifo)
    assert done
    assert isinstance(error, ConfigError)
