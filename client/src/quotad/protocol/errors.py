"""Error codes of the wire protocol (DESIGN §5) and what each one means."""

from __future__ import annotations

from typing import Final, Literal

ErrorCode = Literal[
    "bad_request",
    "bad_frame",
    "unknown_model",
    "unauthorized",
    "budget_exceeded",
    "rate_limited",
    "upstream_error",
    "timeout",
    "overloaded",
    "cancelled",
    "internal",
    "blocked",
]

ERROR_CODES: Final[dict[str, str]] = {
    "bad_request": "the request is invalid (a field is missing, of the wrong type or out of range)",
    "bad_frame": "a frame could not be read: too large, truncated or not MessagePack",
    "unknown_model": "the model is neither a group, a target nor a model one provider declares",
    "unauthorized": "the caller is not allowed to do this",
    "budget_exceeded": "a spend budget would be exceeded by this request",
    "rate_limited": "gate admission did not come within max_wait_s",
    "upstream_error": "every attempt at a provider failed",
    "timeout": "the request ran out of time",
    "overloaded": "the daemon's queues are full",
    "cancelled": "the request was cancelled",
    "internal": "a bug in quotad",
    "blocked": "a guardrail refused it: an entity whose action is block (kinds named, not values)",
}
