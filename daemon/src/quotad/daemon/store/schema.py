"""The schema of ``quotad.db``: one migration per schema version, applied in order.

Version ``n`` is reached by running ``MIGRATIONS[n - 1]``; the version the file is at lives in
the one-row table ``schema_version``. A migration is only ever appended, never edited, so that
a database made by any earlier quotad upgrades the same way.

Tables:

- ``ledger``: one row per request (hits and failures too), see :mod:`.ledger`;
- ``spend_daily``: the ledger summed per local day, app, model and target, for reports and
  budgets (see :mod:`.spend`); kept by the trigger ``ledger_adds_to_day`` (version 2; made
  again by versions 3 and 5), so in the same transaction as each ledger row whoever inserts
  it (a cache hit's tokens are not billed, so not summed; a row is an error unless its status
  is ``ok`` or, since version 5, ``semantic``);
- ``guardrails_daily``: what the guardrails found (DESIGN §12), per local day, app, model,
  target and ``kind``: an entity kind (``count``: entities of that kind found in requests and
  replies) or ``blocked`` (``count``: requests refused); kept by the trigger
  ``ledger_adds_entities`` (version 4) from the ledger's ``entities`` column (JSON, "" when
  none), which fires only for rows that found something;
- ``cache``: stored answers, see :mod:`.cache`; since version 7 a hit's count and time of use
  are written in ``cache_use`` instead (its ``hits`` and ``last_used`` hold those at the
  store, and older figures of a file from before), which the triggers ``cache_insert_drops_use``
  and ``cache_delete_drops_use`` keep to the entries there;
- ``semantic_questions`` (version 3): for each cached answer the semantic cache may serve, the
  question that earned it (partition, last user turn, vector, vector scheme), see
  :mod:`quotad.daemon.semantic.stored`; the triggers ``cache_delete_drops_question`` and
  ``cache_insert_drops_question`` drop a question with its entry (evicted, expired, cleared,
  replaced), in the statement that drops the entry;
- ``keys``: HTTP front door keys, stored as sha256 hashes, see :mod:`.keys`;
- ``audit``: operator actions, see :mod:`.audit`.
"""

from __future__ import annotations

from typing import Final


def _ledger_adds_to_day(*, errors: str, semantic_hits: bool) -> str:
    """The trigger ``ledger_adds_to_day``: a ledger row added to its day in ``spend_daily``,
    counted in ``errors`` when the SQL expression ``errors`` holds, and in ``semantic_hits``
    (a column since version 3) when it was a semantic hit. One text for every version that
    (re)creates the trigger, so that they differ only in these."""
    column, value, total = (
        (
            ",\n                semantic_hits",
            ",\n                NEW.semantic_similarity IS NOT NULL",
            ",\n                semantic_hits = semantic_hits + excluded.semantic_hits",
        )
        if semantic_hits
        else ("", "", "")
    )
    return f"""CREATE TRIGGER ledger_adds_to_day AFTER INSERT ON ledger BEGIN
            INSERT INTO spend_daily (day, app, model, target, requests, errors, prompt_tokens,
                completion_tokens, cached_tokens, cost_usd, cache_hits, saved_usd, unpriced{column})
            VALUES (NEW.day, NEW.app, NEW.model, NEW.target, 1, {errors},
                CASE WHEN NEW.cached THEN 0 ELSE NEW.prompt_tokens END,
                CASE WHEN NEW.cached THEN 0 ELSE NEW.completion_tokens END,
                CASE WHEN NEW.cached THEN 0 ELSE NEW.cached_tokens END,
                NEW.cost_usd, NEW.cached, NEW.saved_usd, NEW.unpriced{value})
            ON CONFLICT (day, app, model, target) DO UPDATE SET
                requests = requests + 1,
                errors = errors + excluded.errors,
                prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                completion_tokens = completion_tokens + excluded.completion_tokens,
                cached_tokens = cached_tokens + excluded.cached_tokens,
                cost_usd = cost_usd + excluded.cost_usd,
                cache_hits = cache_hits + excluded.cache_hits,
                saved_usd = saved_usd + excluded.saved_usd,
                unpriced = max(unpriced, excluded.unpriced){total};
        END"""


