"""A daemon whose config file and socket stand in a directory whose name is not UTF-8 (Latin-1,
as an old system names it) serves, reports and reloads: such bytes reach Python as lone
surrogates, which no frame, log line or database row can carry. Before, every `quotad status`
was `internal` ("could not encode its StatusReply") and a reload's audit row failed with a
traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from quotad.client import Client
from tests.support.daemon import DaemonProcess

LATIN1_NAME = os.fsdecode(b"r\xe9pertoire")
SHOWN = "r\\xe9pertoire"
"""How the daemon shows that name: its byte as an escape."""


def test_a_directory_named_in_latin1_holds_a_daemon_that_reports_and_reloads() -> None:
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        directory = top / LATIN1_NAME
        directory.mkdir()
        config = f'[daemon]\nstate_dir = "{top}/state"\n[http]\nlisten = ""\n'
        daemon = DaemonProcess(config, directory=directory)
        with daemon:
            with Client(daemon.socket_path, app="paths", timeout=30) as client:
                status = client.status()
            reload = subprocess.run(
                [sys.executable, "-m", "quotad.daemon.cli", "reload"],
                capture_output=True,
                env=daemon.env,
                timeout=60,
            )
            with Client(daemon.socket_path, app="paths", timeout=30) as client:
                events = [event.message for event in client.status().events]
        log = daemon.log()
    finally:
        shutil.rmtree(top)
    assert status.socket == f"{top}/{SHOWN}/q.sock"
    assert status.config_path == f"{top}/{SHOWN}/quotad.toml"
    assert reload.returncode == 0, reload.stderr
    assert f"applied: config reloaded ({top}/{SHOWN}/quotad.toml)".encode() in reload.stdout
    assert any(f"reloaded {top}/{SHOWN}/quotad.toml" in message for message in events)
    assert "Traceback" not in log
    assert "could not" not in log
