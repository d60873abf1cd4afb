"""The audit trail of operator actions (table ``audit``): who did what to which thing, when.

Key creation and revocation are recorded here; reloads and target enable/disable/reset are
recorded through the same :meth:`Audit.record`. ``detail`` is a small JSON object.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from quotad.daemon.clock import Clock
from quotad.daemon.store.db import Database

_DETAIL_ENCODER: Final = msgspec.json.Encoder()


class Audit:
    """Appends operator actions to the ``audit`` table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self.clock = clock

    async def record(
        self,
        action: str,
        target: str,
        caller_uid: int | None,
        caller_pid: int | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Commit one audit row: ``action`` (``key_create``, ``target_disable``…) on
        ``target`` by the peer ``caller_uid``/``caller_pid``."""
        await self._db.write(
            [
                (
                    "INSERT INTO audit (time, action, target, caller_uid, caller_pid, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        self.clock.time(),
                        action,
                        target,
                        caller_uid,
                        caller_pid,
                        _DETAIL_ENCODER.encode(detail or {}).decode(),
                    ),
                )
            ]
        )
