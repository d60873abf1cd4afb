"""What a request may ask of a provider, held to what its reservation covers.

A request's gates and budgets are reserved for its prompt and its completion limit; what is
sent to the provider must be no more than that. The passthrough ``extra`` could say otherwise,
so it is checked here, before anything is reserved:

- the completion limit may be spelled ``max_tokens``, ``max_completion_tokens`` (OpenAI's
  newer name, which its reasoning models require) or ``max_output_tokens`` in ``extra``, beside
  the request's own ``max_tokens``. The request's limit is the largest of those it gives (the
  configured default when it gives none); it is what is reserved, and the providers send
  exactly it, under each spelling the request used that their wire format accepts;
- ``prediction`` (OpenAI's predicted outputs): predicted tokens that the answer does not use
  are billed as completion tokens, past ``max_tokens``; their bytes are added to the
  completion's bound;
- ``n`` other than 1 is refused: it multiplies the completion's cost, and quotad answers one
  choice per request (as the HTTP front door refuses it);
- ``model``, ``messages`` and ``stream``/``stream_options`` (``model`` and ``input`` for
  embeddings) are refused: quotad sets them itself from the request, and a model named there
  would be billed at a price nothing was reserved at, messages that were never counted.

A content part's or a tool's ``type`` decides how it is counted and sent (text, image, tool
result; a function or a server tool), so one that is not a string (an object, an array, a
number) is refused too, naming it (``messages[0].content[1].type: ...``, ``tools[0].type``), as
are the blocks of a ``tool_result`` part's content. (In ``extra``, a tool of no known type
is unmeasured: it reserves the context window.)

Everything else in ``extra`` passes through; what it adds to the prompt (tools, a system
prompt, a response format) is counted by :func:`~quotad.daemon.tokens.prompt_tokens_upper_bound`.
A chat with no messages, or an embedding request whose input is an empty list, is refused too:
every provider would refuse it, after a round trip. A refusal is ``bad_request`` naming the
field (``extra.n: ...``).

Names (an app, a user, a model or target, a tag) are identifiers that reach the log, the ledger
and the operator's terminal, so :func:`check_name` refuses one that holds a control character or a
bidirectional override: a new line in a model name wrote a log line of its choosing, an escape
sequence ran in the terminal of whoever read ``quotad spend``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from quotad.daemon.errors import RequestError
from quotad.daemon.tokens import (
    chat_prompt_tokens_upper_bound,
    input_tokens_upper_bound,
    value_tokens_upper_bound,
)
from quotad.protocol.framing import MAX_FREE_FORM_ITEMS, too_many_items
from quotad.protocol.messages import MAX_NAME, Chat, Embed
from quotad.protocol.names import control_character_in

TOKEN_LIMIT_FIELDS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""Spellings of a completion limit in ``extra``."""
REFUSED_CHAT_EXTRA: Final = {
    "model": "the model is the request's target; name another target or group instead",
    "messages": "the messages are the request's own; send them as its messages",
    "stream": "ask for a stream with the request's stream (chat_stream), not in extra",
    "stream_options": "quotad asks for the usage of every stream itself",
}
REFUSED_EMBED_EXTRA: Final = {
    "model": "the model is the request's target; name another target or group instead",
    "input": "the inputs are the request's own; send them as its input",
}


def check_name(field: str, name: str) -> None:
    """Refuse a name that holds a control character or a bidirectional override, saying
    which and where (``bad_request`` naming ``field``; :mod:`quotad.protocol.names`)."""
    found = control_character_in(name)
    if found is not None:
        raise RequestError(
            "bad_request",
            f"{field}: a name cannot hold control characters ({found})",
            details={"field": field},
        )


def check_bounded_name(field: str, name: str) -> None:
    """:func:`check_name`, and refuse a name of more than :data:`MAX_NAME` characters: for a
    name that no message's bounds checked (one in a URL path)."""
    if len(name) > MAX_NAME:
        raise RequestError(
            "bad_request",
            f"{field}: a name is at most {MAX_NAME} characters, got {len(name)}",
            details={"field": field},
        )
    check_name(field, name)


def check_names(request: Chat | Embed) -> None:
    """:func:`check_name` of a request's model, app, user and tags."""
    check_name("model", request.model)
    check_name("app", request.app)
    check_name("user", request.user)
    for index, tag in enumerate(request.tags):
        check_name(f"tags[{index}]", tag)


def _refuse(field: str, why: str) -> RequestError:
    return RequestError("bad_request", f"extra.{field}: {why}", details={"field": f"extra.{field}"})


