"""Configs of many entries (100,000 apps fit in the 4 MiB a config may hold): loading one costs
work in proportion to its entries, and refusing one reports a bounded list of problems."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.support.config_files import loaded

PROVIDER = """
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9"
"""


def apps(count: int) -> str:
    return "".join(f"[apps.a{n}]\nrpm = 5\n" for n in range(count))


def test_the_tables_of_a_section_are_worked_out_once_not_per_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msgspec's ``fields()`` evaluates every annotation of a Struct anew at each call (0.4 ms):
    called for every entry of every table, a config of 100,000 apps took 40 s to load."""
    calls = 0
    fields = msgspec.structs.fields

    def counted(section: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
        nonlocal calls
        calls += 1
        return fields(section)

    monkeypatch.setattr(msgspec.structs, "fields", counted)
    loaded(tmp_path, PROVIDER + apps(3))
    loaded(tmp_path, PROVIDER + apps(2_000))
    assert calls < 20  # a few per kind of table, none per app (2,005 before)
    assert len(loaded(tmp_path, PROVIDER + apps(2_000)).apps) == 2_000
