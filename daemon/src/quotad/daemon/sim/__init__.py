"""``quotad sim``: a simulated LLM provider for tests, benchmarks and the demo.

It speaks the OpenAI wire format (``POST /v1/chat/completions`` plain and SSE, ``POST
/v1/embeddings``, ``GET /v1/models``) and the Anthropic one (``POST /v1/messages`` plain and
SSE; ``GET /v1/models`` in Anthropic's shape when the request has ``anthropic-version``), each
also without the ``/v1`` prefix. Any model name is accepted. Answers are deterministic: ``sim
reply to: <first words of the last user message>`` padded to 16 words, cut to ``max_tokens``
words (then finish_reason ``length`` / stop_reason ``max_tokens``); one word is one completion
token; prompt tokens are :mod:`quotad.daemon.tokens` estimates, or with
``count_tokens="bytes"`` (``--count-tokens bytes``) one per UTF-8 byte of every string of the
prompt, the most a byte-level tokenizer can count (budget tests use it as the worst case).
Answers report that usage; ``report_usage`` (``--report-usage``) ``prompt`` reports the
prompt's alone, ``none`` none at all, as servers that leave it out (an Anthropic stream's
``message_start`` and ``message_delta`` included; the OpenAI usage chunk that
``stream_options.include_usage`` asks for is then not sent). A
request with ``tools`` whose last user message has the word "tool" is answered with one call to
the first tool. Embeddings are unit vectors drawn from a hash of the input (8 dimensions unless
``dimensions``). Errors come in each API's own body shape. With ``api_key`` set, a request
needs it as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; otherwise a 401 quotes the key
it got, as some servers do (so tests see that quotad keeps keys out of what it reports).

Its own limits are an exact sliding-window log: ``rpm`` requests and ``tpm`` tokens per
``window_s`` (0: unlimited), tokens counted at arrival as estimated prompt + ``max_tokens``
(16 when absent), as OpenAI counts. Over a limit: 429 with ``retry-after`` (+ ``-ms``),
nothing admitted. Answers carry OpenAI's ``x-ratelimit-*`` headers or Anthropic's
``anthropic-ratelimit-*`` ones (the single token limit is reported under the ``tokens``,
``input-tokens`` and ``output-tokens`` names), for the limits that are set; a reset is the time
until the oldest admission leaves the window. Failed requests count, as they do at OpenAI.

Each answer waits ``latency_ms`` ± ``jitter_ms``; streams wait ``chunk_delay_ms`` between
chunks. Faults, drawn per request from a seeded RNG: ``fail_rate`` → 500, ``hang_rate`` → no
answer until the client leaves, ``reset_rate`` → TCP reset, ``break_stream_rate`` → a stream
cut after two chunks. Faults and latency apply to ``/models`` too (health checks see them).

Control: ``POST /sim/control`` with any of :data:`CONTROL_FIELDS` changes them live and
answers the settings; ``GET /sim/stats`` answers the counts and the most requests and tokens
admitted in any ``window_s`` window so far. ``--log FILE`` appends one JSON line per request
(``t``, ``mono`` at arrival, ``path``, ``model``, ``status`` (0: no answer), ``tokens``,
``app`` from ``x-quotad-app``, and ``fault`` when one was injected).

Modules: :mod:`.settings` (what it is told, what changes live), :mod:`.limits` (the
sliding-window log and the rate-limit headers), :mod:`.replies` (the deterministic answers),
:mod:`.openai` and :mod:`.anthropic` (each wire format's requests, answers and streams),
:mod:`.record` (what is kept of each request: the counts ``/sim/stats`` answers, the log),
:mod:`.server` (:class:`SimProvider`: routing, faults, latency, control, stats).
"""

from __future__ import annotations

from quotad.daemon.sim.limits import SlidingWindowLog, go_duration
from quotad.daemon.sim.server import SimProvider, run_sim
from quotad.daemon.sim.settings import CONTROL_FIELDS, SimControl, SimSettings

__all__ = [
    "CONTROL_FIELDS",
    "SimControl",
    "SimProvider",
    "SimSettings",
    "SlidingWindowLog",
    "go_duration",
    "run_sim",
]
