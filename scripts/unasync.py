"""Generate the blocking client API (``_sync.py``) from the async one (``_async.py``).

The client API is written once, as async code; this script makes its blocking twin by
replacing tokens (the table below), then sorts the imports and formats the result with ruff, as
every file of the repo is. The output is committed, and the test suite regenerates it in memory
and fails when the committed file differs (tests/unit/client/test_written_once.py), so the two
cannot drift. After editing ``_async.py``:

    uv run python scripts/unasync.py           # write _sync.py
    uv run python scripts/unasync.py --check   # exit 1 if _sync.py is not what it would write

The socket I/O beneath the API is written by hand on each side (``_async_connection.py`` and
``_connection.py``, which offer the same names less the ``Async`` prefix), so the table stays
small. Every rule must be used, and the output may hold no ``async``/``await`` keyword nor any
name of the async side, else generation fails, naming the rule or the line.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
SOURCE: Final = ROOT / "client/src/quotad/client/_async.py"
TARGET: Final = ROOT / "client/src/quotad/client/_sync.py"
HEADER: Final = (
    "# Generated from _async.py by scripts/unasync.py: edit that file and run the script,\n"
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
    r"async|await|anyio|aclose|_?Async[A-Z]\w*|__a(enter|exit|iter|next)__"
)


class GenerationError(Exception):
    """The table does not fit the source: a rule unused, or async code left in the output."""


def unasync_text(text: str) -> str:
    """``text`` with every rule applied (no check, no formatting)."""
    for pattern, replacement in COMPILED_RULES:
        text = pattern.sub(replacement, text)
    return text


def _check(source: str, output: str) -> None:
    unused = [
        rule
        for rule, (pattern, _) in zip(RULES, COMPILED_RULES, strict=True)
        if not pattern.search(source)
    ]
    if unused:
        raise GenerationError(f"rules no longer used by {SOURCE.name}: {unused}")
    left = [
        f"line {token.start[0]}: {token.line.strip()}"
        for token in tokenize.generate_tokens(io.StringIO(output).readline)
        if token.type == tokenize.NAME and ASYNC_NAME.fullmatch(token.string)
    ]
    if left:
        raise GenerationError("async code left in the output:\n" + "\n".join(left))


def _ruff(*args: str, text: str) -> str:
    """``text`` through ``ruff ARGS`` (reading stdin as if it were the target file)."""
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"]
    result = subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise GenerationError(f"{' '.join(command[2:])} failed:\n{result.stderr}{result.stdout}")
    return result.stdout


def generate(source: str | None = None) -> str:
    """The text ``_sync.py`` must hold for ``source`` (default: ``_async.py`` as it is)."""
    if source is None:
        source = SOURCE.read_text()
    output = unasync_text(source)
    _check(source, output)
    output = _ruff("check", "--quiet", "--select", "I", "--fix", text=HEADER + output)
    return _ruff("format", "--quiet", text=output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args()
    expected = generate()
    current = TARGET.read_text() if TARGET.exists() else ""
    if current == expected:
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            str(TARGET.relative_to(ROOT)),
            "generated",
        )
        sys.stdout.writelines(diff)
        return 1
    TARGET.write_text(expected)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
