"""A launcher for ``bench/soak.py``'s daemon that lets the benchmark look inside it: run as
``python bench/_soak_probe.py PROBE_SOCKET -m quotad.daemon.cli serve …``, it starts a thread
answering on the Unix socket ``PROBE_SOCKET``, then runs the module as ``python -m`` would.

Each connection sends one word and reads one JSON line back:

- ``tasks``: the asyncio tasks not done on the daemon's event loop (counted on the loop, through
  ``call_soon_threadsafe``), the process's Python threads, the blocks the interpreter has
  allocated (``sys.getallocatedblocks``: every live object, strings too, unlike the collector's
  list), and what glibc's malloc holds in use and free (``mallinfo2``);
- ``objects``: the same, plus the objects the garbage collector tracks, in all and by type name
  (the 60 most numerous). It walks every object, holding the interpreter for a fraction of a
  second, so the benchmark asks for it only now and then;
- ``tracemalloc``: the first request starts tracing allocations; each later one answers the 25
  places (tracebacks of 8 frames) holding the most memory allocated since and still alive.

Not a benchmark itself (the smoke test skips ``bench/_*.py``); nothing of it is in the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import gc
import json
import os
import runpy
import socket
import sys
import threading
import tracemalloc
from typing import Any

TOP_TYPES = 60
TOP_LINES = 25
TRACE_FRAMES = 8


class Probe:
    """Answers the benchmark's questions from a thread of the daemon's process."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.snapshot: tracemalloc.Snapshot | None = None

    def serve(self) -> None:
        while True:
            connection, _ = self.listener.accept()
            with connection:
                word = connection.recv(64).decode().strip()
                try:
                    answer = self.answer(word)
                except Exception as error:  # the benchmark reports what went wrong
                    answer = {"error": repr(error)}
                connection.sendall(json.dumps(answer).encode() + b"\n")

    def answer(self, word: str) -> dict[str, Any]:
        if word == "tracemalloc":
            return self.allocations()
        counts: dict[str, Any] = {
            "tasks": self.tasks(),
            "threads": threading.active_count(),
            "python_blocks": sys.getallocatedblocks(),
            **malloc_figures(),
        }
        if word == "objects":
            objects = gc.get_objects()
            by_type = collections.Counter(type(item).__qualname__ for item in objects)
            counts["objects"] = len(objects)
            counts["types"] = dict(by_type.most_common(TOP_TYPES))
            del objects
        return counts

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        if self.loop is None or self.loop.is_closed():
            self.loop = next(
                (
                    item
                    for item in gc.get_objects()
                    if isinstance(item, asyncio.AbstractEventLoop) and item.is_running()
                ),
                None,
            )
        return self.loop

    def tasks(self) -> int:
        """Tasks not done on the daemon's loop (-1 before it runs)."""
        loop = self.running_loop()
        if loop is None:
            return -1
        result: concurrent.futures.Future[int] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: result.set_result(len(asyncio.all_tasks(loop))))
        return result.result(timeout=10)

    def allocations(self) -> dict[str, Any]:
        """The first call starts tracing; later ones, the lines holding most of what was
        allocated since and is still alive (where growth is), by where it was allocated."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)
            return {"grown": []}
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        lines = []
        for stat in snapshot.statistics("traceback")[:TOP_LINES]:
            where = " <- ".join(
                f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
                for frame in reversed(stat.traceback)
            )
            lines.append(f"{stat.size / 1024:.1f} KiB in {stat.count}: {where}")
        return {"grown": lines, "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20}


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def malloc_figures() -> dict[str, float]:
    """What C code holds from malloc (SQLite, libuv, the interpreter's large objects) in MiB:
    in use, and free but kept by the allocator (fragmentation); empty off glibc."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {
        "malloc_in_use_mb": (info.uordblks + info.hblkhd) / 2**20,
        "malloc_free_mb": info.fordblks / 2**20,
    }


def main() -> None:
    path, dash_m, module, *args = sys.argv[1:]
    if dash_m != "-m":
        raise SystemExit("usage: _soak_probe.py PROBE_SOCKET -m MODULE ARGS...")
    probe = Probe(path)
    threading.Thread(target=probe.serve, name="soak-probe", daemon=True).start()
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
