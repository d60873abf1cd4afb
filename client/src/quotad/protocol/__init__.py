"""The quotad wire protocol: messages, frames and error codes (DESIGN §5).

Shared by the daemon and its clients; imports nothing else of quotad.
"""

from __future__ import annotations

from quotad.protocol.errors import ERROR_CODES, ErrorCode
from quotad.protocol.framing import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    FrameTooLarge,
    MessageInvalid,
    reply_decoder,
    request_decoder,
)
from quotad.protocol.messages import *  # noqa: F403
from quotad.protocol.messages import PROTOCOL_VERSION, Reply, Request

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameDecoder",
    "FrameEncoder",
    "FrameError",
    "FrameTooLarge",
    "MessageInvalid",
    "Reply",
    "Request",
    "reply_decoder",
    "request_decoder",
]
