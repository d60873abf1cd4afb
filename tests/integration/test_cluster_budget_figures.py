"""A fleet's budget whose figures cannot be counted, end to end with real processes (one
Valkey, the sim, two ``quotad serve``): a limit past what the fleet counts (a billion USD), and
a field of the budget's hash in Valkey that holds no amount, as a damaged or hand-edited hash
(or a buggy host) leaves one. Neither may fail a request, and the field may never count as
less than it is: while it is there, the fleet's budget refuses, saying where it is."""

from __future__ import annotations

import shlex
import time

import pytest
import redis

from quotad.client import BudgetExceededError, Client
from quotad.daemon.cluster.keys import FleetKeys
from quotad.daemon.store.budgets import Calendar
from tests.support.fleet import NEEDS_VALKEY, ONE_FLEET_AT_A_TIME, Fleet

pytestmark = [ONE_FLEET_AT_A_TIME, NEEDS_VALKEY]

MESSAGES = [{"role": "user", "content": "count me"}]
HUGE_BUDGET = """\
[budgets]
daily_usd = 1e300
[prices."sim/m"]
input = 10.0
output = 100.0
"""


def test_a_limit_past_a_billion_usd_serves_and_a_field_of_no_amount_refuses_naming_it() -> None:
    """Before, ``daily_usd = 1e300`` (the config takes any finite limit) failed every request
    of the fleet ``internal`` (OverflowError turning the limit into nano-USD); and a field
    ``s:<host>`` holding ``nan`` (or below 0, or no number) counted as $0 or as money given
    back, so the other hosts borrowed past the limit."""
    with Fleet(hosts=2, extra=HUGE_BUDGET) as fleet:
        first, second = fleet.daemons
        with Client(socket=first.socket_path, app="a") as client:
            assert client.chat("sim/m", MESSAGES, max_tokens=4).cost_usd > 0
        label = Calendar().day(time.time())
        key = FleetKeys("fleet").budget("global", "day", label)
        with redis.Redis(port=fleet.valkey.port) as valkey:
            valkey.hset(key, "s:elsewhere", "nan")
            with Client(socket=second.socket_path, app="a") as client:
                with pytest.raises(BudgetExceededError) as refused:
                    client.chat("sim/m", MESSAGES, max_tokens=4)
                assert f"Redis key {key} field 's:elsewhere' holds 'nan'" in refused.value.message
                assert f"redis-cli HDEL {shlex.quote(key)} s:elsewhere" in refused.value.message
                valkey.hdel(key, "s:elsewhere")
                assert client.chat("sim/m", MESSAGES, max_tokens=4).cost_usd > 0
        for daemon in fleet.daemons:
            assert "Traceback" not in daemon.log()
            assert "it holds at 1e+09 USD across the fleet" in daemon.log()
