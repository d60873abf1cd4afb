"""The names of the fleet's keys in Redis. Every key of a fleet starts with the hash tag
``{key_prefix}`` so that the keys of one decision live in one slot (Redis Cluster) and
several fleets can share one Redis:

==============================================  =============================================
``{p}:epoch``                                   hash: id, created, resync_until (µs)
``{p}:hosts`` / ``{p}:load``                    hosts by last heartbeat; each host's load
``{p}:w:<gate>|<unit>|<window_s>:log`` / ``:st``  one window of a gate: its log and its state
``{p}:pause:<target>``                          server time until which a target is paused
``{p}:b:<scope>|<period>|<label>``              one budget of one period (per-host totals)
``{p}:spend:<day>``                             spend of one day by host, app, model and target
``{p}:events``                                  the pub/sub channel (``freed``, ``pause``)
==============================================  =============================================
"""

from __future__ import annotations

from typing import Final


def window_name(gate: str, unit: str, window_s: float) -> str:
    """A window's name in keys: ``provider:openai|requests|60``."""
    return f"{gate}|{unit}|{window_s:g}"


class FleetKeys:
    """Key names under one prefix. The fleet's fixed keys are computed once, here: naming
    them for a call builds no string."""

    __slots__ = ("channel", "epoch", "hosts", "load", "prefix", "tag")

    def __init__(self, prefix: str) -> None:
        self.prefix: Final = prefix
        self.tag: Final = "{" + prefix + "}"
        """``{prefix}``: the hash tag every key starts with."""
        self.epoch: Final = self.tag + ":epoch"
        """The fleet's epoch (gone when Redis restarted empty)."""
        self.hosts: Final = self.tag + ":hosts"
        """Sorted set: host → server time of its last heartbeat."""
        self.load: Final = self.tag + ":load"
        """Hash: host → its load, as it last reported it."""
        self.channel: Final = self.tag + ":events"
        """The pub/sub channel of the fleet."""

    def __repr__(self) -> str:
        return f"FleetKeys({self.prefix!r})"

    def window_log(self, name: str) -> str:
        """A window's log: entries scored by the server time they expire."""
        return f"{self.tag}:w:{name}:log"

    def window_state(self, name: str) -> str:
        """A window's state: its use, entries' amounts, external usage, waiters."""
        return f"{self.tag}:w:{name}:st"

    def pause(self, target: str) -> str:
        """Until when ``target`` is paused (a provider's 429)."""
        return f"{self.tag}:pause:{target}"

    def budget(self, scope: str, period: str, label: str) -> str:
        """One budget (``global`` or an app's) of one period (``day`` 2026-12-01)."""
        return f"{self.tag}:b:{scope}|{period}|{label}"

    def spend_day(self, day: str) -> str:
        """The fleet's spend of one day: ``[host, app, model, target]`` (JSON) → figures."""
        return f"{self.tag}:spend:{day}"
