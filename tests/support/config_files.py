"""Configs loaded from text as a user writes them: :func:`loaded` writes the text to a
``quotad.toml`` and loads it, :func:`problems` returns what loading it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotad.daemon.config import Config, ConfigError, load_config


def loaded(tmp_path: Path, text: str) -> Config:
    """The config :func:`load_config` makes of a file holding ``text``."""
    path = tmp_path / "quotad.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems :func:`load_config` reports for a file holding ``text``."""
    path = tmp_path / "quotad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.source == str(path)
    return raised.value.problems
