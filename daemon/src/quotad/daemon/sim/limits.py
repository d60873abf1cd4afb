"""The sim's own rate limits: :class:`SlidingWindowLog`, an exact log of admissions per
window, and the rate-limit headers its answers carry (:func:`limit_headers`), in OpenAI's
``x-ratelimit-*`` shape (resets written by :func:`go_duration`) or Anthropic's
``anthropic-ratelimit-*`` one (resets written by :func:`rfc3339`)."""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import UTC, datetime


class SlidingWindowLog:
    """Exact sliding-window log of admissions (arrival time, tokens): an admission at ``t``
    counts in every window ``(now - window_s, now]`` that holds ``t``. Also keeps the most
    requests and tokens ever seen together in one window."""

    __slots__ = ("_times", "_tokens", "most_requests", "most_tokens", "tokens", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._tokens: deque[int] = deque()
        self.tokens = 0
        self.most_requests = 0
        self.most_tokens = 0

    @property
    def requests(self) -> int:
        """Admissions in the window (as of the last :meth:`evict`)."""
        return len(self._times)

    def evict(self, now: float) -> None:
        """Forget admissions that have left the window ending at ``now``: those whose leaving
        time (admitted + window_s, the sum :meth:`room_in` and :meth:`fits_in` wait for) is
        past. Compared as that sum, not as ``now - window_s``: the two round differently, and
        an admission kept by one rounding with 0 seconds left by the other was a refusal
        with a wait of 0."""
        times, window_s = self._times, self.window_s
        while times and times[0] + window_s <= now:
            times.popleft()
            self.tokens -= self._tokens.popleft()

    def try_admit(
        self, now: float, tokens: int, max_requests: int, max_tokens: int
    ) -> tuple[str, float]:
        """Admit ``tokens`` at ``now`` unless that would pass a limit (0: no limit). Returns
        ``("", 0.0)`` when admitted, else the limit in the way (``requests``, ``tokens``, or
        ``too_large`` when ``tokens`` alone pass ``max_tokens``) and the seconds until the
        request would fit."""
        self.evict(now)
        if max_requests and len(self._times) >= max_requests:
            return "requests", self.room_in(now, max_requests)
        if max_tokens and self.tokens + tokens > max_tokens:
            if tokens > max_tokens:
                return "too_large", self.window_s
            return "tokens", self.fits_in(now, tokens, max_tokens)
        self.admit(now, tokens)
        return "", 0.0

    def admit(self, now: float, tokens: int) -> None:
        """Record an admission (call :meth:`evict` first)."""
        self._times.append(now)
        self._tokens.append(tokens)
        self.tokens += tokens
        self.most_requests = max(self.most_requests, len(self._times))
        self.most_tokens = max(self.most_tokens, self.tokens)

    def oldest_leaves_in(self, now: float) -> float:
        """Seconds until the oldest admission leaves the window (0 when it is empty)."""
        return self._times[0] + self.window_s - now if self._times else 0.0

    def room_in(self, now: float, max_requests: int) -> float:
        """Seconds until one more request fits under ``max_requests``: until enough of the
        oldest admissions have left (more than one when the limit was lowered live)."""
        must_leave = len(self._times) - max_requests  # index of the last one that must go
        if must_leave < 0:
            return 0.0
        return self._times[must_leave] + self.window_s - now

    def fits_in(self, now: float, tokens: int, limit: int) -> float:
        """Seconds until ``tokens`` more fit under ``limit`` (``tokens <= limit``)."""
        excess = self.tokens + tokens - limit
        for admitted_at, admitted_tokens in zip(self._times, self._tokens, strict=True):
            excess -= admitted_tokens
            if excess <= 0:
                return admitted_at + self.window_s - now
        return 0.0


def limit_headers(
    window: SlidingWindowLog, rpm: int, tpm: int, anthropic: bool, now: float
) -> list[tuple[str, str]]:
    """The rate-limit headers of an answer, for the limits that are set (0: unset): OpenAI's
    ``x-ratelimit-*``, or Anthropic's ``anthropic-ratelimit-*`` (the single token limit under
    the ``tokens``, ``input-tokens`` and ``output-tokens`` names). A reset is the time until
    the oldest admission leaves the window."""
    headers: list[tuple[str, str]] = []
    reset_s = window.oldest_leaves_in(now)
    if anthropic:
        reset = rfc3339(time.time() + reset_s)
        if rpm:
            remaining = max(0, rpm - window.requests)
            headers += [
                ("anthropic-ratelimit-requests-limit", str(rpm)),
                ("anthropic-ratelimit-requests-remaining", str(remaining)),
                ("anthropic-ratelimit-requests-reset", reset),
            ]
        if tpm:
            remaining = max(0, tpm - window.tokens)
            for kind in ("tokens", "input-tokens", "output-tokens"):
                headers += [
                    (f"anthropic-ratelimit-{kind}-limit", str(tpm)),
                    (f"anthropic-ratelimit-{kind}-remaining", str(remaining)),
                    (f"anthropic-ratelimit-{kind}-reset", reset),
                ]
        return headers
    reset = go_duration(reset_s)
    if rpm:
        headers += [
            ("x-ratelimit-limit-requests", str(rpm)),
            ("x-ratelimit-remaining-requests", str(max(0, rpm - window.requests))),
            ("x-ratelimit-reset-requests", reset),
        ]
    if tpm:
        headers += [
            ("x-ratelimit-limit-tokens", str(tpm)),
            ("x-ratelimit-remaining-tokens", str(max(0, tpm - window.tokens))),
            ("x-ratelimit-reset-tokens", reset),
        ]
    return headers


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    millis = max(0, math.ceil(seconds * 1000))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis // 1000}.{millis % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rfc3339(epoch_s: float) -> str:
    """A UTC timestamp as Anthropic writes it (millisecond precision)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
