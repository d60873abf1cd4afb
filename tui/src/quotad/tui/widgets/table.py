"""A data table refreshed wholesale from each snapshot without losing the user's place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import RenderableType
from textual.widgets import DataTable

Row = tuple[str, Sequence[RenderableType]]


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a :class:`LiveTable`: its heading and fixed width (a live table's columns
    must not jump as values change)."""

    label: str
    width: int


class LiveTable(DataTable[Any]):
    """A read-only table whose rows are replaced from data each refresh.

    When the row keys are the same as last time, only the cells that changed are updated;
    otherwise the table is rebuilt and the cursor goes back to the row it was on, if that row
    is still there.
    """

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._column_specs = tuple(columns)
        self._row_keys: list[str] = []
        self._shown: dict[str, Sequence[RenderableType]] = {}

    def on_mount(self) -> None:
        for index, column in enumerate(self._column_specs):
            self.add_column(column.label, width=column.width, key=str(index))

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or ``None`` when the table is empty."""
        if not self._row_keys or not 0 <= self.cursor_row < len(self._row_keys):
            return None
        return self._row_keys[self.cursor_row]

    def show_rows(self, rows: Sequence[Row]) -> None:
        """Show ``rows`` (key, cells), in order."""
        keys = [key for key, _ in rows]
        if keys == self._row_keys:
            for key, cells in rows:
                shown = self._shown[key]
                for index, cell in enumerate(cells):
                    if cell != shown[index]:
                        self.update_cell(key, str(index), cell)
                self._shown[key] = cells
            return
        kept = self.cursor_key
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._row_keys = keys
        self._shown = dict(rows)
        if kept in keys:
            self.move_cursor(row=keys.index(kept), animate=False)
