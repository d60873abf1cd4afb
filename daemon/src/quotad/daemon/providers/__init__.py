"""Provider wire formats: which one a provider speaks, and where its API key comes from.

One module per wire format (:mod:`.openai`, :mod:`.anthropic`; :mod:`.local` computes
embeddings in the daemon, no wire at all) over the shared HTTP plumbing
(:mod:`.transport`) and the rate-limit header parser (:mod:`.ratelimits`); :mod:`.base` is the
interface the broker sees. :func:`build_provider` picks the wire format by ``kind``;
:func:`resolve_api_key` finds the key (:func:`resolve_api_keys` every provider's: what
``quotad serve`` and a reload refuse a config for, and ``quotad check-config`` warns of).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import httpx

from quotad.daemon.config import Config, ConfigError, ProviderConfig, format_path
from quotad.daemon.providers.anthropic import AnthropicProvider
from quotad.daemon.providers.base import Provider
from quotad.daemon.providers.local import LocalProvider
from quotad.daemon.providers.openai import OpenAIProvider
from quotad.daemon.small_files import MAX_SECRET_BYTES, FileTooLarge, read_small_file

__all__ = ["build_provider", "resolve_api_key", "resolve_api_keys"]


def build_provider(
    name: str,
    config: ProviderConfig,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Provider:
    """The provider for ``[providers.<name>]``, speaking the wire format of ``config.kind``.

    ``transport`` replaces the pooled HTTP transport (tests pass an ``httpx.MockTransport``).
    """
    if config.kind == "anthropic":
        return AnthropicProvider(name, config, api_key, transport=transport)
    if config.kind == "local":
        return LocalProvider(name, config)
    return OpenAIProvider(name, config, api_key, transport=transport)


_NOT_IN_KEYS = re.compile(r"[^\x20-\x7e]")
"""What a key may not hold: it is sent in a header, which carries visible ASCII and spaces
only (a key with a non-ASCII character crashed the daemon at start and on a reload)."""


def _checked_key(where: str, origin: str, secret: str) -> str:
    """``secret`` when a header can carry it, else a :class:`ConfigError` naming ``where`` and
    ``origin`` and the character's code point (never the key)."""
    found = _NOT_IN_KEYS.search(secret)
    if found is not None:
        raise ConfigError(
            "provider keys",
            [
                f"{where}: the key in {origin} holds U+{ord(found[0]):04X} at {found.start()}; "
                "a key is sent in a header and may hold printable ASCII only"
            ],
        )
    return secret


def _read_key(where: str, path: Path) -> str:
    """The stripped contents of a key file (a UTF-8 byte order mark dropped too); ``where``
    names its origin in errors."""
    try:
        data = read_small_file(path, MAX_SECRET_BYTES, bounded_wait=True)
        secret = data.decode("utf-8-sig").strip()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError("provider keys", [f"{where}: cannot read {path}: {reason}"]) from None
    except FileTooLarge as error:
        raise ConfigError("provider keys", [f"{where}: cannot read {path}: {error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError("provider keys", [f"{where}: {path} is not UTF-8 text"]) from None
    if not secret:
        raise ConfigError("provider keys", [f"{where}: {path} is empty"])
    return _checked_key(where, str(path), secret)


def resolve_api_key(
    name: str, config: ProviderConfig, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The API key of provider ``name``, whitespace (and a file's byte order mark) stripped,
    from the first that applies:

    1. ``api_key_file`` (it must exist and not be empty);
    2. the environment variable ``api_key_env``, when set and not empty;
    3. ``$CREDENTIALS_DIRECTORY/<name>``, when that file exists (systemd ``LoadCredential=``).

    None when the provider names no key and no credential exists (a local server without
    auth). A key that is named but cannot be found, or holds a character a header cannot
    carry (only printable ASCII), raises :class:`ConfigError`, naming the provider and the
    file or variable (never the key).
    """
    if config.api_key_file:
        where = format_path(["providers", name, "api_key_file"])
        return _read_key(where, Path(config.api_key_file))
    if config.api_key_env:
        secret = environ.get(config.api_key_env, "").strip()
        if secret:
            where = format_path(["providers", name, "api_key_env"])
            return _checked_key(where, f"${config.api_key_env}", secret)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        credential = Path(credentials) / name
        if credential.is_file():
            return _read_key(f"providers.{name}: credential", credential)
    if config.api_key_env:
        where = format_path(["providers", name, "api_key_env"])
        also = f" (nor is there {Path(credentials) / name})" if credentials else ""
        raise ConfigError(
            "provider keys",
            [f"{where}: the environment variable {config.api_key_env} is not set{also}"],
        )
    return None


def resolve_api_keys(config: Config) -> dict[str, str | None]:
    """Every provider's API key; a :class:`ConfigError` lists every provider whose key is
    missing or unusable (never a key)."""
    keys: dict[str, str | None] = {}
    problems: list[str] = []
    for name, provider_config in config.providers.items():
        try:
            keys[name] = resolve_api_key(name, provider_config)
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError(f"{config.source} (provider keys)", problems)
    return keys
