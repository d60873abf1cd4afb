"""Reading the files an operator names: the config, provider key files, the Redis password
file, a cache warm file. Each is read up to a bound, so that a path to ``/dev/zero`` or to a
huge file is an error, not all the memory there is; and a FIFO is opened without waiting for a
writer, so that one no process writes reads as empty instead of holding ``quotad serve`` (or a
reload) for ever. The daemon's own files (the config, key files) also wait at most
:data:`WRITER_WAIT_S` for what a FIFO's writer sends.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import select
import time
from collections.abc import Callable
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


WRITER_WAIT_S: Final = 30.0
"""How long, in all, a bounded read (:func:`read_small_file`) waits for what a FIFO's writer
(or a terminal) sends: long enough for ``<(pass show key)``, and past it the file is an error.
A FIFO whose writer held it open and sent nothing held a reload for ever, and every reload
after it: SIGHUP and ``quotad reload`` alike."""


class FileTooLarge(ValueError):
    """A file holds more than its bound."""


def read_small_file(
    path: str | os.PathLike[str], limit: int, *, bounded_wait: bool = False
) -> bytes:
    """The bytes of the file at ``path``; :class:`FileTooLarge` past ``limit`` bytes, OSError
    when it cannot be opened or read. ``bounded_wait``: a :class:`TimeoutError` (an OSError)
    when its writer has not sent all of it within :data:`WRITER_WAIT_S`, rather than wait as
    long as the writer takes (a regular file never waits)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        readable = None  # a pipe with a writer: wait for it, as long as it takes
        if bounded_wait:  # or, reading without blocking, until WRITER_WAIT_S from now
            readable = _readable_within(descriptor, WRITER_WAIT_S)
        else:
            flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
            fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            try:
                chunk = os.read(descriptor, min(limit + 1 - size, READ_BYTES))
            except BlockingIOError:  # a writer, nothing sent yet (a FIFO with none ends)
                if readable is None or not readable():
                    raise TimeoutError(
                        errno.ETIMEDOUT, f"its writer sent no more within {WRITER_WAIT_S:g} s"
                    ) from None
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > limit:
        raise FileTooLarge(f"larger than {limit:,} bytes")
    return b"".join(chunks)


def _readable_within(descriptor: int, wait_s: float) -> Callable[[], bool]:
    """A wait until ``descriptor`` has something to read (or its end) that says whether it
    came before ``wait_s`` from now has passed (poll, not select: a daemon's descriptors pass
    1,024)."""
    deadline = time.monotonic() + wait_s
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)

    def readable() -> bool:
        remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
        return bool(poller.poll(max(0, remaining_ms)))

    return readable
