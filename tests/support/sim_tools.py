"""Tool definitions for requests to ``quotad sim``, which calls the first tool it is offered
with each property's ``default`` as its argument (a sample of its type when there is none)."""

from __future__ import annotations

from typing import Any


def send_tool(to: str) -> dict[str, Any]:
    """An OpenAI function tool ``send(to, n)``: the sim calls it with ``to`` as given here and
    ``n`` its sample integer, 1."""
    return {
        "type": "function",
        "function": {
            "name": "send",
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string", "default": to},
                    "n": {"type": "integer"},
                },
            },
        },
    }
