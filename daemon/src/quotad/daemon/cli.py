"""The ``quotad`` command (DESIGN §3): argument parsing, and one small function per
subcommand that runs here (``serve``, ``check-config``, ``doctor``, ``top``, ``sim``,
``demo``); those that talk to a running daemon are in :mod:`quotad.daemon.client_commands`.

Exit codes: 0 ok, 1 failure, 2 usage or config error, 3 daemon not reachable. Every read
command has ``--json``. Heavy modules are imported inside the subcommand that needs them, so
``quotad --help`` and the client-side commands start fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from quotad.daemon import client_commands as calls
from quotad.daemon.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from quotad.daemon.terminal import terminal_output

if TYPE_CHECKING:
    from quotad.daemon.config import Config
    from quotad.daemon.sim import SimSettings

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "build_parser", "main"]

PRIORITY_CHOICES = ("low", "normal", "high", "critical")
TARGET_ACTIONS = {
    "enable": "put a target back in rotation",
    "disable": "take a target out of rotation (requests skip it)",
    "reset": "close a target's breaker and forget its failures",
}


def _number(text: str, fits: Callable[[float], bool], expected: str) -> float:
    """``text`` as a finite number that ``fits``; else an argparse error saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and fits(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, lambda value: value > 0, "a number > 0")


def _non_negative_float(text: str) -> float:
    return _number(text, lambda value: value >= 0, "a number >= 0")


def _fraction(text: str) -> float:
    return _number(text, lambda value: 0 <= value <= 1, "a number from 0 to 1")


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text}"
            )
        return value

    return whole_number


