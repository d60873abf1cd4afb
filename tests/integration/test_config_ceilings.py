"""The largest values the config takes are values the daemon runs with: a real daemon whose
sizes, prices and waits stand at their ceilings starts, serves a chat on both doors, reports
its status, prices the chat finitely and stops cleanly (a cache of 1e300 MB, which the config
once took, broke ``quotad status``, and so did a limit past 2**64; ``inf`` in a size crashed
``quotad serve``)."""

from __future__ import annotations

import math

import httpx

from quotad.client import Client
from quotad.daemon.config import MAX_COUNT, MAX_PRICE, MAX_SIZE
from quotad.protocol.messages import MAX_WAIT_S
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"


def test_a_daemon_at_every_ceiling_starts_serves_and_stops() -> None:
    port = free_port()
    with SimProcess() as sim:
        config = daemon_config(
            sim_provider_config(
                "sim",
                sim.base_url,
                extra=f"rpm = {MAX_COUNT}\ntpm = {MAX_COUNT}\nrpd = {MAX_COUNT}\n"
                f"tpd = {MAX_COUNT}\nmax_concurrency = {MAX_COUNT}",
            ),
            f'[prices."{MODEL}"]\ninput = {MAX_PRICE}\noutput = {MAX_PRICE}\n',
            f"[gates]\nmax_wait_s = {MAX_WAIT_S}\nmax_queue = {MAX_COUNT}\n",
            f"[retry]\nattempts = {MAX_COUNT}\nbudget_min = {MAX_COUNT}\n",
            f"[apps.ceilings]\nrpm = {MAX_COUNT}\ntpm = {MAX_COUNT}\n",
            daemon=f"max_db_mb = {MAX_SIZE}\ndrain_s = {MAX_WAIT_S}",
            http=f'listen = "127.0.0.1:{port}"\nauth = "none"\nmax_body_mb = {MAX_SIZE}\n'
            f"max_header_kb = {MAX_SIZE}",
            cache=f"max_mb = {MAX_SIZE}",
        )
        daemon = DaemonProcess(config)
        with daemon:
            with Client(str(daemon.socket_path), app="ceilings", timeout=30) as client:
                reply = client.chat(
                    MODEL, [{"role": "user", "content": "hi"}], max_tokens=5, max_wait_s=MAX_WAIT_S
                )
                status = client.status()
            answer = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "yo"}]},
                headers={"x-quotad-max-wait": f"{MAX_WAIT_S:g}"},
                timeout=30,
            )
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()
    assert math.isfinite(reply.cost_usd)
    assert reply.cost_usd > 0
    assert status.cache.max_bytes == int(MAX_SIZE * 1024 * 1024)
    assert answer.status_code == 200, answer.text
    assert [target.name for target in status.targets] == [MODEL]
