"""What the ``quotad`` command prints never carries a character a terminal would run."""

from __future__ import annotations

import io
import json
import sys

import msgspec
import pytest
from rich.cells import cell_len

from quotad.daemon.report import table
from quotad.daemon.terminal import TerminalText, columns, escaped, terminal_output


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;pwned\x07", "\\u001b]0;pwned\\u0007"),  # retitles the terminal
        ("\x1b]52;c;ZXZpbA==\x07", "\\u001b]52;c;ZXZpbA==\\u0007"),  # writes the clipboard
        ("\x1b[2Kspend $0", "\\u001b[2Kspend $0"),  # erases the line
        ("app\rother", "app\\u000dother"),  # a carriage return rewrites the line
        ("\x9b31m", "\\u009b31m"),  # the one-byte CSI
        ("a\x7fb\x00c", "a\\u007fb\\u0000c"),
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("\u2066x\u2069", "\\u2066x\\u2069"),
    ],
)
def test_what_a_terminal_would_run_is_written_as_an_escape(text: str, shown: str) -> None:
    assert escaped(text) == shown


@pytest.mark.parametrize(
    "text", ["plain", "café 😀 日本語 עברית", "two\nlines\ttab", "windows\r\nline", ""]
)
def test_text_a_terminal_only_shows_passes_as_it_is(text: str) -> None:
    assert escaped(text) == text


def test_json_output_stays_json_holding_the_same_text() -> None:
    """msgspec's JSON leaves DEL, C1 controls and bidi overrides as they are; ``\\x7f`` for
    them made ``quotad chat --json`` print what no JSON parser reads."""
    value = {"content": "a\x7fb\x9bc\u202ed\x1be\nf", "app": "café"}
    printed = escaped(msgspec.json.encode(value).decode())
    assert "\x7f" not in printed
    assert "\x9b" not in printed
    assert json.loads(printed) == value


def test_the_command_s_streams_are_escaped_only_within_it() -> None:
    out = io.StringIO()
    stream = TerminalText(out)
    assert stream.write("\x1b[31mred\n") == len("\x1b[31mred\n")
    assert out.getvalue() == "\\u001b[31mred\n"
    before = sys.stdout
    with terminal_output():
        assert isinstance(sys.stdout, TerminalText)
        assert isinstance(sys.stderr, TerminalText)
    assert sys.stdout is before


def test_a_table_lines_up_names_written_in_wide_or_combining_characters() -> None:
    """Columns were padded by characters: an app named in CJK (two columns a character)
    pushed its row's figures right of the others', a decomposed accent left of them. What a
    terminal gives each line is measured as Rich measures it (``cell_len``)."""
    names = ["notebook", "日報ボット", "\uff46\uff55\uff4c\uff4c", "cafe\u0301", "x\u200by"]
    lines = table(["app", "requests"], [[name, 7] for name in names]).splitlines()
    starts = [cell_len(line[: line.index("7")]) for line in lines[1:]]
    assert starts == [cell_len(lines[0][: lines[0].index("requests")])] * len(names)
    assert [columns(name) for name in names] == [cell_len(name) for name in names]
