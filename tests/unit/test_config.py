"""Config validation (:func:`load_config`, what ``quotad check-config`` runs): each problem once,
named by its key path, with what is really wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotad.daemon.config import Config, ConfigError, load_config

PROVIDER = """
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems :func:`load_config` reports for a file holding ``text``."""
    path = tmp_path / "quotad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.source == str(path)
    return raised.value.problems


def test_a_good_file_loads_and_says_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "quotad.toml"
    path.write_text(PROVIDER + '[models.fast]\ntargets = ["p/m"]\n', encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source == str(path)
    assert config.models["fast"].targets == ["p/m"]


def test_source_is_not_a_key(tmp_path: Path) -> None:
    assert problems(tmp_path, 'source = "elsewhere"\n' + PROVIDER) == ["source: unknown key"]


def test_a_date_where_a_string_is_expected(tmp_path: Path) -> None:
    assert problems(tmp_path, "[daemon]\nsocket = 2024-01-01\n") == [
        "daemon.socket: expected str, got date"
    ]


def test_a_datetime_where_a_number_is_expected(tmp_path: Path) -> None:
    assert problems(tmp_path, "[cache]\nttl_s = 2024-01-01T10:00:00\n") == [
        "cache.ttl_s: expected float, got datetime"
    ]


def test_nan_for_a_positive_number_names_the_constraint(tmp_path: Path) -> None:
    found = problems(tmp_path, "[cache]\nttl_s = nan\n")
    assert found == ["cache.ttl_s: expected float > 0.0"]
    assert "null" not in found[0]


def test_empty_targets_is_one_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, PROVIDER + "[models.fast]\ntargets = []\n") == [
        "models.fast.targets: expected array of length >= 1"
    ]


def test_a_missing_required_key_is_still_reported(tmp_path: Path) -> None:
    assert problems(tmp_path, '[providers.p]\nbase_url = "http://127.0.0.1:9"\n') == [
        "providers.p: object missing required field kind"
    ]


def test_a_group_name_with_a_slash_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, PROVIDER + '[models."p/m"]\ntargets = ["p/m"]\n')
    assert found == ["models.\"p/m\": a group name cannot contain '/'"]


def test_every_problem_at_once(tmp_path: Path) -> None:
    text = 'source = "x"\n' + PROVIDER + 'rpm = "many"\n[models.fast]\ntargets = []\n'
    assert sorted(problems(tmp_path, text)) == [
        "models.fast.targets: expected array of length >= 1",
        "providers.p.rpm: expected int, got str",
        "source: unknown key",
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "expected float > 0.0"),
        ("-1", "expected float > 0.0"),
        ("5000", "expected float <= 4096.0"),
        ('"lots"', "expected float, got str"),
    ],
)
def test_the_bound_on_a_provider_s_answers_is_checked(
    tmp_path: Path, value: str, problem: str
) -> None:
    assert problems(tmp_path, PROVIDER + f"max_response_mb = {value}\n") == [
        f"providers.p.max_response_mb: {problem}"
    ]
    path = tmp_path / "good.toml"
    path.write_text(PROVIDER + "max_response_mb = 0.5\n", encoding="utf-8")
    assert load_config(path).providers["p"].max_response_mb == 0.5
