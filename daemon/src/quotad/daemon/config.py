"""The TOML config (DESIGN §4): load and validate a file, where the file is found, the built-in
default; the one module the rest of quotad imports the config from.

:func:`load_config` reads a file and returns a :class:`Config` or raises :class:`ConfigError`
listing *every* problem found, each naming its key path
(``providers.openai.rpm: expected int, got str``). With no file anywhere, :func:`default_config`
builds one from the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, GROQ_API_KEY and an Ollama
answering on 127.0.0.1:11434).

The Structs a file is converted into, one per table, live in
:mod:`quotad.daemon.config_sections`; the checks that need several keys at once, in
:mod:`quotad.daemon.config_checks`. This module converts key by key, collecting msgspec's
errors, then runs those checks, and re-exports both modules' public names.

The file is TOML 1.1, read by tomli (Python 3.11's tomllib reads 1.0 only): an inline table
may span lines, as DESIGN §12's guardrails example does.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import tomli

from quotad.daemon.config_checks import (
    cluster_problems,
    cross_field_problems,
    format_path,
    redis_url_problems,
)
from quotad.daemon.config_sections import (
    DEFAULT_HTTP_LISTEN,
    ENTITY_KINDS,
    GUARDRAIL_ACTIONS,
    MAX_COUNT,
    MAX_PRICE,
    MAX_RETENTION_DAYS,
    MAX_SIZE,
    AppConfig,
    AppGuardrailsConfig,
    BreakerConfig,
    BudgetsConfig,
    CacheConfig,
    ClusterConfig,
    Config,
    Count,
    DaemonConfig,
    EntityKind,
    Fraction,
    GatesConfig,
    GroupConfig,
    GuardrailAction,
    GuardrailsConfig,
    HttpConfig,
    LimitConfig,
    ModelConfig,
    NonNegative,
    Positive,
    Price,
    PriceConfig,
    Priority,
    ProviderConfig,
    RateLimits,
    RetryConfig,
    Section,
    SemanticConfig,
    Size,
    Strategy,
)
from quotad.daemon.small_files import MAX_CONFIG_BYTES, FileTooLarge, read_small_file
from quotad.protocol.paths import SOCKET_ENV, client_socket_candidates, display_path

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "EMPTY_FILE_PROBLEM",
    "ENTITY_KINDS",
    "GUARDRAIL_ACTIONS",
    "MAX_CONFIG_DEPTH",
    "MAX_COUNT",
    "MAX_PRICE",
    "MAX_REPORTED_PROBLEMS",
    "MAX_REPORTED_PROBLEM_CHARS",
    "MAX_RETENTION_DAYS",
    "MAX_SIZE",
    "OLLAMA_ADDRESS",
    "AppConfig",
    "AppGuardrailsConfig",
    "BreakerConfig",
    "BudgetsConfig",
    "CacheConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Count",
    "DaemonConfig",
    "EntityKind",
    "Fraction",
    "GatesConfig",
    "GroupConfig",
    "GuardrailAction",
    "GuardrailsConfig",
    "HttpConfig",
    "LimitConfig",
    "ModelConfig",
    "NonNegative",
    "Positive",
    "Price",
    "PriceConfig",
    "Priority",
    "ProviderConfig",
    "RateLimits",
    "RetryConfig",
    "SemanticConfig",
    "Size",
    "Strategy",
    "client_sockets",
    "config_file",
    "config_path_candidates",
    "configured_socket",
    "default_config",
    "find_and_load_config",
    "format_path",
    "load_config",
    "parse_config",
    "redis_url_problems",
    "state_dir",
]

S = TypeVar("S", bound="Section")
OLLAMA_ADDRESS: Final = ("127.0.0.1", 11434)


MAX_REPORTED_PROBLEMS: Final = 100
"""The most problems a rejected reload reports (its log lines, its reply to ``quotad reload``);
``quotad check-config`` prints them all."""
MAX_REPORTED_PROBLEM_CHARS: Final = 1000
"""The most characters of one problem a rejected reload reports (a key or a value quoted in it
may be megabytes long)."""


class ConfigError(Exception):
    """A config has problems; ``problems`` lists each as ``key.path: what is wrong``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the config:\n{lines}")

    def reported(self) -> list[str]:
        """The problems as a rejected reload reports them: the first
        :data:`MAX_REPORTED_PROBLEMS`, each cut at :data:`MAX_REPORTED_PROBLEM_CHARS`
        characters, then a line saying how many more there are. A config of 300,000 problems
        (a 4 MiB file can hold them) logged 24 MB at each reload, and its rejection was 11.6 MiB,
        past the wire protocol's frame: ``quotad reload`` saw none of it."""
        shown = [
            problem
            if len(problem) <= MAX_REPORTED_PROBLEM_CHARS
            else f"{problem[:MAX_REPORTED_PROBLEM_CHARS]}… ({len(problem):,} characters)"
            for problem in self.problems[:MAX_REPORTED_PROBLEMS]
        ]
        if len(self.problems) > MAX_REPORTED_PROBLEMS:
            more = len(self.problems) - MAX_REPORTED_PROBLEMS
            shown.append(f"… and {more:,} more (quotad check-config {self.source} lists them all)")
        return shown


