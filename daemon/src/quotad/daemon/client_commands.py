"""The ``quotad`` subcommands that talk to a running daemon (``status``, ``chat``, ``reload``,
``target``, ``spend``, ``cache``, ``keys``, ``--version``): how they find it, print replies and
errors, and map errors to exit codes (DESIGN §3: 0 ok, 1 failure, 2 usage or config error,
3 daemon not reachable).

The socket is ``--socket``, else ``$QUOTAD_SOCKET``, else ``daemon.socket`` of the config
serve would read (``--config``, ``$QUOTAD_CONFIG``, the user's, the system's), then the user
socket and the system socket (:func:`quotad.daemon.config.client_sockets`). With ``--json``, a
reply is printed as JSON on stdout, and so is an error: ``{"error": {"code", "message",
"retry_after_s", "details"}}``, with the exit code of the error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from quotad.daemon.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

VERSION_TIMEOUT_S = 2.0
DEFAULT_CHAT_MODEL = "default"
DEFAULT_MODEL_HINT = (
    f"quotad: `quotad chat` asks for the group {DEFAULT_CHAT_MODEL!r} unless -m names a group, "
    "a target (provider/model) or a model. With no config file, the built-in config makes "
    f"{DEFAULT_CHAT_MODEL!r} from the providers whose API keys it finds (OPENAI_API_KEY, "
    "ANTHROPIC_API_KEY, GROQ_API_KEY) and a local Ollama; a config file names its own groups "
    f"([models.{DEFAULT_CHAT_MODEL}] targets = [...]). `quotad status` lists the groups."
)


def sockets(args: argparse.Namespace) -> list[Any]:
    """Where this command looks for the daemon (:func:`quotad.daemon.config.client_sockets`);
    a config it cannot read is warned of on stderr."""
    from quotad.daemon.config import client_sockets

    paths, warning = client_sockets(args.socket, getattr(args, "config", None))
    if warning:
        print(f"quotad: warning: {warning}", file=sys.stderr)
    return list(paths)


def _client(args: argparse.Namespace, app: str | None = None, **options: Any) -> Any:
    from quotad.client import Client

    paths = sockets(args)
    client = Client(
        socket=paths[0], app=app or os.environ.get("QUOTAD_APP") or "quotad-cli", **options
    )
    client.sockets = paths  # tried in order, as a client given no socket tries its defaults
    return client


def _with_client(
    args: argparse.Namespace, action: Callable[[Any], int], app: str | None = None
) -> int:
    """Run ``action(client)``, mapping daemon errors to exit codes (with ``--json``, the
    error is printed as JSON on stdout). The client connects as ``app``, else
    ``$QUOTAD_APP``, else ``quotad-cli``."""
    from quotad.client import DaemonUnavailableError, QuotadError

    try:
        with _client(args, app) as client:
            return action(client)
    except QuotadError as error:
        _print_error(args, error)
        return EXIT_UNREACHABLE if isinstance(error, DaemonUnavailableError) else EXIT_FAILURE


def _print_error(args: argparse.Namespace, error: Any) -> None:
    """A daemon's (or the client's) error: ``{"error": {code, message, retry_after_s,
    details}}`` on stdout with ``--json`` (where a ``jq`` pipeline reads), else a line on
    stderr."""
    from quotad.client import DaemonUnavailableError

    if getattr(args, "json", False):
        _print_json(
            {
                "error": {
                    "code": error.code,
                    "message": error.message,
                    "retry_after_s": error.retry_after_s,
                    "details": error.details,
                }
            }
        )
    elif isinstance(error, DaemonUnavailableError):
        print(f"quotad: {error}", file=sys.stderr)
    else:
        print(f"quotad: {error.code}: {error}", file=sys.stderr)
    if error.code == "unknown_model" and getattr(args, "model", None) == DEFAULT_CHAT_MODEL:
        print(DEFAULT_MODEL_HINT, file=sys.stderr)


def _print_json(value: Any) -> None:
    """Print a reply (or part of one) as JSON with every field (:func:`report.plain`)."""
    import msgspec

    from quotad.daemon.report import plain

    print(msgspec.json.encode(plain(value)).decode())


def _read(
    args: argparse.Namespace,
    fetch: Callable[[Any], Any],
    render: Callable[[Any], str],
    as_json: Callable[[Any], Any] = lambda value: value,
) -> int:
    """A read command: print ``fetch(client)`` as JSON (what ``as_json`` makes of it) with
    ``--json``, else ``render`` it."""

    def action(client: Any) -> int:
        value = fetch(client)
        if args.json:
            _print_json(as_json(value))
        else:
            print(render(value))
        return EXIT_OK

    return _with_client(args, action)


def status(args: argparse.Namespace) -> int:
    """``quotad status``: the daemon's state (``--json``: with each window's limit in force)."""
    from quotad.daemon.report import format_status, status_json

    return _read(args, lambda client: client.status(), format_status, status_json)


def reload(args: argparse.Namespace) -> int:
    """``quotad reload``: what SIGHUP does, with its result; exit 1 when rejected. The
    config's path comes from a status asked after: one that fails is warned of, and the
    reload, applied, still exits 0."""
    from quotad.client import BadRequestError, QuotadError

    def action(client: Any) -> int:
        try:
            reply = client.admin("reload")
        except BadRequestError as error:
            problems = error.details.get("problems")
            if not isinstance(problems, list):  # refused for another reason
                raise
            source = str(error.details.get("source", "the config"))
            if args.json:
                _print_json({"applied": False, "source": source, "problems": problems})
                return EXIT_FAILURE
            print(
                f"rejected: {source} has {len(problems)} problem(s); the daemon keeps serving "
                "its previous config",
                file=sys.stderr,
            )
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_FAILURE
        config_path: str | None = None
        try:
            config_path = client.status().config_path
        except QuotadError as error:
            print(
                f"quotad: warning: the reload was applied, but the daemon's status, which "
                f"names the config file, could not be read: {error.message}",
                file=sys.stderr,
            )
        if args.json:
            _print_json({"applied": True, "source": config_path, "message": reply.message})
        else:
            print(f"applied: {reply.message}" + (f" ({config_path})" if config_path else ""))
        return EXIT_OK

    return _with_client(args, action)


def version(args: argparse.Namespace) -> int:
    """``quotad --version``: this command's version, then the daemon's if one answers."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    from quotad.client import DaemonUnavailableError, QuotadError

    try:
        print(f"quotad {installed_version('quotad')}")
    except PackageNotFoundError:
        print("quotad (version unknown: not installed as a package)")
    try:
        with _client(args, timeout=VERSION_TIMEOUT_S, connect_timeout=VERSION_TIMEOUT_S) as client:
            welcome = client.welcome
            status = client.status()
    except DaemonUnavailableError as error:
        tried = "; ".join(f"{t['socket']} ({t['reason']})" for t in error.details.get("tried", []))
        print(f"daemon: no daemon answers (tried {tried or error.message})")
        return EXIT_OK
    except QuotadError as error:
        print(f"daemon: {error.code}: {error}")
        return EXIT_OK
    print(f"daemon {welcome.daemon_version} at {status.socket} (pid {status.pid})")
    return EXIT_OK


