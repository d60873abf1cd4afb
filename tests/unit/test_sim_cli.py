"""``quotad sim``'s command line: each option lands in the :class:`SimSettings` field it names."""

from __future__ import annotations

import dataclasses

import pytest

from quotad.daemon.cli import build_parser, sim_settings
from quotad.daemon.sim import SimSettings

OPTIONS: list[tuple[list[str], str, object]] = [
    (["--host", "127.0.0.2"], "host", "127.0.0.2"),
    (["--port", "8123"], "port", 8123),
    (["--rpm", "7"], "rpm", 7),
    (["--tpm", "900"], "tpm", 900),
    (["--window", "5"], "window_s", 5.0),
    (["--latency-ms", "3"], "latency_ms", 3.0),
    (["--jitter-ms", "2"], "jitter_ms", 2.0),
    (["--fail-rate", "0.1"], "fail_rate", 0.1),
    (["--hang-rate", "0.2"], "hang_rate", 0.2),
    (["--reset-rate", "0.3"], "reset_rate", 0.3),
    (["--break-stream-rate", "0.4"], "break_stream_rate", 0.4),
    (["--chunk-delay-ms", "6"], "chunk_delay_ms", 6.0),
    (["--api-key", "sk-test"], "api_key", "sk-test"),
    (["--log", "/tmp/sim.jsonl"], "log_path", "/tmp/sim.jsonl"),
    (["--log-bodies"], "log_bodies", True),
    (["--seed", "11"], "seed", 11),
    (["--count-tokens", "bytes"], "count_tokens", "bytes"),
    (["--report-usage", "none"], "report_usage", "none"),
]
"""Each option with a value other than its default, the field it sets, and what it sets it to."""


def settings_of(argv: list[str]) -> SimSettings:
    return sim_settings(build_parser().parse_args(["sim", *argv]))


def test_no_option_is_the_default_settings() -> None:
    assert settings_of([]) == SimSettings()


def test_every_field_has_an_option() -> None:
    assert sorted(field for _, field, _ in OPTIONS) == sorted(
        field.name for field in dataclasses.fields(SimSettings)
    )


def test_every_option_reaches_its_field() -> None:
    settings = settings_of([word for option, _, _ in OPTIONS for word in option])
    assert {field: getattr(settings, field) for _, field, _ in OPTIONS} == {
        field: value for _, field, value in OPTIONS
    }


@pytest.mark.parametrize("argv", [["--fail-rate", "1.5"], ["--window", "0"]])
def test_out_of_range_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        settings_of(argv)
