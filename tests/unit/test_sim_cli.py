"""``quotad sim``'s command line: each option lands in the :class:`SimSettings` field it names."""

from __future__ import annotations

import dataclasses

import pytest

from quotad.daemon.cli import build_parser, sim_settings
from quotad.daemon.sim import SimSettings

EVERY_OPTION = [
    *("--host", "127.0.0.2", "--port", "8123", "--rpm", "7", "--tpm", "900"),
    *("--window", "5", "--latency-ms", "3", "--jitter-ms", "2", "--fail-rate", "0.1"),
    *("--hang-rate", "0.2", "--reset-rate", "0.3", "--break-stream-rate", "0.4"),
    *("--chunk-delay-ms", "6", "--api-key", "sk-test", "--log", "/tmp/sim.jsonl"),
    *("--log-bodies", "--seed", "11", "--count-tokens", "bytes"),
]


def settings_of(argv: list[str]) -> SimSettings:
    return sim_settings(build_parser().parse_args(["sim", *argv]))


def test_no_option_is_the_default_settings() -> None:
    assert settings_of([]) == SimSettings()


def test_every_option_reaches_its_field() -> None:
    settings = settings_of(EVERY_OPTION)
    assert settings == SimSettings(
        host="127.0.0.2",
        port=8123,
        rpm=7,
        tpm=900,
        window_s=5.0,
        latency_ms=3.0,
        jitter_ms=2.0,
        fail_rate=0.1,
        hang_rate=0.2,
        reset_rate=0.3,
        break_stream_rate=0.4,
        chunk_delay_ms=6.0,
        api_key="sk-test",
        log_path="/tmp/sim.jsonl",
        log_bodies=True,
        seed=11,
        count_tokens="bytes",
    )
    defaults = SimSettings()
    unchanged = [
        field.name
        for field in dataclasses.fields(SimSettings)
        if getattr(settings, field.name) == getattr(defaults, field.name)
    ]
    assert unchanged == [], f"options that do not reach their field: {unchanged}"


@pytest.mark.parametrize("argv", [["--fail-rate", "1.5"], ["--window", "0"]])
def test_out_of_range_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        settings_of(argv)
