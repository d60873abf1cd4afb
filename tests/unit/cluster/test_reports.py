"""What ``quotad status`` (text) and ``/metrics`` show of the fleet: Redis health, degraded
mode and why, hosts seen and their load, the fleet windows this host holds; nothing of it for
one host."""

from __future__ import annotations

from quotad.daemon.metrics import Metrics
from quotad.daemon.report import format_status
from quotad.protocol.messages import StatusReply
from tests.support.statuses import DEGRADED_FLEET


def test_status_text_shows_the_fleet_and_why_it_is_degraded() -> None:
    text = format_status(StatusReply(cluster=DEGRADED_FLEET))
    assert "fleet   host h1  redis redis://10.0.0.5:6379/0 (quotad)  degraded for" in text
    assert "mode share  hosts seen 2" in text
    assert "Redis unreachable: Connection refused (on_unreachable = share)" in text
    assert "provider:openai|requests|60" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:2] in ("h1", "h2")}
    assert rows["h2"][1:5] == ["0.4s", "ago", "5", "0"]


def test_one_host_status_has_no_fleet() -> None:
    assert "fleet" not in format_status(StatusReply())


def test_metrics_show_redis_health_degraded_mode_and_hosts() -> None:
    text = Metrics().exposition(StatusReply(cluster=DEGRADED_FLEET)).decode()
    assert 'quotad_cluster_health{health="degraded"} 1' in text
    assert 'quotad_cluster_health{health="connected"} 0' in text
    assert 'quotad_cluster_degraded{mode="share"} 1' in text
    assert "quotad_cluster_hosts_seen 2" in text
    assert 'quotad_cluster_held{window="provider:openai|requests|60"} 7' in text
    assert "quotad_cluster" not in Metrics().exposition(StatusReply()).decode()
