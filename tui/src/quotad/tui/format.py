"""How figures read on screen: bars, sparklines, durations, sizes and money, as Rich text.

Pure functions of their arguments (no clock, no locale), so a screen renders the same data the
same way every time — which is what the snapshot tests rely on. Money and sizes read as in the
``quotad`` command: both come from :mod:`quotad.protocol.figures`.

A figure that is not a finite number (NaN, an infinity: only a buggy daemon, or one of another
version, sends one) reads ``-``, an empty bar or a gap in a sparkline: it raised ValueError or
OverflowError in the middle of a repaint, which ended ``quotad top``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.text import Text

from quotad.protocol import figures

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
BAR_FULL = "█"
BAR_PARTS = " ▏▎▍▌▋▊▉"
BAR_EMPTY = "·"


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number; None (shown as absent) when not."""
    return value if value is not None and math.isfinite(value) else None


def usd(value: float | None) -> str:
    """Dollars as the ``quotad`` command shows them (:func:`quotad.protocol.figures.usd`);
    ``-`` for None or a value that is not a finite number."""
    return figures.usd(finite(value))


def size(value: float) -> str:
    """A byte count as the ``quotad`` command shows it (:func:`quotad.protocol.figures.size`);
    ``-`` for a value that is not a finite number."""
    return "-" if finite(value) is None else figures.size(value)


def bar(fraction: float, width: int, *, style: str | None = None) -> Text:
    """A horizontal bar ``width`` cells wide, filled to ``fraction`` (clamped to 0..1; empty
    when it is not a number), in eighths of a cell. Its style is green, then yellow from 70 %,
    red from 90 %, unless given."""
    fraction = 0.0 if math.isnan(fraction) else min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = BAR_FULL * full + (BAR_PARTS[part] if part else "")
    if style is None:
        style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"
    text = Text(filled, style=style)
    text.append(BAR_EMPTY * (width - len(filled)), style="grey42")
    return text


def spark(
    values: Iterable[float | None],
    width: int,
    *,
    style: str = "cyan",
    top: float | None = None,
) -> Text:
    """The last ``width`` values as a sparkline scaled to ``top`` (default: their maximum);
    ``None`` (no data in that interval), or a value that is not a finite number, is a gap."""
    points = [finite(value) for value in list(values)[-width:]]
    if top is None or finite(top) is None:
        top = max((value for value in points if value is not None), default=0.0)
    cells = []
    for value in points:
        if value is None:
            cells.append(" ")
        elif top <= 0:
            cells.append(SPARK_BLOCKS[0])
        else:
            height = value / top * (len(SPARK_BLOCKS) - 1)  # may overflow to an infinity
            index = round(min(max(height, 0.0), len(SPARK_BLOCKS) - 1.0))
            cells.append(SPARK_BLOCKS[index])
    return Text("".join(cells).rjust(width), style=style)


def seconds(value: float | None) -> str:
    """A duration for a table cell: ``-``, ``850ms``, ``2.4s``, ``3m05s``, ``2h10m``, ``3d4h``
    (``-`` for None or a value that is not a finite number)."""
    value = finite(value)
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.0f}ms"
    if value < 60.0:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def milliseconds(value: float | None) -> str:
    """Seconds shown as whole milliseconds, or ``-`` (None, or not a finite number)."""
    value = finite(value)
    return "-" if value is None else f"{value * 1000:.0f}ms"


def percent(fraction: float | None) -> str:
    """A fraction as a percentage, or ``-`` (None, or not a finite number)."""
    fraction = finite(fraction)
    return "-" if fraction is None else f"{fraction * 100:.0f}%"