MAX_CHAT_ITEMS: Final = 10_000
"""The most messages a chat may hold, and the most content parts (those nested in parts at any
depth, and tool calls, included) and tools: each is read by every step (screening,
estimating, bounding, hashing), and one request of 550,000 one-letter parts (15 MB, within
``http.max_body_mb``) held the event loop for 3 s. Long agent conversations hold hundreds to
a few thousand."""


def check_chat_size(request: Chat) -> None:
    """Refuse a chat of more than :data:`MAX_CHAT_ITEMS` messages, content parts or tools,
    naming where the count passes the bound, before any step reads them all. Parts are
    counted wherever the steps read them (:mod:`quotad.daemon.guardrails.walk`): in a part's
    ``content`` (a list, or one part) and ``source.content``, at any depth, and a message's
    ``tool_calls``; the count stops at the bound. Then :func:`check_free_form_size`."""
    if len(request.messages) > MAX_CHAT_ITEMS:
        raise _too_many("messages", "messages", len(request.messages))
    if request.tools is not None and len(request.tools) > MAX_CHAT_ITEMS:
        raise _too_many("tools", "tools", len(request.tools))
    parts = 0
    for index, message in enumerate(request.messages):
        if message.tool_calls:
            parts += len(message.tool_calls)
            if parts > MAX_CHAT_ITEMS:
                raise _too_many(f"messages[{index}].tool_calls", "content parts", parts)
        content = message.content
        if not isinstance(content, list):
            continue
        unread: list[Any] = [content]
        while unread:
            items = unread.pop()
            parts += len(items)
            if parts > MAX_CHAT_ITEMS:
                raise _too_many(f"messages[{index}].content", "content parts", parts)
            for part in items:
                if not isinstance(part, dict):
                    continue
                nested = part.get("content")
                if isinstance(nested, list):
                    unread.append(nested)
                elif isinstance(nested, dict):  # a result holding one part
                    unread.append([nested])
                source = part.get("source")
                if isinstance(source, dict) and isinstance(source.get("content"), list):
                    unread.append(source["content"])
    check_free_form_size(request)


def check_free_form_size(request: Chat | Embed) -> None:
    """Refuse a request one of whose free-form values holds more than
    :data:`~quotad.protocol.framing.MAX_FREE_FORM_ITEMS` items, naming it, before any step
    reads them (a frame's top-level ones were counted before it was decoded; a front door
    body's, each content part and each tool call are counted here). The count stops past the
    bound."""
    _check_items("extra", request.extra)
    if isinstance(request, Embed):
        return
    _check_items("tool_choice", request.tool_choice)
    _check_items("response_format", request.response_format)
    _check_items("tools", request.tools)
    for position, message in enumerate(request.messages):
        if isinstance(message.content, list):
            _check_each(f"messages[{position}].content", message.content)
        if message.tool_calls:
            _check_each(f"messages[{position}].tool_calls", message.tool_calls)


def _check_each(field: str, values: list[Any]) -> None:
    """:func:`_check_items` of each of ``values``, the items of ``field``."""
    for index, value in enumerate(values):
        _check_items(field, value, index)


def _check_items(field: str, value: object, index: int | None = None) -> None:
    """Refuse ``value`` (``field``, or its item ``index``) if it holds more than
    :data:`MAX_FREE_FORM_ITEMS` items."""
    if not isinstance(value, dict | list):
        return
    count = 0
    unread: list[Any] = [value]
    while unread:
        items = unread.pop()
        count += len(items)
        if count > MAX_FREE_FORM_ITEMS:
            where = field if index is None else f"{field}[{index}]"
            message = too_many_items(where, MAX_FREE_FORM_ITEMS)
            raise RequestError("bad_request", message, details={"field": where})
        for item in items.values() if isinstance(items, dict) else items:
            if isinstance(item, dict | list):
                unread.append(item)


MAX_EMBED_INPUTS: Final = MAX_CHAT_ITEMS
"""The most inputs an embedding request may hold: each is read by every step (screening,
bounding, estimating, hashing; the bound again for the budgets and for the ledger's journal),
and one request of 2,000,000 empty inputs (a 1.9 MiB frame) held the event loop 3.7 s. No
provider takes as many: OpenAI takes 2,048 a request, most others fewer."""


def check_embed_size(request: Embed) -> None:
    """Refuse an embedding request of more than :data:`MAX_EMBED_INPUTS` inputs, before any
    step reads them; then :func:`check_free_form_size`."""
    if isinstance(request.input, list) and len(request.input) > MAX_EMBED_INPUTS:
        raise RequestError(
            "bad_request",
            f"input: an embedding request holds at most {MAX_EMBED_INPUTS:,} inputs; this one "
            f"holds {len(request.input):,}",
            details={"field": "input"},
        )
    check_free_form_size(request)


