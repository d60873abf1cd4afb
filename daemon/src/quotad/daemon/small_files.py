"""Reading the files an operator names: the config, provider key files, the Redis password
file, a cache warm file. Each is read up to a bound, so that a path to ``/dev/zero`` or to a
huge file is an error, not all the memory there is; and a FIFO is opened without waiting for a
writer, so that one no process writes reads as empty instead of holding ``quotad serve`` (or a
reload) for ever.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final

MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024
"""The largest config file (one of 10,000 apps is about 400 KB)."""
MAX_SECRET_BYTES: Final = 64 * 1024
"""The largest key or password file (keys are well under a kilobyte)."""
MAX_WARM_FILE_BYTES: Final = 1024 * 1024 * 1024
"""The largest file ``quotad cache warm`` reads (it holds the file in memory)."""
READ_BYTES: Final = 1024 * 1024
"""The most asked of one read: ``os.read`` allocates what it is asked for before it reads, so
asking for a whole bound (a GiB for a warm file) at once failed under a memory limit."""


class FileTooLarge(ValueError):
    """A file holds more than its bound."""


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the file at ``path``; :class:`FileTooLarge` past ``limit`` bytes, OSError
    when it cannot be opened or read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)  # a pipe with a writer: wait for it
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, min(limit + 1 - size, READ_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > limit:
        raise FileTooLarge(f"larger than {limit:,} bytes")
    return b"".join(chunks)
