"""Where text lives in a request or a reply, and how a rewritten copy of one is made.

The functions here visit every piece of text a provider would read, in a fixed order, and
hand it to a :class:`TextRewriter`; what the rewriter returns replaces it in a *copy*: the
caller's objects are never changed, and whatever the rewriter left as it was (the same object
back) is shared, not copied, so a request with nothing to rewrite costs no allocation.

What is visited:

- each message's ``content``: a string, or every content part (any type) through its
  ``text``, ``refusal`` and ``thinking``, a document's ``title``, ``context`` and text
  ``source``, a nested ``content`` (tool results, search results: a string, more parts, or
  one part), the ``input`` (a JSON value) of a ``tool_use``, ``server_tool_use`` or
  ``mcp_tool_use`` part;
- each tool call's ``function.arguments`` (JSON text, or a JSON value) and a custom tool
  call's ``input``; a ``tool`` message's content (tool results) like any content;
- an embedding request's inputs.

Not visited: message ``name`` and ``tool_call_id``, tool definitions, ``stop``,
``response_format`` and ``extra`` (the caller's own configuration, not conversation), and
images, audio and files (binary data and URLs).
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from quotad.protocol.messages import Chat, ChatMessage, Embed

Content = str | list[dict[str, Any]] | None

_PART_TEXT_KEYS = ("text", "refusal", "title", "context", "thinking")


class TextRewriter(Protocol):
    """What rewrites the text found: plain text, JSON text, and decoded JSON values."""

    def text(self, text: str) -> str:
        """``text`` rewritten (the same object when nothing changed)."""

    def json(self, text: str) -> str:
        """A JSON document held in a string, rewritten as JSON (the same object when
        nothing changed)."""

    def value(self, value: Any) -> Any:
        """A decoded JSON value rewritten (the same object when nothing changed)."""


def rewrite_chat(chat: Chat, rewriter: TextRewriter) -> Chat:
    """``chat`` with the text of its messages rewritten."""
    messages = rewrite_messages(chat.messages, rewriter)
    if messages is chat.messages:
        return chat
    return msgspec.structs.replace(chat, messages=messages)


def rewrite_embed(embed: Embed, rewriter: TextRewriter) -> Embed:
    """``embed`` with its inputs rewritten."""
    if isinstance(embed.input, str):
        text = rewriter.text(embed.input)
        return embed if text is embed.input else msgspec.structs.replace(embed, input=text)
    inputs = _rewrite_list(embed.input, rewriter.text)
    return embed if inputs is embed.input else msgspec.structs.replace(embed, input=inputs)


def rewrite_messages(messages: list[ChatMessage], rewriter: TextRewriter) -> list[ChatMessage]:
    """``messages`` with their text rewritten (the same list when nothing changed)."""
    return _rewrite_list(messages, lambda message: _rewrite_message(message, rewriter))


def _rewrite_message(message: ChatMessage, rewriter: TextRewriter) -> ChatMessage:
    content = rewrite_content(message.content, rewriter)
    tool_calls = message.tool_calls
    if tool_calls is not None:
        tool_calls = rewrite_tool_calls(tool_calls, rewriter)
    if content is message.content and tool_calls is message.tool_calls:
        return message
    return msgspec.structs.replace(message, content=content, tool_calls=tool_calls)


def rewrite_content(content: Content, rewriter: TextRewriter) -> Content:
    """A message's (or a tool result's) content rewritten."""
    if isinstance(content, str):
        return rewriter.text(content)
    if isinstance(content, list):
        return _rewrite_list(content, lambda part: _rewrite_part(part, rewriter))
    return content


def _rewrite_part(part: Any, rewriter: TextRewriter) -> Any:
    if not isinstance(part, dict):
        return part
    changes: dict[str, Any] = {}
    for key in _PART_TEXT_KEYS:
        value = part.get(key)
        if isinstance(value, str) and (new := rewriter.text(value)) is not value:
            changes[key] = new
    nested = part.get("content")
    if isinstance(nested, str | list):
        content = rewrite_content(nested, rewriter)
        if content is not nested:
            changes["content"] = content
    elif isinstance(nested, dict):  # a result holding one part (web_fetch_tool_result)
        inner_part = _rewrite_part(nested, rewriter)
        if inner_part is not nested:
            changes["content"] = inner_part
    source = part.get("source")
    if isinstance(source, dict):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            data = rewriter.text(source["data"])
            if data is not source["data"]:
                changes["source"] = {**source, "data": data}
        elif isinstance(source.get("content"), list):
            inner = rewrite_content(source["content"], rewriter)
            if inner is not source["content"]:
                changes["source"] = {**source, "content": inner}
    kind = part.get("type")
    if "input" in part and isinstance(kind, str) and kind.endswith("tool_use"):  # mcp_ too
        value = rewriter.value(part["input"])
        if value is not part["input"]:
            changes["input"] = value
    return {**part, **changes} if changes else part


def rewrite_tool_calls(calls: list[dict[str, Any]], rewriter: TextRewriter) -> list[dict[str, Any]]:
    """Tool calls (whole, or a stream's fragments) with their arguments rewritten."""
    return _rewrite_list(calls, lambda call: _rewrite_tool_call(call, rewriter))


def _rewrite_tool_call(call: Any, rewriter: TextRewriter) -> Any:
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict) and "arguments" in function:
        arguments = function["arguments"]
        if isinstance(arguments, str):
            new = rewriter.json(arguments)
        else:
            new = rewriter.value(arguments)
        if new is not arguments:
            return {**call, "function": {**function, "arguments": new}}
    custom = call.get("custom")
    if isinstance(custom, dict) and isinstance(custom.get("input"), str):
        text = rewriter.text(custom["input"])
        if text is not custom["input"]:
            return {**call, "custom": {**custom, "input": text}}
    return call


def _rewrite_list(items: list[Any], rewrite: Any) -> list[Any]:
    """``items`` with each rewritten; the same list when every item came back as it was."""
    rewritten: list[Any] | None = None
    for index, item in enumerate(items):
        new = rewrite(item)
        if new is not item:
            if rewritten is None:
                rewritten = list(items)
            rewritten[index] = new
    return items if rewritten is None else rewritten
