"""HTTP front door keys: created once (the plaintext is shown to the operator and never
stored), kept as sha256 hashes in the ``keys`` table, revoked by id.

A key is ``qk-`` followed by 43 URL-safe characters (32 random bytes). Every live key's hash
is held in memory, so :meth:`Keys.app_for_key` answers a request with one hash and one dict
lookup, no SQL; :meth:`Keys.create` and :meth:`Keys.revoke` update memory once their row is
committed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Final

from quotad.daemon.clock import Clock
from quotad.daemon.store.db import Database

KEY_PREFIX: Final = "qk-"
SHOWN_PREFIX_CHARS: Final = 10
"""How much of a key ``quotad keys list`` shows (``qk-`` and 7 more characters)."""


def key_hash(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as listed: never the key itself, only its first characters."""

    id: str
    app: str
    created: float
    revoked: float | None
    prefix: str

    def as_dict(self) -> dict[str, Any]:
        """For ``Ok.data`` and ``--json``."""
        return asdict(self)


class Keys:
    """The HTTP front door's keys."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self.clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._hashes: dict[str, str] = {}  # key id → hash
        self._apps: dict[str, str] = {}  # hash of a live key → app

    async def load(self) -> None:
        """Read every key's record from ``quotad.db``."""
        rows = await self._db.read(
            "SELECT id, app, hash, prefix, created, revoked FROM keys ORDER BY created"
        )
        for key_id, app, hashed, prefix, created, revoked in rows:
            self._records[key_id] = KeyRecord(key_id, app, created, revoked, prefix)
            self._hashes[key_id] = hashed
            if revoked is None:
                self._apps[hashed] = app

    async def create(self, app: str) -> tuple[str, KeyRecord]:
        """A new key for ``app``: (the key, shown once; its record)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "k" + secrets.token_hex(4)
        while key_id in self._records:
            key_id = "k" + secrets.token_hex(4)
        hashed = key_hash(key)
        record = KeyRecord(key_id, app, self.clock.time(), None, key[:SHOWN_PREFIX_CHARS])
        await self._db.write(
            [
                (
                    "INSERT INTO keys (id, app, hash, prefix, created, revoked) "
                    "VALUES (?, ?, ?, ?, ?, NULL)",
                    (key_id, app, hashed, record.prefix, record.created),
                )
            ]
        )
        self._records[key_id] = record
        self._hashes[key_id] = hashed
        self._apps[hashed] = app
        return key, record

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""
        return list(self._records.values())

    async def revoke(self, key_id: str) -> bool:
        """Revoke key ``key_id``; False when no live key has that id."""
        record = self._records.get(key_id)
        if record is None or record.revoked is not None:
            return False
        revoked = self.clock.time()
        await self._db.write([("UPDATE keys SET revoked = ? WHERE id = ?", (revoked, key_id))])
        self._records[key_id] = KeyRecord(
            key_id, record.app, record.created, revoked, record.prefix
        )
        self._apps.pop(self._hashes[key_id], None)
        return True

    def app_for_key(self, key: str) -> str | None:
        """The app a live key names; None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX):
            return None
        return self._apps.get(key_hash(key))
