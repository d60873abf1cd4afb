"""The config parser against hostile trees and text: DESIGN's examples together (every section,
from a real file), with values anywhere inside replaced by odd ones (wrong types, extremes, NaN,
huge and nested values, lone strings where tables stand) or taken out, and the file's bytes
mutated. Whatever the tree or the text, the config either loads or is refused with a
:class:`ConfigError` naming problems: no other exception reaches ``quotad serve``, ``reload``
or ``check-config`` (nor out of the warnings it prints of a config that loads)."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotad.daemon.config import (
    Config,
    ConfigError,
    configured_socket,
    load_config,
    parse_config,
)
from quotad.daemon.hints import config_hints
from tests.unit.test_design_examples import (
    DESIGN_4_CONFIG,
    DESIGN_10_CONFIG,
    DESIGN_11_CONFIG,
    DESIGN_12_CONFIG,
    GROQ_PROVIDER,
)

EVERY_SECTION = DESIGN_4_CONFIG + GROQ_PROVIDER + DESIGN_10_CONFIG + DESIGN_11_CONFIG
EVERY_SECTION += DESIGN_12_CONFIG
VALID_TREE = tomli.loads(EVERY_SECTION)
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**63, -(2**63), 10**30, 0.0, -0.0, 1e-300, 1e300, math.inf,
    -math.inf, math.nan, "", "x" * 10_000, "\x00", "é", "../../etc/passwd", "unix:///tmp/x",
    "redis://", "fast", "openai/gpt-4o-mini", [], [1, "a", None], [[[[]]]], {}, {"a": {"b": {}}},
    {"requests": -5, "window_s": 0}, [{"requests": 1e308, "window_s": math.nan}],
]  # fmt: skip


def _slots(tree: Any) -> list[tuple[Any, Any]]:
    """Every place in a TOML tree that holds a value: (its container, its key)."""
    found: list[tuple[Any, Any]] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.append((tree, key))
            found.extend(_slots(value))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.append((tree, index))
            found.extend(_slots(value))
    return found


def mutated(rng: random.Random) -> dict[str, Any]:
    tree = copy.deepcopy(VALID_TREE)
    for _ in range(rng.randint(1, 4)):
        container, key = rng.choice(_slots(tree))
        if isinstance(container, dict) and rng.random() < 0.2:
            del container[key]
        elif isinstance(container, dict) and rng.random() < 0.1:
            # a copy: a later mutation may reach inside it, and ODD_VALUES must not change
            container[rng.choice(["x", "rpm", "limits", "kind", "targets"])] = copy.deepcopy(
                rng.choice(ODD_VALUES)
            )
        else:
            container[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    return tree


def test_the_valid_tree_loads() -> None:
    assert isinstance(parse_config(VALID_TREE), Config)


def test_a_file_that_is_not_utf8_is_refused_saying_where(config_path: Path) -> None:
    """Found by the mutated bytes below: load_config let UnicodeDecodeError out, a traceback
    from ``quotad serve``, ``check-config`` and a reload instead of the config's error."""
    config_path.write_bytes(b'[daemon]\nsocket = "\x80"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(config_path)
    assert refused.value.problems == ["not valid TOML: not UTF-8 at byte 19: invalid start byte"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("x = " + "[" * 100_000 + "]" * 100_000, "not valid TOML: TOML inline arrays/tables"),
        ("x = " + "{a=" * 5000 + "1" + "}" * 5000, "not valid TOML: TOML inline arrays/tables"),
        ("a" + ".a" * 100_000 + " = 1", "not valid TOML: TOML key has more than"),
        ("a" + ".a" * 990 + " = 1", "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested deeper than 16"),
        ("[daemon]\nsocket = " + "[" * 300 + "]" * 300, "daemon.socket[0][0][0]"),
    ],
    ids=["100k-arrays", "5k-tables", "100k-key-parts", "990-key-parts", "300-arrays"],
)
def test_a_config_nested_past_any_real_one_is_refused_not_a_crash(
    config_path: Path, text: str, said: str
) -> None:
    """tomli raises RecursionError past 400 levels of inline tables or 1,000 key parts, and a
    key of 990 parts, which it reads, ran the conversion out of stack: both left
    load_config as a traceback (and a reload that never ended, as a file not UTF-8 did)."""
    config_path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(config_path)
    assert refused.value.problems[0].startswith(said), refused.value.problems
    try:  # reads daemon.socket only: a name, or the config's error, never another exception
        assert isinstance(configured_socket(config_path), str)
    except ConfigError as error:
        assert error.problems  # noqa: PT017 (either outcome is right; neither may crash)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_tree_with_odd_values_anywhere_loads_or_is_refused_by_name(rng: random.Random) -> None:
    try:
        config = parse_config(mutated(rng))
    except ConfigError as error:
        refused = error
    else:
        config_hints(config)  # what check-config, doctor and serve warn of, from it
        return
    assert refused.problems
    assert all(isinstance(problem, str) and problem for problem in refused.problems)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "quotad.toml"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_file_of_mutated_bytes_loads_or_is_refused(config_path: Path, rng: random.Random) -> None:
    data = bytearray(EVERY_SECTION.encode())
    for _ in range(rng.randint(1, 8)):
        where = rng.randrange(len(data))
        match rng.randrange(4):
            case 0:
                data[where] = rng.randrange(256)
            case 1:
                data.insert(where, rng.choice(b'"[]{}=\n\\#\xff\x00'))
            case 2:
                del data[where : where + rng.randint(1, 40)]
            case _:
                data[where:where] = data[rng.randrange(len(data)) :][: rng.randint(1, 200)]
    config_path.write_bytes(bytes(data))
    try:
        load_config(config_path)
    except ConfigError as error:
        refused = error
    else:
        return
    assert refused.problems
