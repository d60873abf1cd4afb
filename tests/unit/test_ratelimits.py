"""Rate-limit headers (quotad.daemon.providers.ratelimits): OpenAI durations, Anthropic RFC 3339
resets, retry-after in its forms, and junk, which must come out as None and never raise."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotad.daemon.providers.ratelimits import (
    MAX_WAIT_S,
    parse_duration,
    parse_rate_limits,
    parse_reset_timestamp,
    parse_retry_after,
)
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS, RateLimitInfo

NOW = datetime(2026, 11, 3, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2m59.56s", 179.56),
        ("7.66s", 7.66),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("15ns", 15e-9),
        (".5s", 0.5),
        (" 1m ", 60.0),
        ("12", 12.0),
        ("0.25", 0.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    value = parse_duration(text)
    assert value is not None
    assert math.isclose(value, seconds, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize(
    "text", ["", "-1", "-1s", "junk", "1x", "5m-3s", "s", "1.2.3s", "nan", "inf", "1e400", "9" * 80]
)
def test_junk_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


@given(st.text(max_size=80))
def test_duration_parser_never_raises(text: str) -> None:
    value = parse_duration(text)
    assert value is None or (math.isfinite(value) and value >= 0)


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(_UNITS))), min_size=1, max_size=5
    )
)
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{number}{unit}" for number, unit in parts)
    expected = sum(number * _UNITS[unit] for number, unit in parts)
    value = parse_duration(text)
    assert value is not None
    assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-03T12:01:00Z", 60.0),
        ("2026-11-03T12:00:00.5Z", 0.5),
        ("2026-11-03T12:00:01.123456789Z", 1.123456),
        ("2026-11-03T13:00:30+01:00", 30.0),
        ("2026-11-03T12:00:10", 10.0),  # no zone: UTC
        ("2026-11-03T11:59:00Z", 0.0),  # already past
    ],
)
def test_reset_timestamps_are_seconds_from_now(text: str, seconds: float) -> None:
    value = parse_reset_timestamp(text, NOW)
    assert value is not None
    assert math.isclose(value, seconds, abs_tol=1e-6)


@pytest.mark.parametrize("text", ["", "soon", "2026-13-45T00:00:00Z", "-1", "9" * 100])
def test_junk_reset_timestamps_are_none(text: str) -> None:
    assert parse_reset_timestamp(text, NOW) is None


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("3", NOW) == 3.0
    assert parse_retry_after("1.5", NOW) == 1.5
    later = datetime.fromtimestamp(NOW + 120, tz=UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), NOW) == pytest.approx(120.0)
    earlier = datetime.fromtimestamp(NOW - 120, tz=UTC)
    assert parse_retry_after(format_datetime(earlier, usegmt=True), NOW) == 0.0
    for junk in ("", "-1", "later", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk, NOW) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {
                "X-RateLimit-Limit-Requests": "500",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "199000",
                "x-ratelimit-reset-tokens": "6m0s",
                "content-type": "application/json",
            },
            RateLimitInfo(
                limit_requests=500,
                remaining_requests=499,
                reset_requests_s=0.12,
                limit_tokens=200000,
                remaining_tokens=199000,
                reset_tokens_s=360.0,
            ),
            id="openai",
        ),
        pytest.param(
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2026-11-03T12:00:01Z",
                "anthropic-ratelimit-tokens-limit": "90000",
                "anthropic-ratelimit-tokens-remaining": "80000",
                "anthropic-ratelimit-tokens-reset": "2026-11-03T12:00:06Z",
                "anthropic-ratelimit-input-tokens-limit": "40000",
                "anthropic-ratelimit-input-tokens-remaining": "39000",
                "anthropic-ratelimit-input-tokens-reset": "2026-11-03T12:00:02Z",
                "anthropic-ratelimit-output-tokens-limit": "8000",
                "anthropic-ratelimit-output-tokens-remaining": "7000",
                "anthropic-ratelimit-output-tokens-reset": "2026-11-03T12:00:03Z",
                "retry-after": "7",
            },
            RateLimitInfo(
                limit_requests=50,
                remaining_requests=49,
                reset_requests_s=1.0,
                limit_tokens=90000,
                remaining_tokens=80000,
                reset_tokens_s=6.0,
                limit_input_tokens=40000,
                remaining_input_tokens=39000,
                reset_input_tokens_s=2.0,
                limit_output_tokens=8000,
                remaining_output_tokens=7000,
                reset_output_tokens_s=3.0,
                retry_after_s=7.0,
            ),
            id="anthropic",
        ),
        pytest.param(
            {
                "x-ratelimit-limit-requests": "-1",
                "x-ratelimit-remaining-requests": "lots",
                "x-ratelimit-reset-requests": "-1",
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-reset-tokens": "whenever",
                "anthropic-ratelimit-tokens-reset": "tomorrow",
                "retry-after": "",
            },
            RateLimitInfo(limit_tokens=1000),
            id="junk values are left out",
        ),
    ],
)
def test_headers_give_rate_limit_info(headers: dict[str, str], expected: RateLimitInfo) -> None:
    assert parse_rate_limits(httpx.Headers(headers), now=NOW) == expected


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = httpx.Headers({"retry-after": "2", "retry-after-ms": "1500"})
    assert parse_rate_limits(headers).retry_after_s == 1.5
    assert parse_rate_limits(httpx.Headers({"retry-after": "2"})).retry_after_s == 2.0


def test_no_rate_limit_headers_give_the_shared_empty_info() -> None:
    info = parse_rate_limits(httpx.Headers({"content-type": "application/json"}))
    assert info is NO_RATE_LIMITS
    assert info.is_empty()


def test_a_plain_mapping_with_any_case_of_names() -> None:
    """The headers a client reports in a Settle are a plain dict, names in any case."""
    info = parse_rate_limits({"X-RateLimit-Remaining-Tokens": "10", "Retry-After": "1"})
    assert info == RateLimitInfo(remaining_tokens=10, retry_after_s=1.0)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "1e300"},
        {"retry-after-ms": "99999999999999"},
        {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999999h"},
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1e300"},
        {"anthropic-ratelimit-requests-remaining": "0",
         "anthropic-ratelimit-requests-reset": "9999-12-31T23:59:59Z"},
        {"anthropic-ratelimit-input-tokens-remaining": "0",
         "anthropic-ratelimit-input-tokens-reset": "9999-12-31T23:59:59Z"},
    ],
)  # fmt: skip
def test_no_reply_can_make_anyone_wait_longer_than_a_day(headers: dict[str, str]) -> None:
    """The gates pause a target for what these say: a retry-after of 1e300 s (from a
    broken or hostile server, or a client's Settle) shut a target until a reset by hand
    (found by the provider fuzz). A wait is taken as a day at most."""
    info = parse_rate_limits(headers, now=NOW)
    waits = [value for name, value in msgspec.structs.asdict(info).items() if name.endswith("_s")]
    assert [wait for wait in waits if wait is not None] == [MAX_WAIT_S]


_HEADER_NAMES = st.sampled_from(
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-output-tokens-remaining",
        "retry-after",
        "retry-after-ms",
    ]
)


@given(st.dictionaries(_HEADER_NAMES, st.text(max_size=40)))
def test_arbitrary_header_values_never_raise(headers: dict[str, str]) -> None:
    info = parse_rate_limits(headers, now=NOW)
    for value in (info.limit_requests, info.reset_tokens_s, info.retry_after_s):
        assert value is None or value >= 0