def target_list(args: argparse.Namespace) -> int:
    """``quotad target list``."""
    from quotad.daemon.report import format_targets

    return _read(args, lambda client: client.status().targets, format_targets)


def target_action(args: argparse.Namespace) -> int:
    """``quotad target enable|disable|reset NAME``; an unknown target exits 2."""
    from quotad.client import BadRequestError

    def action(client: Any) -> int:
        try:
            reply = client.admin(f"target_{args.action}", args.name)
        except BadRequestError as error:  # no such target: the command line's mistake
            print(f"quotad: {error}", file=sys.stderr)
            return EXIT_USAGE
        print(reply.message)
        return EXIT_OK

    return _with_client(args, action)


def chat(args: argparse.Namespace) -> int:
    """``quotad chat``: the reply on stdout and, plain or streamed, the same footer (target,
    tokens, cost, wait, latency) on stderr; ``--json``: the reply as JSON (streamed: one
    object per line, each chunk then the end)."""
    from quotad.daemon.report import chat_footer

    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    options: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "priority": args.priority,
        "max_wait_s": args.max_wait,
        "cache": args.cache,
    }

    def action(client: Any) -> int:
        if args.stream:
            stream = client.chat_stream(args.model, messages, **options)
            for chunk in stream:
                if args.json:  # one JSON object per line: each chunk, then the end
                    _print_json(chunk)
                else:
                    sys.stdout.write(chunk.delta)
                    sys.stdout.flush()
            reply = stream.end
            if args.json:
                if reply is not None:
                    _print_json(reply)
                return EXIT_OK
            sys.stdout.write("\n")
        else:
            reply = client.chat(args.model, messages, **options)
            if args.json:
                _print_json(reply)
                return EXIT_OK
            print(reply.content or "")
        if reply is not None:
            sys.stdout.flush()
            print(chat_footer(reply), file=sys.stderr)
        return EXIT_OK

    return _with_client(args, action, app=args.app)


