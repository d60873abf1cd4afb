"""What the gates have counted, kept across a restart (``gates.state`` in the state directory).

A provider keeps counting what it was sent while quotad restarts; gates that started empty
would let a whole window more through at once (a restart under load drew a 429 for every
request of the next window). So the daemon saves every window's admissions, its pace, the
external usage a provider's headers told it of and each target's 429 pause: when it stops
(after the drain, to disk), and every :data:`SAVE_EVERY_S` while it runs (so a crash loses at
most that much), and puts them back when it starts, before it serves.

Times are saved as wall time and put back relative to when they were saved, so a wall clock
set back between the two runs can only make them count as recent (never hold a window
longer than it held it), and one set forward lets them expire. A window keeps at most
:data:`MAX_SAVED_PER_WINDOW` entries: admissions close in time are merged into the latest of
them, which counts them a little longer, never less. A file that cannot be read or is not
valid is left unused (the gates start empty, as before) and a warning says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from quotad.daemon.gates.window import Admission, Gate, Unit
from quotad.daemon.small_files import FileTooLarge, read_small_file

log = logging.getLogger(__name__)

SAVED_GATES_FILE: Final = "gates.state"
"""Its name in the state directory."""
SAVE_EVERY_S: Final = 1.0
"""How often the running daemon saves what changed, at most."""
SAVE_COST_FACTOR: Final = 100
"""A save that took T waits this many T for the next: saving takes at most 1 % of the time."""
MAX_SAVED_PER_WINDOW: Final = 1024
"""Entries a window keeps at most (admissions close in time merged)."""
MAX_FILE_BYTES: Final = 64 * 1024 * 1024
"""A larger file is not read."""
MAX_AHEAD_S: Final = 86_400.0
"""How far past its saving a pause or a provider's reset may reach when put back."""
FORMAT: Final = 1

WallTime = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]
Units = Annotated[int, msgspec.Meta(ge=0, le=10**15)]


class SavedWindow(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One window: which it is (its gate's, by unit and length) and what it counted."""

    unit: Literal["requests", "tokens"]
    window_s: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)]
    admissions: Annotated[
        list[tuple[WallTime, Units]], msgspec.Meta(max_length=MAX_SAVED_PER_WINDOW)
    ]
    """(when it counts from, units), oldest first."""
    paced_until: WallTime | None = None
    """The pace's next free moment (GCRA's theoretical arrival), if after the saving."""
    external: Units = 0
    external_until: WallTime | None = None


class SavedGate(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One gate: its name (``provider:NAME``, ``provider/model``, ``app:NAME``), its pause
    and its windows."""

    name: Annotated[str, msgspec.Meta(max_length=4096)]
    paused_until: WallTime | None
    windows: list[SavedWindow]


class SavedGates(msgspec.Struct, forbid_unknown_fields=True):
    """The file's content."""

    format: Literal[1]
    saved_at: WallTime
    gates: list[SavedGate]
    stopped: bool = False
    """Saved by a daemon that stopped (after its drain: everything it counted); False: by
    the running daemon, which then ended otherwise (what it admitted after is not here)."""


_TIME: Final = attrgetter("time")
_AMOUNT: Final = attrgetter("amount")
_PENDING: Final = attrgetter("pending")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SavedGates)


def saved_path(state_dir: Path) -> Path:
    """Where the gates are saved in ``state_dir``."""
    return state_dir / SAVED_GATES_FILE


def read_saved(path: Path) -> SavedGates | None:
    """What was saved at ``path``; None when nothing was, or (with a warning saying why) when
    it cannot be used. Read up to :data:`MAX_FILE_BYTES`, never waiting for a FIFO's writer."""
    try:
        data = read_small_file(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, FileTooLarge) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        log.warning("gates: could not read %s (%s); they start empty", path, reason)
        return None
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        log.warning("gates: %s is not a saved state (%s); they start empty", path, error)
        return None


