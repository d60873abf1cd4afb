"""Generate the blocking client API from the async one: each module of :data:`PAIRS`
(``_sync.py`` from ``_async.py``, ``_sync_stream.py`` from ``_async_stream.py``).

The client API is written once, as async code; this script makes its blocking twin by
replacing tokens (the table below), then sorts the imports and formats the result with ruff, as
every file of the repo is. The output is committed, and the test suite regenerates it in memory
and fails when a committed file differs (tests/unit/client/test_written_once.py), so the two
cannot drift. After editing an async module:

    uv run python scripts/unasync.py           # write the blocking modules that changed
    uv run python scripts/unasync.py --check   # exit 1 if one is not what it would write

The socket I/O beneath the API is written by hand on each side (``_async_connection.py`` and
``_connection.py``, which offer the same names less the ``Async`` prefix), so the table stays
small. Every rule must be used (by one source at least), and no output may hold an
``async``/``await`` keyword nor any name of the async side, else generation fails, naming the
rule or the line.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
CLIENT: Final = ROOT / "client/src/quotad/client"
PAIRS: Final[tuple[tuple[Path, Path], ...]] = (
    (CLIENT / "_async.py", CLIENT / "_sync.py"),
    (CLIENT / "_async_stream.py", CLIENT / "_sync_stream.py"),
)
"""Each async module written by hand (the source), and the blocking module made from it."""
HEADER: Final = (
    "# Generated from {source} by scripts/unasync.py: edit that file and run the script,\n"
    "# never this one (the test suite fails while the two differ).\n"
)

# (pattern, replacement), applied in order to the whole text, docstrings and comments included.
RULES: Final[list[tuple[str, str]]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"(?<![A-Za-z0-9])Async(?=[A-Z])", ""),  # AsyncClient, _AsyncReplies, AsyncIterator
    (r"\b_async_connection\b", "_connection"),
    (r"\b_async_stream\b", "_sync_stream"),
    (r"\baclose\b", "close"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__anext__\b", "__next__"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\basynccontextmanager\b", "contextmanager"),
]
COMPILED_RULES: Final = [(re.compile(pattern), replacement) for pattern, replacement in RULES]
# Names (code, not prose) that mean the async side was left in the output.
ASYNC_NAME: Final = re.compile(
    r"async|await|anyio|aclose|_async\w*|_?Async[A-Z]\w*|__a(enter|exit|iter|next)__"
)


class GenerationError(Exception):
    """The table does not fit the source: a rule unused, or async code left in the output."""


def unasync_text(text: str) -> str:
    """``text`` with every rule applied (no check, no formatting)."""
    for pattern, replacement in COMPILED_RULES:
        text = pattern.sub(replacement, text)
    return text


def _check_rules_used(sources: Iterable[str]) -> None:
    texts = list(sources)
    unused = [
        rule
        for rule, (pattern, _) in zip(RULES, COMPILED_RULES, strict=True)
        if not any(pattern.search(text) for text in texts)
    ]
    if unused:
        names = ", ".join(source.name for source, _ in PAIRS)
        raise GenerationError(f"rules no longer used by any of {names}: {unused}")


def _check_output(source: Path, output: str) -> None:
    left = [
        f"line {token.start[0]}: {token.line.strip()}"
        for token in tokenize.generate_tokens(io.StringIO(output).readline)
        if token.type == tokenize.NAME and ASYNC_NAME.fullmatch(token.string)
    ]
    if left:
        raise GenerationError(
            f"async code left in the output of {source.name}:\n" + "\n".join(left)
        )


def _ruff(*args: str, text: str, target: Path) -> str:
    """``text`` through ``ruff ARGS`` (reading stdin as if it were ``target``)."""
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(target), "-"]
    result = subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise GenerationError(f"{' '.join(command[2:])} failed:\n{result.stderr}{result.stdout}")
    return result.stdout


def generate(sources: Mapping[Path, str] | None = None) -> dict[Path, str]:
    """The text each blocking module of :data:`PAIRS` must hold, by its path, for
    ``sources`` (an async module's path → its text; a module not in it is read as it is)."""
    texts = {
        source: sources[source] if sources and source in sources else source.read_text()
        for source, _ in PAIRS
    }
    _check_rules_used(texts.values())
    generated = {}
    for source, target in PAIRS:
        output = unasync_text(texts[source])
        _check_output(source, output)
        header = HEADER.format(source=source.name)
        output = _ruff(
            "check", "--quiet", "--select", "I", "--fix", text=header + output, target=target
        )
        generated[target] = _ruff("format", "--quiet", text=output, target=target)
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args()
    differing = 0
    for target, expected in generate().items():
        current = target.read_text() if target.exists() else ""
        if current == expected:
            continue
        differing += 1
        if args.check:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                str(target.relative_to(ROOT)),
                "generated",
            )
            sys.stdout.writelines(diff)
        else:
            target.write_text(expected)
            print(f"wrote {target.relative_to(ROOT)}")
    return 1 if args.check and differing else 0


if __name__ == "__main__":
    sys.exit(main())
