"""Text that is redrawn only when it changes (a live screen rewrites it several times a second,
and most of the time most of it is the same)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class LiveText(Static):
    """A :class:`Static` whose :meth:`show_text` skips the redraw when nothing changed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: Text | None = None

    def show_text(self, text: Text) -> None:
        """Show ``text`` unless it is what is shown already."""
        if text != self._shown:
            self._shown = text
            self.update(text)
