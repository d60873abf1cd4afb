"""How figures read for people (:mod:`quotad.protocol.figures`), in ``quotad`` and ``quotad top``
alike: money with its significant digits, plain decimals for CSV, binary sizes, the limit in
force of a gate window, and a target's health with its reason."""

from __future__ import annotations

import pytest

from quotad.daemon.routing.health import DEGRADED_WINDOW
from quotad.protocol.figures import (
    RECENT_HEALTH_OUTCOMES,
    health_text,
    size,
    usd,
    usd_plain,
    window_in_force,
)
from quotad.protocol.messages import TargetStatus, WindowStatus


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0.0, "$0.00"),
        (0.4213, "$0.42"),
        (0.0213, "$0.021"),
        (0.001, "$0.0010"),
        (0.00042, "$0.00042"),
        (2.2349999999999998e-05, "$0.000022"),
        (1e-9, "<$0.000001"),
        (0.999, "$1.00"),
        (12.5, "$12.50"),
        (1234.5, "$1,234.50"),
        (-0.5, "-$0.50"),
    ],
)
def test_money_keeps_two_significant_digits_up_to_six_decimals(
    value: float | None, text: str
) -> None:
    assert usd(value) == text


def test_money_for_machines_is_a_plain_fixed_decimal() -> None:
    assert usd_plain(2.2349999999999998e-05) == "0.00002235"
    assert usd_plain(0.0) == "0.00000000"
    assert usd_plain(-1e-12) == "0.00000000"  # never "-0.00000000"
    assert usd_plain(1234.5) == "1234.50000000"
    assert "e" not in usd_plain(1e-20)


def test_sizes_are_binary_units() -> None:
    assert [size(v) for v in (512, 2048, 48_500_000, 256 * 1024**2, 3 * 1024**3)] == [
        "512 B", "2.0 KiB", "46.3 MiB", "256.0 MiB", "3.0 GiB",
    ]  # fmt: skip


def test_the_limit_in_force_is_the_tighter_of_configured_and_the_providers() -> None:
    assert window_in_force(WindowStatus(limit=300, used=12)) == (12, 300)
    # the provider counts 298 more than we did: 2 are left for us, and we used them
    assert window_in_force(WindowStatus(limit=300, used=300, provider_remaining=2)) == (2, 2)
    assert window_in_force(WindowStatus(limit=20, used=17, provider_remaining=3)) == (0, 3)


def test_health_says_why_a_target_is_degraded() -> None:
    assert RECENT_HEALTH_OUTCOMES == DEGRADED_WINDOW  # the daemon's own window
    failing = TargetStatus(health="degraded", breaker="closed", recent="." * 20 + "x...H.....")
    assert health_text(failing) == "degraded 2/10"
    probing = TargetStatus(health="degraded", breaker="half_open", recent="xxxxx")
    assert health_text(probing) == "degraded"
    assert health_text(TargetStatus(health="healthy", recent="....")) == "healthy"
    assert health_text(TargetStatus(health="unhealthy", breaker="open")) == "unhealthy"
