"""The HTTP front door (DESIGN §7): OpenAI- and Anthropic-compatible endpoints in front of the
broker, API keys naming apps, ``x-quotad-*`` headers, ``/metrics`` and ``/healthz``.

- :mod:`.server`: the server, its endpoints, auth, headers and error answers;
- :mod:`.openai`, :mod:`.anthropic`: each API's request and answer shapes;
- :mod:`.wire`: what both shapes share (body decoding, status and headers per error code);
- :mod:`.streams`: a stream's body, its events in one API's shape and its cost as a trailer;
- :mod:`.scrapes`: how many ``/metrics`` answers are written at once.

The HTTP/1.1 connection handling underneath is :mod:`quotad.daemon.net.http11`.
"""

from __future__ import annotations

from quotad.daemon.front_door.server import DEFAULT_APP, AppForKey, FrontDoor, HttpListenError

__all__ = ["DEFAULT_APP", "AppForKey", "FrontDoor", "HttpListenError"]
