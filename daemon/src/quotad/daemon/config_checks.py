"""The config's problems that one key's type cannot say (DESIGN §4): dangling names
(a group's target naming no provider), keys that contradict each other, URLs a transport
would refuse, header names and values a request cannot carry, guardrail entities and actions,
the ``[cluster]`` table, and what the optional extras a config asks for need; each problem
names its key path (:func:`format_path`).

:func:`cross_field_problems` and :func:`cluster_problems` run on a :class:`Config` that
:func:`quotad.daemon.config.parse_config` has converted key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from quotad.daemon.config_sections import (
    ENTITY_KINDS,
    GUARDRAIL_ACTIONS,
    ClusterConfig,
    Config,
    ProviderConfig,
    RateLimits,
)
from quotad.protocol.messages import MAX_NAME
from quotad.protocol.names import control_character_in

SHOWN_KEY_CHARS: Final = 64
"""The characters of a key longer than :data:`~quotad.protocol.messages.MAX_NAME` that
:func:`format_path` shows (a key of a 4 MiB config may be megabytes long)."""


def format_path(path: list[str | int]) -> str:
    """``["providers", "openai", "rpm"]`` as ``providers.openai.rpm``; a key longer than any
    name (:data:`~quotad.protocol.messages.MAX_NAME`) as its start and its length."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        if len(part) > MAX_NAME:
            part = f"{part[:SHOWN_KEY_CHARS]}… ({len(part):,} characters)"
        if re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            text += f'."{part}"' if text else f'"{part}"'
    return text or "(top level)"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A header name: an RFC 9110 token."""
_NOT_IN_HEADER_VALUES = re.compile(r"[^\t\x20-\x7e]")
"""What a header value may not hold here: anything but visible ASCII, space and tab (CR, LF
and NUL would end the header line; a non-ASCII character cannot be encoded by the transport,
which crashed the daemon at start or on a reload)."""


RESERVED_HEADERS: Final = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Header names a provider's ``headers`` cannot set: quotad sets them for each request, or
they change how the message is framed or the connection used (``Content-Length`` set by
hand made every request a 400)."""


def header_problems(where: list[str | int], headers: Mapping[str, str]) -> list[str]:
    """Problems of the ``headers`` table at ``where``: names that are not RFC 9110 tokens or
    are :data:`RESERVED_HEADERS`, values with a character a header line cannot carry. A value
    is never quoted (it may be a credential): only the character's code point and position
    are."""
    problems = []
    for name, value in headers.items():
        path = format_path([*where, name]) if _HEADER_NAME.fullmatch(name) else None
        if path is None:
            problems.append(
                f"{format_path(where)}: header name {name!r} is not a token (letters, digits "
                "and !#$%&'*+-.^_`|~, at least one)"
            )
            continue
        if name.lower() in RESERVED_HEADERS:
            problems.append(
                f"{path}: quotad sets this header, or it frames the request or its "
                "connection; it cannot be configured"
            )
            continue
        found = _NOT_IN_HEADER_VALUES.search(value)
        if found is not None:
            problems.append(
                f"{path}: the value holds U+{ord(found[0]):04X} at {found.start()}; a header "
                "value may hold visible ASCII, space and tab only"
            )
    return problems


def _limit_problems(where: str, limits: RateLimits) -> list[str]:
    problems = []
    for index, limit in enumerate(limits.limits):
        if (limit.requests is None) == (limit.tokens is None):
            problems.append(f"{where}.limits[{index}]: give exactly one of requests or tokens")
    return problems


