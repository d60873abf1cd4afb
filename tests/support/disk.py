"""A disk that really fills up: a small tmpfs (mounting needs root; the test is skipped
elsewhere), and a file that takes what space is left."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``path`` (a disk that really fills up), unmounted
    afterwards; the test is skipped where mounting is not allowed (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill_disk(path: Path) -> Path:
    """Write a file in ``path`` until the disk is full; the file."""
    filler = path / "filler"

    def write_until_full(out: BinaryIO) -> None:
        while True:
            out.write(bytes(4096))

    with filler.open("wb", buffering=0) as out, pytest.raises(OSError) as full:
        write_until_full(out)
    assert full.value.errno == errno.ENOSPC
    return filler
