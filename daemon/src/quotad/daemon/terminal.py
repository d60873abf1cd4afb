"""What the ``quotad`` command prints is read on a terminal, and much of it was named by others:
apps and ``provider/model`` targets are named by any client of the socket, replies come from a
provider. A control character in those would be run by the terminal: ``ESC ]0;…`` retitles it,
``ESC [2K`` or a carriage return rewrites a line (another app's spend, hidden), ``ESC ]52`` writes
the clipboard on some terminals, and bidirectional overrides reorder what is read. The command's
output goes through :class:`TerminalText`, which writes each such character as an escape
(``\\u001b``, ``\\u202e``: JSON's spelling, so that ``--json`` output, where JSON leaves DEL, C1
controls and overrides as they are, is still JSON); new lines and tabs pass, and so does a
carriage return before a new line.
"""

from __future__ import annotations

import contextlib
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Final, TextIO

from quotad.protocol.names import CONTROL_CHARACTERS

RUN_BY_TERMINALS: Final = re.compile(f"(?![\n\t])(?!\r\n)[{CONTROL_CHARACTERS}]")
"""What a name may not hold (:data:`~quotad.protocol.names.CONTROL_CHARACTERS`) but new line
and tab, and a carriage return before a new line."""


def escaped(text: str) -> str:
    """``text`` with what a terminal would run written as escapes."""
    if text.isprintable():
        return text
    return RUN_BY_TERMINALS.sub(_escape, text)


def columns(text: str) -> int:
    """How many columns a terminal gives ``text`` (one line): two for a wide or fullwidth
    character (CJK, kana, Hangul, fullwidth forms), none for a combining mark or a
    zero-width one, one for the rest; for ASCII, its length."""
    if text.isascii():
        return len(text)
    return sum(map(_columns_of, text))


def _columns_of(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


_ZERO_WIDTH: Final = frozenset({"Mn", "Me", "Cf"})


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"  # JSON's spelling too: ``--json`` output stays JSON


class TerminalText:
    """A text stream that writes to ``stream`` with :func:`escaped` applied."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(escaped(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> object:  # encoding, isatty(), fileno()…: the stream's
        return getattr(self._stream, name)


@contextlib.contextmanager
def terminal_output() -> Iterator[None]:
    """Within it, ``sys.stdout`` and ``sys.stderr`` write through :class:`TerminalText`."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = TerminalText(stdout)
    sys.stderr = TerminalText(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