def _guardrails_problems(
    where: list[str | int], rules: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Unknown entity kinds and actions in ``input``/``output`` tables, by key path."""
    problems = []
    for direction, actions in rules.items():
        for kind, action in actions.items():
            path = format_path([*where, direction, kind])
            if kind not in ENTITY_KINDS:
                problems.append(f"{path}: unknown entity; known: {', '.join(ENTITY_KINDS)}")
            elif not isinstance(action, str):
                problems.append(f"{path}: expected an action (str), got {type(action).__name__}")
            elif action not in GUARDRAIL_ACTIONS:
                known = ", ".join(GUARDRAIL_ACTIONS)
                problems.append(f"{path}: unknown action {action!r}; known: {known}")
    return problems


def _name_problems(config: Config) -> list[str]:
    """Names of providers, models (groups and a provider's models), apps and priced targets
    that hold a control character (:mod:`quotad.protocol.names`): as a request's, they reach
    log lines, tables and the operator's terminal (TOML escapes can write them). And names
    longer than any a request can carry (:data:`~quotad.protocol.messages.MAX_NAME`; a
    target, its provider's and its model's each): no request could ever ask for one, and each
    was carried whole in every status, metrics page and log line (an app name of 3 MB was
    taken, and three of them made every ``quotad status`` too large for a frame)."""
    tables: list[tuple[list[str], Mapping[str, Any]]] = [
        (["providers"], config.providers),
        (["models"], config.models),
        (["apps"], config.apps),
        (["prices"], config.prices),
    ]
    tables += [(["providers", name, "models"], p.models) for name, p in config.providers.items()]
    named: list[tuple[list[str | int], str]] = [
        ([*where, name], name) for where, table in tables for name in table
    ]
    named += [
        (["models", group_name, "targets", index], target)
        for group_name, group in config.models.items()
        for index, target in enumerate(group.targets)
    ]
    problems = []
    for path, name in named:
        found = control_character_in(name)
        if found is not None:
            problems.append(f"{format_path(path)}: a name cannot hold control characters ({found})")
        parts = name.split("/", 1) if isinstance(path[-1], int) else [name]  # a group's target
        longest = max(map(len, parts))
        if longest > MAX_NAME:
            problems.append(
                f"{format_path(path)}: a name is at most {MAX_NAME} characters, the most a "
                f"request can name (this one has {longest:,})"
            )
    return problems


def _path_problems(config: Config) -> list[str]:
    """Path keys holding a NUL character, which no file name can hold (TOML's ``\\u0000``
    writes one): the daemon crashed binding its socket or making its state directory."""
    paths: list[tuple[list[str | int], str]] = [
        (["daemon", "socket"], config.daemon.socket),
        (["daemon", "state_dir"], config.daemon.state_dir),
        (["cluster", "redis_password_file"], config.cluster.redis_password_file),
    ]
    paths += [
        (["providers", name, "api_key_file"], provider.api_key_file)
        for name, provider in config.providers.items()
    ]
    return [
        f"{format_path(where)}: a path cannot hold a NUL character (at {value.index(chr(0))})"
        for where, value in paths
        if "\0" in value
    ]


def cross_field_problems(config: Config, declared_providers: set[str]) -> list[str]:
    """Problems that need the whole config: dangling names, inconsistent values.

    ``declared_providers`` holds every provider the file names, valid or not, so that a
    provider with problems of its own is not reported again as missing.
    """
    problems = _name_problems(config) + _path_problems(config)
    for name, provider in config.providers.items():
        where = format_path(["providers", name])
        if "/" in name:
            problems.append(f"{where}: a provider name cannot contain '/'")
        if provider.kind == "local":
            problems += _local_provider_problems(where, provider)
        elif not provider.base_url:
            problems.append(f"{where}: object missing required field base_url")
        else:
            problems += [f"{where}.base_url: {what}" for what in _base_url_problems(provider)]
        problems += header_problems(["providers", name, "headers"], provider.headers)
        if provider.api_key_env and provider.api_key_file:
            problems.append(f"{where}: give api_key_env or api_key_file, not both")
        problems += _limit_problems(where, provider)
        breaker = provider.breaker
        if breaker.max_cooldown_s is not None and breaker.max_cooldown_s < breaker.cooldown_s:
            problems.append(
                f"{where}.breaker.max_cooldown_s: must be at least cooldown_s "
                f"({breaker.cooldown_s:g}), got {breaker.max_cooldown_s:g}"
            )
        for model, limits in provider.models.items():
            problems += _limit_problems(format_path(["providers", name, "models", model]), limits)
    guardrails = config.guardrails
    problems += _guardrails_problems(
        ["guardrails"], {"input": guardrails.input, "output": guardrails.output}
    )
    for name, app in config.apps.items():
        problems += _limit_problems(format_path(["apps", name]), app)
        problems += _guardrails_problems(
            ["apps", name, "guardrails"],
            {"input": app.guardrails.input, "output": app.guardrails.output},
        )
    for name, group in config.models.items():
        where = format_path(["models", name])
        if "/" in name:  # it would shadow the target of that name
            problems.append(f"{where}: a group name cannot contain '/'")
        if name in config.providers:
            problems.append(f"{where}: a group cannot have the name of a provider")
        for index, target in enumerate(group.targets):
            provider_name, slash, model = target.partition("/")
            if not slash or not model:
                problems.append(
                    f"{where}.targets[{index}]: expected 'provider/model', got {target!r}"
                )
            elif provider_name not in declared_providers:
                known = ", ".join(sorted(config.providers)) or "none"
                problems.append(
                    f"{where}.targets[{index}]: unknown provider {provider_name!r} "
                    f"(providers: {known})"
                )
        if len(set(group.targets)) != len(group.targets):
            problems.append(f"{where}.targets: a target is listed twice")
        if group.strategy == "weighted" and len(group.weights) != len(group.targets):
            problems.append(
                f"{where}.weights: strategy 'weighted' needs one weight per target "
                f"({len(group.targets)}), got {len(group.weights)}"
            )
    for target in config.prices:
        provider_name, slash, model = target.partition("/")
        if not slash or not model:
            problems.append(f'prices."{target}": expected a "provider/model" key')
    problems += _semantic_problems(config)
    if config.http.listen:
        host, colon, port = config.http.listen.rpartition(":")
        # ASCII digits only: str.isdigit takes U+FF10 (fullwidth 0), which int() reads as 0
        if not colon or not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
            problems.append(f"http.listen: expected 'host:port', got {config.http.listen!r}")
    if config.gates.lease_s > config.gates.max_lease_s:
        problems.append(
            f"gates.lease_s: {config.gates.lease_s:g} is over gates.max_lease_s "
            f"({config.gates.max_lease_s:g})"
        )
    if config.daemon.timezone:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(config.daemon.timezone)
        except (KeyError, ValueError, ImportError):
            problems.append(f"daemon.timezone: unknown time zone {config.daemon.timezone!r}")
    return problems


def _base_url_problems(provider: ProviderConfig) -> list[str]:
    """What keeps a provider's ``base_url`` from being reached, read as its transport reads
    it (httpx): a URL httpx refuses crashed ``quotad serve``; one with no host or a port past
    65535 failed every request."""
    import httpx  # only for a config with providers: `quotad status` need not load it

    if not provider.base_url.startswith(("http://", "https://")):
        return ["expected an http:// or https:// URL"]
    if any(character.isspace() or not character.isprintable() for character in provider.base_url):
        return ["white space or a control character in the URL"]
    try:
        url = httpx.URL(provider.base_url)
    except httpx.InvalidURL as error:
        return [f"not a valid URL ({error})"]
    if not url.host:
        return ["no host in the URL"]
    if url.port is not None and not 0 < url.port < 65536:
        return [f"port {url.port}: expected 1 to 65535"]
    return []


def _local_provider_problems(where: str, provider: ProviderConfig) -> list[str]:
    """A local provider computes in the daemon: keys that name a server make no sense."""
    problems = [
        f"{where}.{key}: not used by kind 'local' (embeddings are computed inside the daemon)"
        for key, value in (
            ("base_url", provider.base_url),
            ("api_key_env", provider.api_key_env),
            ("api_key_file", provider.api_key_file),
            ("headers", provider.headers),
            ("health_check_s", provider.health_check_s),
        )
        if value
    ]
    return problems


def _semantic_problems(config: Config) -> list[str]:
    """What semantic caching and local providers need: the extra installed, the cache on."""
    from quotad.daemon.semantic import INSTALL_HINT, missing_extra

    wanted = []
    if config.cache.semantic.mode != "off":
        wanted.append("cache.semantic.mode")
    wanted += [
        format_path(["providers", name, "kind"])
        for name, provider in config.providers.items()
        if provider.kind == "local"
    ]
    problems = []
    missing = missing_extra() if wanted else []
    for where in wanted:
        if missing:
            problems.append(
                f"{where}: needs the optional extra quotad[semantic], not installed "
                f"(missing: {', '.join(missing)}); install it: {INSTALL_HINT}"
            )
    if config.cache.semantic.mode != "off" and config.cache.mode == "off":
        problems.append(
            "cache.semantic.mode: needs cache.mode = 'on' (semantic hits are answers the "
            "response cache stored)"
        )
    return problems


_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def cluster_problems(cluster: ClusterConfig) -> list[str]:
    """Problems of ``[cluster]``: the URL's scheme and shape (no password in it, ever), the
    password's source, names that go into Redis keys, and the client library being there."""
    problems: list[str] = []
    if cluster.redis_password_env and cluster.redis_password_file:
        problems.append("cluster: give redis_password_env or redis_password_file, not both")
    if not _KEY_PREFIX.fullmatch(cluster.key_prefix):
        problems.append(
            f"cluster.key_prefix: expected 1-64 of A-Z a-z 0-9 _ . -, got {cluster.key_prefix!r}"
        )
    if cluster.host and not _HOST_NAME.fullmatch(cluster.host):
        problems.append(f"cluster.host: expected 1-128 of A-Z a-z 0-9 _ . -, got {cluster.host!r}")
    if not cluster.redis_url:
        return problems
    problems += [
        f"cluster.redis_url: {problem}" for problem in redis_url_problems(cluster.redis_url)
    ]
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        problems.append(
            "cluster.redis_url: the Redis client is not installed: pip install 'quotad[cluster]'"
        )
    return problems


def redis_url_problems(url: str) -> list[str]:
    """What is wrong with ``[cluster] redis_url`` (nothing: an empty list)."""
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return [f"not a valid URL ({error})"]
    if parts.scheme not in ("redis", "rediss", "unix"):
        return [f"expected a redis://, rediss:// or unix:// URL, got {parts.scheme or 'no'} scheme"]
    if parts.password is not None or "password" in parts.query.lower():
        return [
            "a password in the URL: never in the file; use cluster.redis_password_env or "
            "cluster.redis_password_file"
        ]
    problems = []
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        query = {"": []}
    for name in query:
        if name != "db":
            problems.append(f"unsupported URL parameter {name!r} (only db)")
    db = query.get("db", ["0"])[-1]
    path_db = parts.path.strip("/") if parts.scheme != "unix" else ""
    for value in (db, path_db):
        if value and not (value.isdigit() and int(value) < 1 << 16):
            problems.append(f"the database must be a number, got {value!r}")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            problems.append("unix:// needs an absolute socket path (unix:///run/redis.sock)")
    elif not parts.hostname:
        problems.append("no host in the URL")
    elif port == 0:
        problems.append("port 0")
    return problems
