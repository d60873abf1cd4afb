"""Runs a module (``quotad.daemon.cli``) under a lowered RLIMIT_NOFILE and on the event loop
asked for, for tests that exhaust descriptors (a launcher for :class:`~tests.support.daemon.
DaemonProcess`)::

    python tests/support/limited_daemon.py NOFILE uvloop|asyncio -m quotad.daemon.cli serve ...

``asyncio`` makes ``anyio.run`` ignore ``use_uvloop``, so the daemon runs on asyncio's own
loop; ``uvloop`` leaves it as it is (the daemon asks for uvloop)."""

from __future__ import annotations

import resource
import runpy
import sys
from typing import Any

import anyio


def main() -> None:
    nofile, loop, flag, module, *rest = sys.argv[1:]
    assert flag == "-m", sys.argv
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), int(nofile)))
    if loop == "asyncio":
        run = anyio.run

        def run_on_asyncio(func: Any, *args: Any, **options: Any) -> Any:
            options["backend_options"] = {"use_uvloop": False}
            return run(func, *args, **options)

        anyio.run = run_on_asyncio  # type: ignore[assignment]
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