def write_saved(path: Path, saved: SavedGates, *, durable: bool) -> None:
    """Write ``saved`` at ``path`` whole or not at all (a temporary file renamed over it);
    ``durable``: wait for the disk too. An ``OSError`` (a full disk) leaves the previous
    file as it was."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(_encoder.encode(saved))
            while data:  # short only when the disk fills; the next write then says so
                data = data[os.write(descriptor, data) :]
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def save_changed(captured: Capture, path: Path, last: SavedGates | None) -> SavedGates:
    """Save ``captured`` at ``path`` unless it holds what ``last`` (saved before) held; what
    the file holds now. Raises ``OSError`` as :func:`write_saved`."""
    saved = to_saved(captured)
    if last is not None and saved.gates == last.gates:
        return last
    write_saved(path, saved, durable=False)
    return saved


# --------------------------------------------------------------------------- saving


@dataclass(slots=True)
class CapturedWindow:
    """One window as :func:`capture` copied it: its log is a list of the same admissions."""

    unit: Unit
    window_s: float
    span: float
    log: list[Admission]
    paced_until: float
    external: int
    external_until: float


@dataclass(slots=True)
class Capture:
    """The gates' state copied on the event loop (lists of references: cheap), made into a
    :class:`SavedGates` anywhere after (:func:`to_saved`, a thread's work for long logs)."""

    now: float
    saved_at: float
    gates: list[tuple[str, float, list[CapturedWindow]]]
    """(name, paused until, windows) of each gate."""


def capture(gates: Iterable[Gate], now: float, saved_at: float) -> Capture:
    """Copy what ``gates`` count at ``now`` (monotonic; ``saved_at``: the same moment's wall
    time): the windows that count anything, and the gates that have one or a pause (10,000
    idle app gates: about 5 ms, where copying every window took 100)."""
    captured = []
    for gate in gates:
        windows = [
            CapturedWindow(
                window.unit,
                window.window_s,
                window.span,
                window.admissions(now),
                window.theoretical_arrival,
                window.external,
                window.external_until,
            )
            for window in gate.windows
            if window.counts_anything(now)
        ]
        if windows or gate.paused_until > now:
            captured.append((gate.name, gate.paused_until, windows))
    return Capture(now, saved_at, captured)


def to_saved(captured: Capture, *, stopped: bool = False) -> SavedGates:
    """What ``captured`` holds that still counts, in wall time (``stopped``: as the daemon
    stops)."""
    now, to_wall = captured.now, captured.saved_at - captured.now
    gates = []
    for name, paused_until, windows in captured.gates:
        saved = [s for s in (_saved_window(w, now, to_wall) for w in windows) if s is not None]
        pause = paused_until + to_wall if paused_until > now else None
        if saved or pause is not None:
            gates.append(SavedGate(name, pause, saved))
    return SavedGates(format=FORMAT, saved_at=captured.saved_at, gates=gates, stopped=stopped)


def _saved_window(window: CapturedWindow, now: float, to_wall: float) -> SavedWindow | None:
    """The window's admissions that still count, merged into at most
    :data:`MAX_SAVED_PER_WINDOW` (each merge at the latest time of those it holds). A log is in
    time order (each admission is made, or moved, at the newest time), so the merges are found
    by bisecting its times: per admission only C-level passes (60,000 admissions: about 10 ms,
    where a loop over them took 43)."""
    log = window.log
    times = list(map(_TIME, log))
    amounts = list(map(_AMOUNT, log))
    if any(map(_PENDING, log)):  # not left yet: counted from now, the newest of all
        left = [not admission.pending for admission in log]
        waiting = sum(amounts) - sum(compress(amounts, left))
        times, amounts = [*compress(times, left), now], [*compress(amounts, left), waiting]
    if times != sorted(times):  # not expected; merging needs the order
        order = sorted(range(len(times)), key=times.__getitem__)
        times, amounts = [times[i] for i in order], [amounts[i] for i in order]
    width = window.span / (MAX_SAVED_PER_WINDOW - 2)  # a merge each width: one to spare
    admissions: list[tuple[float, int]] = []
    start, count = 0, len(times)
    while start < count:
        end = bisect_left(times, times[start] + width, start + 1)
        if units := sum(amounts[start:end]):
            admissions.append((times[end - 1] + to_wall, units))
        start = end
    paced_until = window.paced_until + to_wall if window.paced_until > now else None
    external_until = window.external_until + to_wall if window.external_until > now else None
    if not admissions and paced_until is None and external_until is None:
        return None
    return SavedWindow(
        window.unit,
        window.window_s,
        admissions,
        paced_until,
        window.external if external_until is not None else 0,
        external_until,
    )