# --------------------------------------------------------------------------- validation

_MSGSPEC_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MAX_PROBLEMS: Final = 100


def _split_error(error: msgspec.ValidationError) -> tuple[list[str | int], str]:
    """(key path, message) from a msgspec validation error."""
    match = _MSGSPEC_ERROR.match(str(error))
    assert match is not None
    what = match["what"].replace("`", "").replace(" | null", "")
    what = what[:1].lower() + what[1:]
    path: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", match["path"] or ""):
        path.append(name if name else int(index))
    unknown = re.match(r"object contains unknown field (.*)$", what)
    if unknown:
        path.append(unknown[1])
        what = "unknown key"
    return path, what


def _delete(tree: Any, path: list[str | int]) -> bool:
    """Remove the value at ``path`` from a TOML tree; False when it is not there."""
    node = tree
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = path[-1] if path else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        del node[last]
        return True
    return False


def _table_of_sections(annotation: Any) -> type[Section] | None:
    """The section type T when ``annotation`` is ``dict[str, T]``."""
    if typing.get_origin(annotation) is dict:
        value_type = typing.get_args(annotation)[1]
        if isinstance(value_type, type) and issubclass(value_type, Section):
            return value_type
    return None


@functools.cache
def _tables_of(section: type[Section]) -> tuple[tuple[str, str, type[Section]], ...]:
    """The fields of ``section`` that are tables of sections: (name, key in the file, type of
    an entry). Worked out once per section: msgspec's ``fields()`` evaluates every annotation
    anew at each call (0.4 ms), and was called for every entry of every table: a config of
    100,000 apps took 40 s to load."""
    return tuple(
        (field.name, field.encode_name, entry_type)
        for field in msgspec.structs.fields(section)
        if (entry_type := _table_of_sections(field.type)) is not None
    )


def _convert_collecting(
    raw: Any, section: type[S], where: list[str | int], problems: list[str]
) -> S | None:
    """Convert ``raw`` to ``section``, noting every problem with its full key path.

    Tables of sections (``providers``, ``models``…) are converted entry by entry, so that
    a problem names the entry's key; on each error the bad key is dropped and conversion is
    tried again, so that one run reports every problem, not only the first.
    """
    if not isinstance(raw, dict):
        problems.append(f"{format_path(where)}: expected a table, got {type(raw).__name__}")
        return None
    tree = dict(raw)
    tables: dict[str, dict[str, Any]] = {}
    for name, key_in_file, entry_type in _tables_of(section):
        if key_in_file not in tree:
            continue
        value = tree.pop(key_in_file)
        if not isinstance(value, dict):
            problems.append(f"{format_path([*where, key_in_file])}: expected a table")
            continue
        converted: dict[str, Any] = {}
        for key, entry in value.items():
            path = [*where, key_in_file, key]
            result = _convert_collecting(entry, entry_type, path, problems)
            if result is not None:  # a bad entry is left out; its problems are noted
                converted[key] = result
        tables[name] = converted
    tree = copy.deepcopy(tree)  # a private copy we may prune, TOML values (dates…) kept as is
    dropped: list[list[str | int]] = []
    for path, value in _infinite_numbers(tree):  # msgspec takes inf for a float > 0
        problems.append(f"{format_path([*where, *path])}: expected a finite number, got {value}")
        _delete(tree, path)
        dropped.append(path)
    while len(problems) < _MAX_PROBLEMS:
        try:
            result = msgspec.convert(tree, section, strict=True)
        except msgspec.ValidationError as error:
            path, what = _split_error(error)
            missing = re.fullmatch(r"object missing required field (.*)", what)
            if missing is None:
                problems.append(f"{format_path([*where, *path])}: {what}")
                if _delete(tree, path):
                    dropped.append(path)
                    continue
            elif [*path, missing[1]] not in dropped:  # else its own problem is noted already
                problems.append(f"{format_path([*where, *path])}: {what}")
            return None
        for name, value in tables.items():
            setattr(result, name, value)
        return result
    return None


