"""HTTP front door keys: created once (the plaintext is shown to the operator and never
stored), kept as sha256 hashes in the ``keys`` table, revoked by id.

A key is ``qk-`` followed by 43 URL-safe characters (32 random bytes). Every live key's hash
is held in memory, so :meth:`Keys.app_for_key` answers a request with one hash and one dict
lookup, no SQL; :meth:`Keys.create` and :meth:`Keys.revoke` update memory once their row is
committed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Final

from quotad.daemon.clock import Clock
from quotad.daemon.store.db import Database

KEY_PREFIX: Final = "qk-"
SHOWN_PREFIX_CHARS: Final = 10
"""How much of a key ``quotad keys list`` shows (``qk-`` and 7 more characters)."""
SHOWN_ODD_ROWS: Final = 10
"""How many rowids of rows that are no key the warning at load names."""

log = logging.getLogger("quotad.store")


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
        """Read every key's record from ``quotad.db``; a row that is no key's
        (:func:`_key_row`) is skipped, with one warning naming the rows: that key lets
        nothing in."""
        rows = await self._db.read(
            "SELECT rowid, id, app, hash, prefix, created, revoked FROM keys ORDER BY created"
        )
        odd: list[int] = []
        for rowid, key_id, app, hashed, prefix, created, revoked in rows:
            if not _key_row(key_id, app, hashed, prefix, created, revoked):
                odd.append(rowid)
                continue
            self._records[key_id] = KeyRecord(key_id, app, created, revoked, prefix)
            self._hashes[key_id] = hashed
            if revoked is None:
                self._apps[hashed] = app
        if odd:
            shown = ", ".join(map(str, odd[:SHOWN_ODD_ROWS]))
            log.warning(
                "%s: %d row(s) of table keys are no key (a text, bytes or nothing where a "
                "name or a time is): skipped, their keys let nothing in; rowid %s%s: mend "
                "them, or delete them with `sqlite3 %s 'DELETE FROM keys WHERE rowid IN (…)'`",
                self._db.path,
                len(odd),
                shown,
                " …" if len(odd) > SHOWN_ODD_ROWS else "",
                self._db.path,
            )

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


def _key_row(
    key_id: object, app: object, hashed: object, prefix: object, created: object, revoked: object
) -> bool:
    """Whether a ``keys`` row's columns are a key's. ``quotad.db`` is the daemon's to write,
    but SQLite keeps any value in any column: in one damaged or edited by hand, a text where
    a time is made ``quotad keys list`` fail (the client could not show it), and bytes
    where the app is let requests in under an app of bytes."""
    names = (key_id, app, hashed, prefix)
    return (
        all(isinstance(name, str) for name in names)
        and bool(key_id and app and hashed)
        and isinstance(created, int | float)
        and math.isfinite(created)
        and (revoked is None or (isinstance(revoked, int | float) and math.isfinite(revoked)))
    )
