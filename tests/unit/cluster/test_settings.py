"""``[cluster]`` resolved at start: the password from its variable or file (never from the
config), this host's name, and clear errors that never show a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotad.daemon.cluster.settings import resolve_settings
from quotad.daemon.config import ClusterConfig, ConfigError


def test_the_password_comes_from_its_variable_or_its_file(tmp_path: Path) -> None:
    config = ClusterConfig(redis_url="redis://r", redis_password_env="REDIS_PW")
    assert resolve_settings(config, {"REDIS_PW": " s3cret \n"}).password == "s3cret"
    secret = tmp_path / "redis"
    secret.write_text("from-file\n", encoding="utf-8")
    config = ClusterConfig(redis_url="redis://r", redis_password_file=str(secret))
    settings = resolve_settings(config, {})
    assert settings.password == "from-file"
    assert "from-file" not in repr(settings)


def test_a_missing_password_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(ClusterConfig(redis_url="redis://r", redis_password_env="NOPE"), {})
    assert raised.value.problems == [
        "cluster.redis_password_env: the environment variable NOPE is not set"
    ]
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError) as raised:
        resolve_settings(ClusterConfig(redis_url="redis://r", redis_password_file=str(missing)), {})
    assert raised.value.problems[0].startswith(
        f"cluster.redis_password_file: cannot read {missing}"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        resolve_settings(ClusterConfig(redis_url="redis://r", redis_password_file=str(empty)), {})


def test_the_host_defaults_to_the_hostname_fit_for_keys() -> None:
    settings = resolve_settings(ClusterConfig(redis_url="redis://r"), {})
    assert settings.host
    assert all(c.isalnum() or c in "_.-" for c in settings.host)
    assert resolve_settings(ClusterConfig(redis_url="redis://r", host="b1"), {}).host == "b1"
    assert settings.password is None
