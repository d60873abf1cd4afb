"""Proving a process goes to no network: run it under strace with an environment that points
the model hubs' caches at an empty directory, and read back the addresses it tried."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def traced_offline(directory: Path) -> tuple[tuple[str, ...], dict[str, str], Path]:
    """The strace command prefix that logs every connect/sendto/sendmsg of a process and of
    its threads, an environment without the Hugging Face settings whose home and caches are
    ``directory``, and the log's path. Skips the test where strace is not installed."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    log = directory / "trace"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HOME": str(directory), "XDG_CACHE_HOME": str(directory)}
    return (strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(log)), env, log
