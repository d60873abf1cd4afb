"""SQLite store: database, cache, ledger."""
