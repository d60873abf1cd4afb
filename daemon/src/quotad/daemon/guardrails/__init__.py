"""Guardrails (DESIGN §12): what must not leave the machine, found locally and offline.

- :mod:`~quotad.daemon.guardrails.detectors` (with :mod:`.secret_formats` and
  :mod:`.checksums`): finding entities in a text;
- :mod:`~quotad.daemon.guardrails.placeholders`: what a masked value becomes;
- :mod:`~quotad.daemon.guardrails.masking`: acting on what is found, for one request;
- :mod:`~quotad.daemon.guardrails.walk`: where text lives in requests and replies;
- :mod:`~quotad.daemon.guardrails.restore`: output rules and restoring, whole and streamed;
- :mod:`~quotad.daemon.guardrails.policy`: the config as :class:`Guard` / :class:`AppGuard`;
- :mod:`~quotad.daemon.guardrails.blocked`: the refusal, :class:`Blocked`.
"""

from __future__ import annotations

from quotad.daemon.guardrails.blocked import Blocked
from quotad.daemon.guardrails.detectors import Entity, find_entities
from quotad.daemon.guardrails.policy import AppGuard, Checked, Guard, Policy
from quotad.daemon.guardrails.restore import Restorer, StreamRestorer

__all__ = [
    "AppGuard",
    "Blocked",
    "Checked",
    "Entity",
    "Guard",
    "Policy",
    "Restorer",
    "StreamRestorer",
    "find_entities",
]