def _too_many(field: str, what: str, count: int) -> RequestError:
    return RequestError(
        "bad_request",
        f"{field}: a chat holds at most {MAX_CHAT_ITEMS:,} {what}; this one holds {count:,} "
        "by here",
        details={"field": field},
    )


def check_chat_shape(request: Chat) -> None:
    """Refuse a chat with no messages (every provider would, after a round trip), and a
    content part, a block of a ``tool_result`` part's content, or a tool, whose ``type`` is
    there but not a string (see the module docstring)."""
    if not request.messages:
        raise RequestError(
            "bad_request",
            "messages: a chat needs at least one message",
            details={"field": "messages"},
        )
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            _check_part_types(message.content, f"messages[{index}].content")
    if request.tools:
        _check_part_types(request.tools, "tools")


def _check_part_types(parts: list[Any], where: str) -> None:
    for position, part in enumerate(parts):
        if not (isinstance(part, dict) or isinstance(part, Mapping)):  # noqa: SIM101
            continue  # a dict first, what JSON decodes to: no ABC's check (a third of the time)
        kind = part.get("type")
        if kind is not None and type(kind) is not str:
            field = f"{where}[{position}].type"
            message = f"{field}: expected a string, got {_json_kind(kind)}"
            raise RequestError("bad_request", message, details={"field": field})
        if kind == "tool_result" and isinstance(part.get("content"), list):
            _check_part_types(part["content"], f"{where}[{position}].content")


def _json_kind(value: Any) -> str:
    """What ``value`` is, in JSON's words."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def completion_limit(request: Chat, default_max_tokens: int) -> int:
    """The completion token limit of a chat request, after checking its ``extra`` (see the
    module docstring): what is reserved, and what the provider is sent."""
    extra = request.extra
    if not extra:
        return request.max_tokens or default_max_tokens
    for field, why in REFUSED_CHAT_EXTRA.items():
        if field in extra:
            raise _refuse(field, why)
    if "n" in extra and (type(extra["n"]) is not int or extra["n"] != 1):
        raise _refuse("n", "quotad answers one choice per request; leave n out or set 1")
    limits = [request.max_tokens] if request.max_tokens is not None else []
    for field in TOKEN_LIMIT_FIELDS:
        if field in extra:
            value = extra[field]
            if type(value) is not int or value <= 0:
                raise _refuse(field, f"expected a positive integer, got {value!r}"[:200])
            limits.append(value)
    return max(limits) if limits else default_max_tokens


def completion_tokens_upper_bound(limit: int, extra: Mapping[str, Any]) -> int:
    """The most completion tokens a provider can bill a chat request whose limit is ``limit``:
    the limit, and the bytes of a ``prediction`` (billed when the answer rejects it)."""
    prediction = extra.get("prediction") if extra else None
    if prediction is None:
        return limit
    return limit + value_tokens_upper_bound(prediction)


def check_embed_shape(request: Embed) -> None:
    """Refuse an embedding request with no input (every provider would, after a round trip),
    and the passthrough fields that quotad sets itself."""
    if isinstance(request.input, list) and not request.input:
        raise RequestError(
            "bad_request",
            "input: an embedding request needs at least one input",
            details={"field": "input"},
        )
    check_embed_extra(request.extra)


def check_embed_extra(extra: Mapping[str, Any]) -> None:
    """Refuse the passthrough fields of an embedding request that quotad sets itself."""
    for field, why in REFUSED_EMBED_EXTRA.items():
        if field in extra:
            raise _refuse(field, why)


def billable_tokens(request: Chat | Embed, max_tokens: int) -> tuple[int, int]:
    """The most prompt and completion tokens a provider can bill a request whose completion
    limit is ``max_tokens`` (see :mod:`quotad.daemon.tokens`): what its budgets reserve. An
    embedding request's inputs are its prompt; it has no completion."""
    if isinstance(request, Embed):
        return input_tokens_upper_bound(embed_inputs(request)), 0
    prompt = chat_prompt_tokens_upper_bound(request)
    return prompt, completion_tokens_upper_bound(max_tokens, request.extra)


def embed_inputs(request: Embed) -> list[str]:
    """The texts an embedding request asks vectors for, as a list."""
    return [request.input] if isinstance(request.input, str) else request.input


def check_size(request: Chat | Embed) -> None:
    """Refuse a request larger than its bounds (:func:`check_chat_size`,
    :func:`check_embed_size`): the broker's first check, before any step reads its parts."""
    if isinstance(request, Chat):
        check_chat_size(request)
    else:
        check_embed_size(request)
