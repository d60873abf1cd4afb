"""Configs of many entries (100,000 apps fit in the 4 MiB a config may hold): loading one costs
work in proportion to its entries, and refusing one reports a bounded list of problems."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.support.config_files import loaded, problems

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


def test_a_name_longer_than_any_request_can_carry_is_refused_and_shown_short(
    tmp_path: Path,
) -> None:
    """An app name of 3 MB was taken, and carried whole in every status, metrics page and log
    line: three of them made every ``quotad status`` too large for a frame."""
    long_name = "n" * 3_000_000
    found = problems(
        tmp_path,
        PROVIDER
        + f'[apps."{long_name}"]\nrpm = 5\n'
        + f'[models.g]\ntargets = ["p/{"m" * 300}", "p/{"m" * 256}"]\n',
    )
    shown = "n" * 64 + "… (3,000,000 characters)"
    assert found == [
        f'apps."{shown}": a name is at most 256 characters, the most a request can name (this '
        "one has 3,000,000)",
        "models.g.targets[0]: a name is at most 256 characters, the most a request can name "
        "(this one has 300)",
    ]
