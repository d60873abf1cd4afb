"""The file ``quotad cache warm FILE.jsonl`` reads: recorded requests and their answers.

One JSON object per line (blank lines are skipped)::

    {"request": {"model": "fast", "messages": [{"role": "user", "content": "hi"}],
                 "max_tokens": 64},
     "response": {"content": "Hello!", "finish_reason": "stop", "target": "openai/gpt-4o-mini",
                  "usage": {"prompt_tokens": 9, "completion_tokens": 3}}}

``request`` has the fields of a chat request (``model`` and ``messages`` required; sampling
parameters, ``tools``, ``stream`` and ``extra`` take part in the cache key exactly as they do
for a live request). ``response`` may give ``content``, ``tool_calls``, ``finish_reason``
(default ``"stop"``), ``usage``, ``target`` (who answered; prices the entry), ``cost_usd``
(what a hit saves, from 0 to a billion USD, the most a day's spend row holds; default:
``usage`` at ``target``'s price, or at the price of the first target of ``model``) and, for a
streamed request, ``chunks`` (the deltas, in order).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from quotad.daemon.small_files import MAX_WARM_FILE_BYTES, FileTooLarge, read_small_file
from quotad.daemon.store.spend import MAX_DAY_USD
from quotad.protocol.messages import Chat, Usage


class WarmResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The recorded answer of one line."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = "stop"
    usage: Usage = msgspec.field(default_factory=Usage)
    target: str = ""
    cost_usd: Annotated[float, msgspec.Meta(ge=0, le=MAX_DAY_USD)] | None = None
    """What a hit saves, bounded as an amount of the ledger: a saving of 1e308 (or infinity,
    which MessagePack carries over the admin socket) was stored as it was, and each hit added
    it to its day's ``saved_usd``."""
    chunks: list[str] | None = None


class WarmEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One line: a recorded request and its answer."""

    request: Chat
    response: WarmResponse


_LINE_DECODER = msgspec.json.Decoder(WarmEntry)

WarmBatch = tuple[list[int], list[dict[str, Any]]]
"""Line numbers and the entries on them, as sent in one ``cache_warm`` action."""


def read_warm_file(path: str, batch_bytes: int) -> list[WarmBatch]:
    """Every entry of the file at ``path``, checked, in batches of about ``batch_bytes`` of
    JSON. Raises ValueError listing every problem as ``PATH:LINE: what``."""
    try:
        lines = read_small_file(path, MAX_WARM_FILE_BYTES).splitlines()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except FileTooLarge as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    problems: list[str] = []
    batches: list[WarmBatch] = []
    size = batch_bytes
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            _LINE_DECODER.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            problems.append(f"{path}:{number}: {error}")
            continue
        if size + len(line) > batch_bytes:
            batches.append(([], []))
            size = 0
        size += len(line)
        batches[-1][0].append(number)
        batches[-1][1].append(msgspec.json.decode(line))
    if problems:
        raise ValueError("\n".join(problems))
    if not batches:
        raise ValueError(f"{path}: no entries")
    return batches
