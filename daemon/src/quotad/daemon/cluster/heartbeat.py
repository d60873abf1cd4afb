"""What a heartbeat (``heartbeat.lua``) answers, checked: the server's time, the fleet's
epoch and its re-sync window, and the hosts seen with the load each reported
(:class:`HostSeen`). Pure parsing: :class:`~.link.Link` sends the heartbeat and acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec


@dataclass(frozen=True, slots=True)
class HostSeen:
    """A host of the fleet with a recent heartbeat."""

    name: str
    seen_at: float
    """Server time (Unix seconds) of its last heartbeat."""
    load: dict[str, Any]


MAX_LOAD_BYTES: Final = 2048
"""The largest load a host writes beside its name; a larger one read back is no load."""
MAX_EPOCH_ID_CHARS: Final = 64
"""The longest epoch id taken (a host writes 16 hex digits): the link keeps the id and sends it
with every borrow and settle, so a longer one in Redis is a malformed reply, not a cost."""
HEARTBEAT_MALFORMED: Final = (TypeError, ValueError, IndexError, KeyError)
"""What :func:`parse_heartbeat` raises on a reply of the wrong shape."""


def parse_heartbeat(value: Any) -> tuple[int, tuple[str, int, int], tuple[HostSeen, ...]]:
    """(now µs, (epoch id, created µs, resync_until µs), hosts seen) from a heartbeat reply,
    checked: one of :data:`HEARTBEAT_MALFORMED` when the reply has not the shape it must
    (the link takes that for an error of the link, not of the daemon)."""
    now_us = int(value[0])
    raw_epoch = value[1]
    raw_id = raw_epoch[0]
    if not isinstance(raw_id, bytes | str) or not 0 < len(raw_id) <= MAX_EPOCH_ID_CHARS:
        length = len(raw_id) if isinstance(raw_id, bytes | str) else type(raw_id).__name__
        raise ValueError(f"the fleet's epoch id is {length} long (a host writes 16 characters)")
    epoch = (_text(raw_id), int(raw_epoch[1]), int(raw_epoch[2]))
    hosts = []
    flat = value[2]
    for index in range(0, min(len(flat), 3 * 1000), 3):
        load = _load(flat[index + 2])
        hosts.append(
            HostSeen(
                _text(flat[index])[:128],
                int(flat[index + 1]) / 1e6,
                load,
            )
        )
    return now_us, epoch, tuple(hosts)


def _load(raw: Any) -> dict[str, Any]:
    """A host's load as written beside its name; whatever else stands there (anyone who can
    write the fleet's Redis may put anything: too long, not JSON, nested past msgspec's
    depth) is no load."""
    if not isinstance(raw, bytes | str) or not raw or len(raw) > MAX_LOAD_BYTES:
        return {}
    try:
        load = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return load if isinstance(load, dict) else {}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