def spend(args: argparse.Namespace) -> int:
    """``quotad spend`` as text, JSON or CSV."""
    from quotad.daemon.report import format_spend, spend_csv

    def render(reply: Any) -> str:
        return spend_csv(reply).removesuffix("\n") if args.csv else format_spend(reply)

    return _read(
        args,
        lambda client: client.spend(period=args.period, by=args.by, fleet=args.fleet),
        render,
    )


def cache_stats(args: argparse.Namespace) -> int:
    """``quotad cache stats``."""
    from quotad.daemon.store_report import format_cache

    return _read(args, lambda client: client.status().cache, format_cache)


def cache_clear(args: argparse.Namespace) -> int:
    """``quotad cache clear [--older-than D]``."""

    def action(client: Any) -> int:
        options = {} if args.older_than is None else {"older_than_s": args.older_than}
        print(client.admin("cache_clear", **options).message)
        return EXIT_OK

    return _with_client(args, action)


WARM_BATCH_BYTES = 2 * 1024 * 1024
"""Recorded entries are sent in batches of about this much JSON (well under a frame)."""


def cache_warm(args: argparse.Namespace) -> int:
    """``quotad cache warm FILE.jsonl``: every problem with its line; exit 1 when any."""
    from quotad.daemon.store.warm import read_warm_file

    try:
        batches = read_warm_file(args.file, WARM_BATCH_BYTES)
    except ValueError as error:
        for problem in str(error).splitlines():
            print(f"quotad: {problem}", file=sys.stderr)
        return EXIT_FAILURE

    def action(client: Any) -> int:
        stored = 0
        problems: list[str] = []
        for lines, entries in batches:
            reply = client.admin("cache_warm", entries=entries)
            stored += reply.data["stored"]
            for problem in reply.data["problems"]:
                index, _, what = problem.partition("]: ")
                line = lines[int(index.removeprefix("entries["))]
                problems.append(f"{args.file}:{line}: {what}")
        for problem in problems:
            print(f"quotad: {problem}", file=sys.stderr)
        print(f"stored {stored} cache entries from {args.file}")
        return EXIT_FAILURE if problems else EXIT_OK

    return _with_client(args, action)


def keys_create(args: argparse.Namespace) -> int:
    """``quotad keys create --app A``: the key, shown once."""

    def action(client: Any) -> int:
        reply = client.admin("key_create", app=args.app)
        if args.json:
            _print_json(reply.data)
        else:
            print(reply.data["key"])
            print(
                f"(key {reply.data['id']} for app {args.app!r}; it is shown only now: "
                "keep it somewhere safe)",
                file=sys.stderr,
            )
        return EXIT_OK

    return _with_client(args, action)


def keys_list(args: argparse.Namespace) -> int:
    """``quotad keys list``."""
    from quotad.daemon.store_report import format_keys

    return _read(args, lambda client: client.admin("key_list").data["keys"], format_keys)


def keys_revoke(args: argparse.Namespace) -> int:
    """``quotad keys revoke ID``."""

    def action(client: Any) -> int:
        print(client.admin("key_revoke", args.id).message)
        return EXIT_OK

    return _with_client(args, action)