MAX_CONFIG_DEPTH: Final = 16
"""How deep a config's tables and arrays may nest (a real one: ``providers.X.models."m"``, or
a limit in an array, 5 levels); deeper, it is refused before it is walked (a key of 990 dotted
parts, which tomli reads, ran the conversion out of stack)."""


def _deeper_than(tree: Mapping[str, Any], limit: int) -> list[str | int] | None:
    """The path of a value nested deeper than ``limit`` in ``tree``, else None (iterative)."""
    stack: list[tuple[Any, list[str | int]]] = [(tree, [])]
    while stack:
        value, path = stack.pop()
        if len(path) > limit:
            return path[: limit + 1]
        if isinstance(value, Mapping):
            stack.extend((item, [*path, str(key)]) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, [*path, index]) for index, item in enumerate(value))
    return None


def _infinite_numbers(tree: Mapping[str, Any]) -> list[tuple[list[str | int], float]]:
    """Where ``inf`` and ``-inf`` stand in ``tree``, with them (TOML spells them; no key means
    one: a size, price or timeout of inf crashed the daemon as it started or stopped)."""
    found: list[tuple[list[str | int], float]] = []
    stack: list[tuple[Any, list[str | int]]] = [(tree, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and math.isinf(value):
            found.append((path, value))
        elif isinstance(value, Mapping):
            stack.extend((item, [*path, str(key)]) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, [*path, index]) for index, item in enumerate(value))
    return sorted(found, key=lambda place: format_path(place[0]))


def parse_config(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    """Validate a TOML tree; raise :class:`ConfigError` naming every problem."""
    problems: list[str] = []
    deep = _deeper_than(raw, MAX_CONFIG_DEPTH)
    if deep is not None:
        raise ConfigError(source, [f"{format_path(deep)}: nested deeper than {MAX_CONFIG_DEPTH}"])
    tree = dict(raw)
    if "source" in tree:  # a field of Config, but set here, not read from the file
        del tree["source"]
        problems.append(f"{format_path(['source'])}: unknown key")
    config = _convert_collecting(tree, Config, [], problems)
    if config is not None:
        providers = raw.get("providers")
        declared = set(providers) if isinstance(providers, dict) else set()
        problems += cross_field_problems(config, declared)
        problems += cluster_problems(config.cluster)
    if problems or config is None:
        raise ConfigError(source, problems)
    config.source = source
    return config


EMPTY_FILE_PROBLEM: Final = (
    "the file sets nothing (it is empty, or holds only comments: a file being written? a FIFO "
    "nothing was written to?); a reload keeps the running config rather than drop every provider"
)


def load_config(path: str | os.PathLike[str], *, empty_ok: bool = True) -> Config:
    """Read and validate the TOML file at ``path``; ``empty_ok`` False: a file that sets
    nothing is an error (a reload: see :data:`EMPTY_FILE_PROBLEM`)."""
    tree = _read_toml(path)
    if not tree and not empty_ok:
        raise ConfigError(display_path(path), [EMPTY_FILE_PROBLEM])
    return parse_config(tree, display_path(path))


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML tree of the file at ``path``; a :class:`ConfigError` for a file that cannot be
    read, is larger than :data:`MAX_CONFIG_BYTES`, is not UTF-8, is not TOML, or nests past
    what tomli walks (it raises RecursionError past 400 levels of inline tables or 1,000 parts
    of a key)."""
    source = display_path(path)
    try:
        return tomli.loads(read_small_file(path, MAX_CONFIG_BYTES, bounded_wait=True).decode())
    except OSError as error:
        raise ConfigError(source, [f"cannot read the file: {error.strerror or error}"]) from None
    except FileTooLarge as error:
        raise ConfigError(source, [f"cannot read the file: {error}"]) from None
    except UnicodeDecodeError as error:
        where = f"byte {error.start}: {error.reason}"
        raise ConfigError(source, [f"not valid TOML: not UTF-8 at {where}"]) from None
    except (tomli.TOMLDecodeError, RecursionError) as error:
        raise ConfigError(source, [f"not valid TOML: {error}"]) from None


# --------------------------------------------------------------------------- where things are


def config_path_candidates(explicit: str | None = None) -> list[Path]:
    """Where the config is looked for, in order (DESIGN §3)."""
    if explicit:
        return [Path(explicit)]
    candidates = []
    if env := os.environ.get("QUOTAD_CONFIG"):
        return [Path(env)]
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidates.append(Path(xdg) / "quotad" / "quotad.toml")
    candidates.append(Path("/etc/quotad/quotad.toml"))
    return candidates


def config_file(explicit: str | None = None) -> Path | None:
    """The config file serve reads: ``--config`` or ``$QUOTAD_CONFIG`` (even when missing:
    loading it then says so), else the first of the user's and the system's that exists;
    None for the built-in default."""
    candidates = config_path_candidates(explicit)
    named = explicit or os.environ.get("QUOTAD_CONFIG")
    return next((path for path in candidates if named or path.exists()), None)


def find_and_load_config(explicit: str | None = None, *, empty_ok: bool = True) -> Config:
    """The config from ``--config``, ``$QUOTAD_CONFIG``, the user's, the system's, or the
    built-in default. An explicitly named file that is missing is an error; so is one that
    sets nothing unless ``empty_ok`` (:func:`load_config`)."""
    path = config_file(explicit)
    return load_config(path, empty_ok=empty_ok) if path is not None else default_config()


def client_sockets(
    explicit_socket: str | None = None, explicit_config: str | None = None
) -> tuple[list[Path], str]:
    """Where a client command looks for the daemon, and a warning ("" when none).

    ``--socket`` alone when given; else ``$QUOTAD_SOCKET`` when set (the daemon listens there
    whatever its config says), then the user and system sockets; else ``daemon.socket`` of the
    config serve would read (:func:`config_file`), then the user and system sockets. A config
    that cannot be read is warned of and the default sockets are tried.
    """
    if explicit_socket or os.environ.get(SOCKET_ENV):
        return client_socket_candidates(explicit_socket), ""
    candidates = client_socket_candidates()
    path = config_file(explicit_config)
    if path is None:
        return candidates, ""
    try:
        configured = configured_socket(path)
    except ConfigError as error:
        return candidates, (
            f"cannot read daemon.socket from {error.source} ({'; '.join(error.problems)}); "
            "trying the default sockets"
        )
    if not configured:
        return candidates, ""
    first = Path(configured)
    return [first, *(candidate for candidate in candidates if candidate != first)], ""


def configured_socket(path: Path) -> str:
    """``daemon.socket`` of the TOML file at ``path`` ("" when unset); only that key is read,
    so a config with problems elsewhere still names its socket."""
    raw = _read_toml(path)
    daemon = raw.get("daemon", {})
    value = daemon.get("socket", "") if isinstance(daemon, dict) else ""
    if not isinstance(value, str):
        raise ConfigError(
            display_path(path), [f"daemon.socket: expected a path, got {type(value).__name__}"]
        )
    return value


def state_dir(config: Config) -> Path:
    """Where ``quotad.db`` lives: ``daemon.state_dir``, ``$STATE_DIRECTORY`` (its first path,
    which must be absolute, as systemd's ``StateDirectory=`` sets it: else a
    :class:`ConfigError`), or ``$XDG_STATE_HOME/quotad``."""
    if config.daemon.state_dir:
        return Path(config.daemon.state_dir)
    if env := os.environ.get("STATE_DIRECTORY"):
        first = env.split(":")[0]
        if not first.startswith("/"):  # ":" put quotad.db in the working directory
            raise ConfigError(
                "$STATE_DIRECTORY",
                [
                    f"STATE_DIRECTORY={env!r}: expected an absolute path first (systemd's "
                    "StateDirectory= sets one); unset it, or set daemon.state_dir"
                ],
            )
        return Path(first)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "quotad"


# --------------------------------------------------------------------------- built-in default

_DETECTED: Final = (
    # env var, provider name, kind, base_url, default models group members
    ("OPENAI_API_KEY", "openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini"),
    (
        "ANTHROPIC_API_KEY",
        "anthropic",
        "anthropic",
        "https://api.anthropic.com/v1",
        "claude-3-5-haiku-latest",
    ),
    ("GROQ_API_KEY", "groq", "openai", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant"),
)


def _ollama_answers(timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(OLLAMA_ADDRESS, timeout=timeout_s):
            return True
    except OSError:
        return False


def default_config(environ: Mapping[str, str] | None = None, probe_ollama: bool = True) -> Config:
    """The config used when no file exists: one provider per API key found in the
    environment (or as a systemd credential ``$CREDENTIALS_DIRECTORY/<provider>``), Ollama if
    it answers locally, and a ``default`` group over all of them."""
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    providers: dict[str, Any] = {}
    targets: list[str] = []
    for variable, name, kind, base_url, model in _DETECTED:
        if env.get(variable) or (credentials and (Path(credentials) / name).is_file()):
            providers[name] = {"kind": kind, "base_url": base_url, "api_key_env": variable}
            targets.append(f"{name}/{model}")
    if probe_ollama and _ollama_answers():
        providers["ollama"] = {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1"}
        targets.append("ollama/llama3.2")
    raw: dict[str, Any] = {"providers": providers}
    if targets:
        raw["models"] = {"default": {"targets": targets, "strategy": "failover"}}
    return parse_config(raw, "built-in default")
