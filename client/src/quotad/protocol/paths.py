"""Where the daemon's socket is (DESIGN §3), shared by the daemon and its clients.

The daemon listens on ``$QUOTAD_SOCKET``, else ``daemon.socket`` from its config, else the user
socket: ``$XDG_RUNTIME_DIR/quotad/quotad.sock``, else ``/tmp/quotad-$UID/quotad.sock``.
Clients try ``$QUOTAD_SOCKET``, then the user socket, then the system socket
``/run/quotad/quotad.sock``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

SYSTEM_SOCKET: Final = Path("/run/quotad/quotad.sock")
SOCKET_ENV: Final = "QUOTAD_SOCKET"


def user_socket_path() -> Path:
    """The per-user socket: under ``$XDG_RUNTIME_DIR`` when set, else ``/tmp/quotad-$UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "quotad" / "quotad.sock"
    return Path(f"/tmp/quotad-{os.getuid()}") / "quotad.sock"


def daemon_socket_path(configured: str = "") -> Path:
    """Where a daemon should listen."""
    if env := os.environ.get(SOCKET_ENV):
        return Path(env)
    if configured:
        return Path(configured)
    return user_socket_path()


def client_socket_candidates(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where a client looks for the daemon, in order."""
    if explicit:
        return [Path(explicit)]
    candidates: list[Path] = []
    if env := os.environ.get(SOCKET_ENV):
        candidates.append(Path(env))
    for path in (user_socket_path(), SYSTEM_SOCKET):
        if path not in candidates:
            candidates.append(path)
    return candidates


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text any frame, log line or database row can carry: bytes of it that are not
    UTF-8 (held by Python as lone surrogates) written as ``\\xNN`` escapes."""
    text = os.fspath(path)
    if text.isascii():
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")
