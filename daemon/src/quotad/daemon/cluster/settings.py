"""What a daemon needs to join a fleet, resolved from ``[cluster]``: the password read from
its environment variable or file (never from the config file), this host's name, and the
timings derived from the configured ones. Imports nothing of the Redis client."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from quotad.daemon.config import ClusterConfig, ConfigError
from quotad.daemon.small_files import FileTooLarge, read_small_file

MAX_PASSWORD_BYTES: Final = 4096


class ClusterStartError(Exception):
    """The fleet's Redis refuses this host (its credentials): the daemon cannot start (exit
    1). Defined here, away from the Redis client, so the runtime can catch it without
    importing that client when there is no ``[cluster]``."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]`` resolved; ``password`` is kept here only, never logged or shown."""

    redis_url: str
    password: str | None
    key_prefix: str
    host: str
    on_unreachable: Literal["share", "closed"]
    margin: float
    lease_s: float
    timeout_s: float
    heartbeat_s: float
    host_ttl_s: float

    @property
    def resync_s(self) -> float:
        """How long after Redis restarted empty hosts only push their own state back: two
        heartbeats and a call, so every host still running has noticed and pushed."""
        return 2 * self.heartbeat_s + self.timeout_s

    @property
    def connect_timeout_s(self) -> float:
        """How long start-up waits for Redis before serving in degraded mode."""
        return max(2.0, 4 * self.timeout_s)

    def __repr__(self) -> str:  # never the password
        return (
            f"ClusterSettings(redis_url={self.redis_url!r}, host={self.host!r}, "
            f"key_prefix={self.key_prefix!r}, password={'set' if self.password else 'none'})"
        )


def resolve_settings(
    config: ClusterConfig, environ: Mapping[str, str] = os.environ
) -> ClusterSettings:
    """``[cluster]`` with its password and host resolved; a :class:`ConfigError` names a
    password variable that is not set or a file that cannot be read (never the password)."""
    return ClusterSettings(
        redis_url=config.redis_url,
        password=_password(config, environ),
        key_prefix=config.key_prefix,
        host=config.host or _hostname(),
        on_unreachable=config.on_unreachable,
        margin=config.margin,
        lease_s=config.lease_s,
        timeout_s=config.timeout_s,
        heartbeat_s=config.heartbeat_s,
        host_ttl_s=config.host_ttl_s,
    )


def _hostname() -> str:
    """This machine's name, cut to what a key may hold."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in socket.gethostname())
    return name[:128] or "host"


def _password(config: ClusterConfig, environ: Mapping[str, str]) -> str | None:
    if config.redis_password_file:
        where = "cluster.redis_password_file"
        try:
            data = read_small_file(config.redis_password_file, MAX_PASSWORD_BYTES)
        except OSError as error:
            raise ConfigError(
                "cluster", [f"{where}: cannot read {config.redis_password_file}: {error.strerror}"]
            ) from None
        except FileTooLarge:
            data = b""
        secret = data.decode("utf-8", "replace").strip()
        if not secret:
            raise ConfigError(
                "cluster", [f"{where}: {config.redis_password_file} is empty or too long"]
            )
        return secret
    if config.redis_password_env:
        secret = environ.get(config.redis_password_env, "").strip()
        if not secret:
            raise ConfigError(
                "cluster",
                [
                    "cluster.redis_password_env: the environment variable "
                    f"{config.redis_password_env} is not set"
                ],
            )
        return secret
    return None
