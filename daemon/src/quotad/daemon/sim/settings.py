"""What ``quotad sim`` is told: :class:`SimSettings` from its command line, and the part of
them that ``POST /sim/control`` changes while it runs (:data:`CONTROL_FIELDS`, in the body
shape :class:`SimControl`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from quotad.daemon.config import Fraction, NonNegative

CONTROL_FIELDS = (
    "latency_ms",
    "jitter_ms",
    "fail_rate",
    "hang_rate",
    "reset_rate",
    "break_stream_rate",
    "chunk_delay_ms",
    "rpm",
    "tpm",
    "window_s",
    "report_usage",
)

UsageReport = Literal["all", "prompt", "none"]
"""What usage the sim's answers report: ``all`` (prompt and completion tokens), ``prompt``
(the prompt's alone: an OpenAI usage without its completion, an Anthropic stream whose
``message_delta`` carries none), ``none`` (no usage at all: a server that ignores
``stream_options.include_usage``, a body without ``usage``, an Anthropic stream whose
``message_start`` and ``message_delta`` carry none)."""


@dataclass(slots=True)
class SimSettings:
    """Everything ``quotad sim`` is told on its command line; :data:`CONTROL_FIELDS` of it
    can change while it runs."""

    host: str = "127.0.0.1"
    port: int = 0
    rpm: int = 0
    tpm: int = 0
    window_s: float = 60.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    break_stream_rate: float = 0.0
    chunk_delay_ms: float = 0.0
    api_key: str = ""
    log_path: str = ""
    log_bodies: bool = False
    """Whether each log line holds the request's body too."""
    seed: int | None = None
    count_tokens: str = "estimate"
    """How prompt tokens are counted: ``estimate`` (quotad's own estimate) or ``bytes`` (one
    per UTF-8 byte of every string: the most a byte-level tokenizer can count)."""
    report_usage: UsageReport = "all"
    """What usage its answers report (see :data:`UsageReport`)."""


Count = Annotated[int, msgspec.Meta(ge=0)]


class SimControl(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /sim/control``: the settings to change."""

    latency_ms: NonNegative | None = None
    jitter_ms: NonNegative | None = None
    fail_rate: Fraction | None = None
    hang_rate: Fraction | None = None
    reset_rate: Fraction | None = None
    break_stream_rate: Fraction | None = None
    chunk_delay_ms: NonNegative | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    window_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    report_usage: UsageReport | None = None
