"""The help modal: every key of ``quotad top``."""

from __future__ import annotations

from typing import ClassVar, Final

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: Final = (
    ("1 … 5", "Overview, Apps, Spend, Requests, Cache"),
    ("tab / shift+tab", "next / previous screen"),
    ("↑ ↓ pgup pgdn", "move in a table"),
    ("d", "disable the selected target (Overview; asks first)"),
    ("e", "enable the selected target (Overview; asks first)"),
    ("r", "reset the selected target's breaker (Overview; asks first)"),
    ("?", "this help"),
    ("q", "quit"),
)


def keys_table() -> Table:
    """The keys as a two-column table."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, meaning in KEYS:
        table.add_row(key, meaning)
    return table


class HelpScreen(ModalScreen[None]):
    """Lists the keys; any of escape, ``?`` or ``q`` closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("[b]quotad top[/b] — keys", id="question")
            yield Static(keys_table(), id="keys")
            yield Static(
                "The screens follow the daemon live; when it is not running or restarts, "
                "they say so and reconnect by themselves.",
                id="detail",
            )

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
