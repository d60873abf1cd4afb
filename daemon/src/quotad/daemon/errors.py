"""The one exception the daemon's request pipeline raises: :class:`RequestError`, carrying a wire
error code (DESIGN §5). The Unix-socket server turns it into an ``Error`` frame and the HTTP front
door into each API's own error body."""

from __future__ import annotations

from typing import Any

from quotad.protocol.errors import ErrorCode
from quotad.protocol.messages import Error


class RequestError(Exception):
    """A request failed; ``code`` says how, ``message`` says what and where."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        message = encodable(message)  # a provider's text may hold what no door can send
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details or {}
        self.request_id: str | None = None
        """The request id the pipeline gave the request that failed (its ledger row's), once
        it had one; the HTTP front door answers it as ``x-quotad-request-id``."""

    def to_reply(self, request_id: int) -> Error:
        """The ``Error`` frame answering request ``request_id``."""
        return Error(
            id=request_id,
            code=self.code,
            message=self.message,
            retry_after_s=self.retry_after_s,
            details=self.details,
        )

    def __repr__(self) -> str:
        return f"RequestError({self.code!r}, {self.message!r})"


def encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as escapes."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode()
