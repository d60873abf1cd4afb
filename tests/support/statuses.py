"""Status replies shared by the tests of what renders them (``quotad status`` text, /metrics)."""

from __future__ import annotations

from quotad.protocol.messages import ClusterHost, ClusterStatus, ClusterWindow

DEGRADED_FLEET = ClusterStatus(
    host="h1",
    redis_url="redis://10.0.0.5:6379/0",
    key_prefix="quotad",
    health="degraded",
    reason="Redis unreachable: Connection refused",
    mode="share",
    on_unreachable="share",
    hosts_seen=2,
    hosts=[
        ClusterHost(name="h1", seen_s_ago=0.1, in_flight=3, queued=1, timezone="UTC"),
        ClusterHost(name="h2", seen_s_ago=0.4, in_flight=5, timezone="UTC"),
    ],
    windows=[ClusterWindow(name="provider:openai|requests|60", held=7, fleet_used=40)],
    rtt_ms=0.35,
)
"""A host of two whose Redis is unreachable, sharing what it holds."""
