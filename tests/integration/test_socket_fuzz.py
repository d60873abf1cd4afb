"""Fuzzing the Unix socket of a real ``quotad serve`` (in front of a real ``quotad sim``): a few
thousand seeded random and mutated frames (see :mod:`tests.support.fuzz`) on hundreds of
connections, then permits granted and settled with odd values
(:mod:`tests.support.fuzz_extremes`). The daemon must answer each with replies or a close,
never die, never log a traceback, and serve a client connected before and one connecting after
as before. ``bench/fuzz_frames.py`` runs the same for longer."""

from __future__ import annotations

import random

import pytest

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.fuzz import FUZZ_TABLES, FrameMaker, FuzzTally, send_batches
from tests.support.fuzz_extremes import play_permits
from tests.support.sim import SimProcess

FRAMES = 3000
PERMITS = 60
MESSAGES = [{"role": "user", "content": "still there?"}]


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_frames_never_end_the_daemon(seed: int) -> None:
    with SimProcess() as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra="rpm = 100000"), FUZZ_TABLES
        )
        with DaemonProcess(config) as daemon, Client(socket=daemon.socket_path) as bystander:
            bystander.status()
            tally = FuzzTally()
            send_batches(daemon.socket_path, FrameMaker(seed), FRAMES, tally)
            assert daemon.process is not None
            assert daemon.process.poll() is None, daemon.log()[-3000:]
            assert tally.frames >= FRAMES
            assert tally.replies > tally.connections  # it answered, not only closed
            granted, settled = play_permits(daemon.socket_path, random.Random(seed), PERMITS)
            assert granted > PERMITS / 2
            assert settled > PERMITS / 3
            assert bystander.chat("sim/m", MESSAGES, max_tokens=4).content
            with Client(socket=daemon.socket_path) as fresh:
                assert fresh.chat("sim/m", MESSAGES, max_tokens=4).content
                assert fresh.status().connections == 2
            assert "Traceback" not in daemon.log()
