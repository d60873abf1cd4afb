"""A daemon joins its fleet (DESIGN §10) as the runtime wires it: three daemons on one Valkey
see each other; a Redis that refuses the host's password stops the start with exit 1 and a
clear line (no traceback); one host without ``[cluster]`` never imports the Redis client."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from quotad.protocol.messages import StatusReply
from tests.support.daemon import DaemonProcess, daemon_config
from tests.support.fleet import ONE_FLEET_AT_A_TIME, Fleet, have_valkey
from tests.support.valkey import running_valkey

pytestmark = [
    ONE_FLEET_AT_A_TIME,
    pytest.mark.skipif(not have_valkey(), reason="no valkey-server or redis-server"),
]


def joined_as(index: int, status: StatusReply, redis_url: str) -> bool:
    """Whether host ``h{index + 1}`` shows the whole fleet of three, connected, no problem."""
    cluster = status.cluster
    return (
        cluster is not None
        and (cluster.host, cluster.health, cluster.mode) == (f"h{index + 1}", "connected", "fleet")
        and cluster.hosts_seen == 3
        and sorted(h.name for h in cluster.hosts) == ["h1", "h2", "h3"]
        and cluster.redis_url == redis_url
        and status.problems == []
    )


def test_three_daemons_join_one_fleet_and_show_it_in_status() -> None:
    with Fleet(hosts=3) as fleet:
        # a loaded machine may delay a heartbeat or see a slow Redis call (degraded for a
        # moment): wait, bounded, for every host to show the whole fleet, connected
        deadline = time.monotonic() + 30
        while True:
            statuses = fleet.statuses()
            if all(joined_as(i, s, fleet.valkey.url) for i, s in enumerate(statuses)):
                break
            assert time.monotonic() < deadline, [(s.cluster, s.problems) for s in statuses]
            time.sleep(0.1)


def test_a_redis_that_refuses_the_password_is_a_start_up_error() -> None:
    with running_valkey(password="right-one") as valkey:
        config = daemon_config(
            f'[cluster]\nredis_url = "{valkey.url}"\nredis_password_env = "QD_REDIS_PW"\n'
        )
        daemon = DaemonProcess(config, env={"QD_REDIS_PW": "wrong-one"})
        try:
            process = daemon.spawn()
            assert process.wait(timeout=30) == 1
            log = daemon.log()
        finally:
            daemon.__exit__(None, None, None)
    assert "cannot start: Redis at " in log, log
    assert "refused this host's credentials" in log, log
    assert "Traceback" not in log, log
    assert "wrong-one" not in log, log


def test_a_password_variable_that_is_not_set_is_a_config_error() -> None:
    config = daemon_config(
        '[cluster]\nredis_url = "redis://127.0.0.1:1/0"\nredis_password_env = "QD_NOT_SET_PW"\n'
    )
    daemon = DaemonProcess(config, env={"QD_NOT_SET_PW": ""})
    try:
        assert daemon.spawn().wait(timeout=30) == 2
        log = daemon.log()
    finally:
        daemon.__exit__(None, None, None)
    assert "cluster.redis_password_env: the environment variable QD_NOT_SET_PW is not set" in log
    assert "Traceback" not in log


def test_one_host_without_cluster_never_imports_the_redis_client() -> None:
    code = (
        "import sys, quotad.daemon.runtime as r, quotad.daemon.config as c\n"
        "config = c.parse_config({'http': {'listen': ''}})\n"
        "r.Daemon(config, __import__('pathlib').Path('/tmp/x'))\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'redis' or m.startswith('quotad.daemon.cluster.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['quotad.daemon.cluster.settings']", out.stdout