def _text(text: str) -> str:
    """An argparse type: text the daemon can be sent (argv bytes that are not UTF-8 reach
    Python as lone surrogates, which no frame can carry)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {shown}") from None
    return text


MAX_TOKENS_ARGUMENT: Final = 2**31 - 1
"""The largest ``--max-tokens`` (a token count the ledger holds)."""

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _duration(text: str) -> float:
    """Seconds of a duration such as ``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _DURATION_UNITS else (text, "s")
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 12h or 7d, got {text!r}"
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="quotad",
        description="A local sidecar daemon for LLM API access: shared rate gates, cache, "
        "ledger and failover for every process on this machine.",
    )
    parser.add_argument(
        "--socket",
        help="daemon socket (default: $QUOTAD_SOCKET, else daemon.socket of the config, else "
        "the user socket, then /run/quotad/quotad.sock)",
    )
    parser.add_argument(
        "--version",
        action="store_true",
        help="print the version of this command and of the daemon, if one answers",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False)  # what every client command takes
    client.add_argument(
        "--config",
        metavar="PATH",
        help="read the daemon's socket from this config (default: the one serve would read)",
    )
    json_output = argparse.ArgumentParser(add_help=False)  # what a command printing JSON takes
    json_output.add_argument("--json", action="store_true", help="machine-readable output")

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", help="config file (default: $QUOTAD_CONFIG, XDG, /etc)")
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="default: daemon.log_format (text)"
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(handler=_serve)

    status = commands.add_parser(
        "status",
        parents=[client, json_output],
        help="targets, gates, breakers, queues, cache, budgets",
    )
    status.set_defaults(handler=calls.status)

    top = commands.add_parser("top", parents=[client], help="the live TUI (needs quotad-tui)")
    top.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between updates (0.05-3600)",
    )
    top.set_defaults(handler=_top)

    chat = commands.add_parser("chat", parents=[client], help="one chat call through the daemon")
    chat.add_argument("prompt", type=_text, help="the user message")
    chat.add_argument(
        "-m",
        "--model",
        type=_text,
        default=calls.DEFAULT_CHAT_MODEL,
        help=f"group, target or model (default: the group {calls.DEFAULT_CHAT_MODEL!r})",
    )
    chat.add_argument("--stream", action="store_true", help="print the reply as it arrives")
    chat.add_argument("--app", type=_text, help="app name (default: $QUOTAD_APP or 'quotad-cli')")
    chat.add_argument("--priority", choices=PRIORITY_CHOICES)
    chat.add_argument("--max-tokens", type=_whole_number(1, MAX_TOKENS_ARGUMENT))
    chat.add_argument("--max-wait", type=_non_negative_float, help="seconds to wait for a gate")
    chat.add_argument("--cache", choices=("use", "bypass", "refresh", "only"), default="use")
    chat.add_argument("--system", type=_text, help="a system message before the prompt")
    chat.add_argument(
        "--json",
        action="store_true",
        help="print the reply (with --stream: each chunk, then the end) or the error as JSON",
    )
    chat.set_defaults(handler=calls.chat)

    target = commands.add_parser("target", help="operate targets by hand (reset closes a breaker)")
    actions = target.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        parents=[client, json_output],
        help="targets: breaker, health, latency, recent outcomes",
    )
    listing.set_defaults(handler=calls.target_list)
    for action, text in TARGET_ACTIONS.items():
        operate = actions.add_parser(action, parents=[client], help=text)
        operate.add_argument("name", type=_text, help="the target, provider/model")
        operate.set_defaults(handler=calls.target_action)

    spend = commands.add_parser(
        "spend", parents=[client], help="ledger report with budget use and forecast"
    )
    spend.add_argument("--period", choices=("day", "week", "month"), default="day")
    spend.add_argument("--by", choices=("app", "model", "target", "day", "host"), default="app")
    spend.add_argument(
        "--fleet",
        action="store_true",
        help="every host's spend, from the fleet's Redis (needs [cluster] in the daemon's config)",
    )
    spend_format = spend.add_mutually_exclusive_group()
    spend_format.add_argument("--json", action="store_true", help="machine-readable output")
    spend_format.add_argument("--csv", action="store_true", help="one CSV line per row")
    spend.set_defaults(handler=calls.spend)

    cache = commands.add_parser("cache", help="cache figures, clearing, warming")
    cache_actions = cache.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    cache_stats = cache_actions.add_parser(
        "stats", parents=[client, json_output], help="entries, size, hits, hit rate, saved"
    )
    cache_stats.set_defaults(handler=calls.cache_stats)
    cache_clear = cache_actions.add_parser("clear", parents=[client], help="remove entries")
    cache_clear.add_argument(
        "--older-than", type=_duration, metavar="D", help="only entries older than D (30m, 7d…)"
    )
    cache_clear.set_defaults(handler=calls.cache_clear)
    cache_warm = cache_actions.add_parser(
        "warm", parents=[client], help="store recorded requests and answers"
    )
    cache_warm.add_argument("file", help="JSONL: one {request, response} object per line")
    cache_warm.set_defaults(handler=calls.cache_warm)

    keys = commands.add_parser("keys", help="HTTP front door keys (stored hashed)")
    key_actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    key_create = key_actions.add_parser(
        "create", parents=[client, json_output], help="a new key for an app (shown once)"
    )
    key_create.add_argument("--app", type=_text, required=True, help="the app the key names")
    key_create.set_defaults(handler=calls.keys_create)
    key_list = key_actions.add_parser(
        "list", parents=[client, json_output], help="every key (never the keys themselves)"
    )
    key_list.set_defaults(handler=calls.keys_list)
    key_revoke = key_actions.add_parser("revoke", parents=[client], help="revoke a key by id")
    key_revoke.add_argument("id", type=_text, help="the key's id (from quotad keys list)")
    key_revoke.set_defaults(handler=calls.keys_revoke)

    reload = commands.add_parser(
        "reload",
        parents=[client, json_output],
        help="re-read the daemon's config (as SIGHUP); print the result",
    )
    reload.set_defaults(handler=calls.reload)

    check = commands.add_parser("check-config", help="validate a config; print every problem")
    check.add_argument("path", nargs="?", help="config file (default: the one serve would use)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_check_config)

    doctor = commands.add_parser(
        "doctor", parents=[json_output], help="check config, socket, state, providers, clock"
    )
    doctor.add_argument("--config", help="config file (default: the one serve would use)")
    doctor.add_argument("--online", action="store_true", help="also ask each provider's API")
    doctor.set_defaults(handler=_doctor)

    sim = commands.add_parser("sim", help="a simulated provider (OpenAI + Anthropic wire formats)")
    sim.add_argument("--host", type=_text, default="127.0.0.1")
    sim.add_argument(
        "--port", type=_whole_number(0, 65535), default=0, help="0 picks a free port (printed)"
    )
    sim.add_argument(
        "--rpm",
        type=_whole_number(0, 2**63 - 1),
        default=0,
        help="requests per --window (0: no limit)",
    )
    sim.add_argument(
        "--tpm",
        type=_whole_number(0, 2**63 - 1),
        default=0,
        help="tokens per --window (0: no limit)",
    )
    sim.add_argument(
        "--window", dest="window_s", type=_positive_float, default=60.0, help="limit window, s"
    )
    sim.add_argument("--latency-ms", type=_non_negative_float, default=0.0, help="mean latency")
    sim.add_argument("--jitter-ms", type=_non_negative_float, default=0.0, help="latency spread")
    sim.add_argument("--fail-rate", type=_fraction, default=0.0, help="share answered 500")
    sim.add_argument("--hang-rate", type=_fraction, default=0.0, help="share never answered")
    sim.add_argument("--reset-rate", type=_fraction, default=0.0, help="share reset mid-answer")
    sim.add_argument(
        "--break-stream-rate", type=_fraction, default=0.0, help="share of streams cut mid-way"
    )
    sim.add_argument("--chunk-delay-ms", type=_non_negative_float, default=0.0)
    sim.add_argument(
        "--api-key", type=_text, default="", help="require this key (default: accept any)"
    )
    sim.add_argument(
        "--log",
        dest="log_path",
        default="",
        help="append a JSONL line per request (arrival time, status)",
    )
    sim.add_argument(
        "--log-bodies", action="store_true", help="with --log: each line holds the request body"
    )
    sim.add_argument("--seed", type=int, help="seed the failure and latency randomness")
    sim.add_argument(
        "--count-tokens",
        choices=("estimate", "bytes"),
        default="estimate",
        help="prompt tokens: quotad's estimate, or one per UTF-8 byte (a worst-case tokenizer)",
    )
    sim.add_argument(
        "--report-usage",
        choices=("all", "prompt", "none"),
        default="all",
        help="the usage answers report: all, the prompt's alone, or none (as servers that omit it)",
    )
    sim.set_defaults(handler=_sim)

    demo = commands.add_parser("demo", help="sim providers + daemon + load from several apps")
    demo.add_argument("--headless", action="store_true", help="print a text summary, no TUI")
    demo.add_argument(
        "--duration", type=_non_negative_float, default=0.0, help="seconds (0: until ^C)"
    )
    demo.set_defaults(handler=_demo)
    return parser


# --------------------------------------------------------------------------- subcommands


def _serve(args: argparse.Namespace) -> int:
    from quotad.daemon.config import ConfigError, config_file, find_and_load_config
    from quotad.daemon.runtime import run_daemon

    # A reload reads the file read now, not the first one the search finds then (a file
    # moved away, as editors do on save, made it apply the built-in default).
    path = config_file(args.config)
    location = str(path) if path is not None else None
    try:
        config = find_and_load_config(location)
    except ConfigError as error:
        print(f"quotad: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(
        config,
        config_location=location,
        socket_path=args.socket,
        log_format=args.log_format or config.daemon.log_format,
        log_level=args.log_level,
    )


def _check_config(args: argparse.Namespace) -> int:
    import msgspec

    from quotad.daemon.config import ConfigError, find_and_load_config
    from quotad.daemon.hints import config_hints

    try:
        config = find_and_load_config(args.path)
    except ConfigError as error:
        if args.json:
            print(
                msgspec.json.encode(
                    {"ok": False, "source": error.source, "problems": error.problems}
                ).decode()
            )
        else:
            print(f"quotad: {error}", file=sys.stderr)
        return EXIT_USAGE
    warnings = [str(hint) for hint in config_hints(config)]
    warnings += _start_warnings(config)
    summary = {
        "ok": True,
        "source": config.source,
        "providers": sorted(config.providers),
        "groups": sorted(config.models),
        "apps": sorted(config.apps),
        "warnings": warnings,
    }
    if args.json:
        print(msgspec.json.encode(summary).decode())
    else:
        print(
            f"{config.source}: ok ({len(config.providers)} providers, "
            f"{len(config.models)} groups, {len(config.apps)} apps)"
        )
        for warning in warnings:  # a warning is not an error: the exit code stays 0
            print(f"quotad: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _start_warnings(config: Config) -> list[str]:
    """What ``quotad serve`` would refuse to start on, past the file itself, run from here:
    the provider keys (:func:`~quotad.daemon.providers.resolve_api_keys`) and the state
    directory (:func:`~quotad.daemon.config.state_dir`), which serve runs. Warnings, not
    errors: the daemon may run where they are (its environment, systemd credentials)."""
    from quotad.daemon.config import ConfigError, state_dir
    from quotad.daemon.providers import resolve_api_keys

    problems: list[str] = []
    for check in (resolve_api_keys, state_dir):
        try:
            check(config)
        except ConfigError as error:
            problems += error.problems
    where = "(quotad serve refuses to start on it where it is so)"
    return [f"{problem} {where}" for problem in problems]


def _top(args: argparse.Namespace) -> int:
    from quotad.protocol.messages import MAX_INTERVAL_S, MIN_INTERVAL_S

    try:
        from quotad.tui.app import run_tui
    except ImportError:
        print(
            "quotad: `quotad top` needs the quotad-tui package (uv pip install quotad-tui)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if not MIN_INTERVAL_S <= args.interval <= MAX_INTERVAL_S:
        print(
            f"quotad: --interval {args.interval:g} is outside "
            f"{MIN_INTERVAL_S:g}-{MAX_INTERVAL_S:g} s",
            file=sys.stderr,
        )
        return EXIT_USAGE
    run_tui(sockets=calls.sockets(args), interval_s=args.interval)
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from quotad.daemon.doctor import print_report, run_checks

    checks = run_checks(config_path=args.config, socket=args.socket, online=args.online)
    print_report(checks, as_json=args.json)
    return EXIT_FAILURE if any(check.status == "fail" for check in checks) else EXIT_OK


def sim_settings(args: argparse.Namespace) -> SimSettings:
    """The settings ``quotad sim`` runs with: its options' dests are the fields' names."""
    import msgspec

    from quotad.daemon.sim import SimSettings

    return msgspec.convert(args, SimSettings, from_attributes=True)


def _sim(args: argparse.Namespace) -> int:
    from quotad.daemon.sim import run_sim

    return run_sim(sim_settings(args))


def _demo(args: argparse.Namespace) -> int:
    from quotad.daemon.demo import run_demo

    return run_demo(headless=args.headless, duration_s=args.duration)


OWN_OUTPUT: Final = frozenset({"serve", "sim", "demo", "top"})
"""Commands whose output is their own: the daemon's and the sim's logs, or a TUI, which draws
with control characters (and shows names as plain text); every other command's output goes
through :func:`terminal_output`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quotad`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and not args.version:
        parser.error("the following arguments are required: COMMAND")
    try:
        if args.command in OWN_OUTPUT:
            return int(args.handler(args))
        with terminal_output():  # names and replies chosen by others: no control characters
            return int(calls.version(args) if args.version else args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