SCHEMA_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: ledger, cache, keys, audit
    (
        """CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            time REAL NOT NULL,
            day TEXT NOT NULL,
            kind TEXT NOT NULL,
            app TEXT NOT NULL,
            user TEXT NOT NULL,
            uid INTEGER,
            pid INTEGER,
            gid INTEGER,
            model TEXT NOT NULL,
            target TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            status TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            saved_usd REAL NOT NULL,
            cached INTEGER NOT NULL,
            unpriced INTEGER NOT NULL,
            wait_s REAL NOT NULL,
            latency_s REAL NOT NULL,
            priority TEXT NOT NULL,
            tags TEXT NOT NULL
        )""",
        "CREATE INDEX ledger_time ON ledger (time)",
        """CREATE TABLE spend_daily (
            day TEXT NOT NULL,
            app TEXT NOT NULL,
            model TEXT NOT NULL,
            target TEXT NOT NULL,
            requests INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            cache_hits INTEGER NOT NULL,
            saved_usd REAL NOT NULL,
            unpriced INTEGER NOT NULL,
            PRIMARY KEY (day, app, model, target)
        ) WITHOUT ROWID""",
        """CREATE TABLE cache (
            key BLOB PRIMARY KEY,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            payload BLOB NOT NULL,
            created REAL NOT NULL,
            last_used REAL NOT NULL,
            hits INTEGER NOT NULL,
            cost_usd REAL NOT NULL
        )""",
        """CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            app TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created REAL NOT NULL,
            revoked REAL
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            caller_uid INTEGER,
            caller_pid INTEGER,
            detail TEXT NOT NULL
        )""",
    ),
    # 2: spend_daily kept by a trigger on each ledger insert (one statement per row, not two)
    (_ledger_adds_to_day(errors="NEW.status != 'ok'", semantic_hits=False),),
    # 3: the semantic cache (DESIGN §11): questions beside their cache entries; a semantic hit
    # marked in the ledger (semantic_similarity, NULL otherwise) and counted per day
    (
        """CREATE TABLE semantic_questions (
            key BLOB PRIMARY KEY,
            partition BLOB NOT NULL,
            text TEXT NOT NULL,
            vector BLOB NOT NULL,
            scheme TEXT NOT NULL
        )""",
        """CREATE TRIGGER cache_delete_drops_question AFTER DELETE ON cache BEGIN
            DELETE FROM semantic_questions WHERE key = OLD.key;
        END""",
        """CREATE TRIGGER cache_insert_drops_question AFTER INSERT ON cache BEGIN
            DELETE FROM semantic_questions WHERE key = NEW.key;
        END""",
        "ALTER TABLE ledger ADD COLUMN semantic_similarity REAL",
        "ALTER TABLE spend_daily ADD COLUMN semantic_hits INTEGER NOT NULL DEFAULT 0",
        "DROP TRIGGER ledger_adds_to_day",
        _ledger_adds_to_day(errors="NEW.status != 'ok'", semantic_hits=True),
    ),
    # 4: guardrails: entities found per ledger row (JSON {"kind": count}), and per day
    (
        "ALTER TABLE ledger ADD COLUMN entities TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE guardrails_daily (
            day TEXT NOT NULL,
            app TEXT NOT NULL,
            model TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (day, app, model, target, kind)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER ledger_adds_entities AFTER INSERT ON ledger
        WHEN NEW.entities != '' OR NEW.status = 'blocked' BEGIN
            INSERT INTO guardrails_daily (day, app, model, target, kind, count)
            SELECT NEW.day, NEW.app, NEW.model, NEW.target, key, value
            FROM json_each(nullif(NEW.entities, '')) WHERE true
            ON CONFLICT (day, app, model, target, kind) DO UPDATE SET
                count = count + excluded.count;
            INSERT INTO guardrails_daily (day, app, model, target, kind, count)
            SELECT NEW.day, NEW.app, NEW.model, NEW.target, 'blocked', 1
            WHERE NEW.status = 'blocked'
            ON CONFLICT (day, app, model, target, kind) DO UPDATE SET count = count + 1;
        END""",
    ),
    # 5: a semantic hit has its own ledger status (DESIGN §11), an answer and not an error
    (
        "DROP TRIGGER ledger_adds_to_day",
        _ledger_adds_to_day(errors="NEW.status NOT IN ('ok', 'semantic')", semantic_hits=True),
        """UPDATE ledger SET status = 'semantic'
        WHERE semantic_similarity IS NOT NULL AND status = 'ok'""",
    ),
    # 6: calls a provider has had for a while, journaled with the ledger row they cost if the
    # daemon dies before their own: charged (status 'interrupted') at the next start
    (
        """CREATE TABLE in_flight (
            request_id TEXT PRIMARY KEY,
            row BLOB NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 7: a hit's count and time of use in a small row of their own: updated in the answer's
    # row, SQLite read the whole answer again (80 ms for 26 MB, at every hit)
    (
        """CREATE TABLE cache_use (
            key BLOB PRIMARY KEY,
            last_used REAL NOT NULL,
            hits INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TRIGGER cache_delete_drops_use AFTER DELETE ON cache BEGIN
            DELETE FROM cache_use WHERE key = OLD.key;
        END""",
        """CREATE TRIGGER cache_insert_drops_use AFTER INSERT ON cache BEGIN
            DELETE FROM cache_use WHERE key = NEW.key;
        END""",
    ),
    # 8: a streamed answer's text stored once, in its chunks (``CachedChat.content_in_chunks``):
    # no table changes, but a quotad of version 7 would serve such an entry's content as None,
    # and it refuses a file of a newer version
    (),
    # 9: a streamed answer's chunks stored as the lengths of their deltas in its content
    # (``CachedChat.delta_lengths``): no table changes, but a quotad of version 8 would replay
    # such an entry as one chunk of its whole content (its chunks' boundaries, and the tool
    # calls they carried, lost), and it refuses a file of a newer version
    (),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The newest schema this quotad knows."""
