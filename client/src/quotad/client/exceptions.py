"""Exceptions raised by the quotad clients: one per wire error code, plus the client's own.

Exception tree::

    QuotadError                     .code .message .retry_after_s .details
    ├── BadRequestError             bad_request
    ├── BadFrameError               bad_frame
    ├── UnknownModelError           unknown_model
    ├── UnauthorizedError           unauthorized
    ├── BudgetExceededError         budget_exceeded
    ├── RateLimitedError            rate_limited
    ├── UpstreamError               upstream_error
    ├── RequestTimeoutError         timeout
    ├── OverloadedError             overloaded
    ├── RequestCancelledError       cancelled
    ├── InternalError               internal
    ├── BlockedError                blocked (a guardrail: ``details["kinds"]`` names what)
    └── DaemonUnavailableError      daemon_unavailable (client side: no daemon answered)
        └── ConnectionLostError     connection_lost (dropped with a request in flight)

An ``Error`` reply from the daemon becomes the class of its code (:func:`error_from_reply`);
a code this client does not know becomes a plain :class:`QuotadError` carrying that code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from quotad.protocol.errors import ERROR_CODES
from quotad.protocol.messages import Error

__all__ = [
    "BadFrameError",
    "BadRequestError",
    "BlockedError",
    "BudgetExceededError",
    "ConnectionLostError",
    "DaemonUnavailableError",
    "InternalError",
    "OverloadedError",
    "QuotadError",
    "RateLimitedError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "UnauthorizedError",
    "UnknownModelError",
    "UpstreamError",
    "error_from_reply",
]


class QuotadError(Exception):
    """A request through quotad failed; ``code`` says why (DESIGN §5 error codes)."""

    default_code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.code: str = code or self.default_code
        self.message: str = message or ERROR_CODES.get(self.code, self.code)
        self.retry_after_s = retry_after_s
        self.details: dict[str, Any] = details if details is not None else {}
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.code, self.retry_after_s, self.details))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _rebuild(
    cls: type[QuotadError],
    message: str,
    code: str,
    retry_after_s: float | None,
    details: dict[str, Any],
) -> QuotadError:
    """Unpickle a :class:`QuotadError` (it crosses process pools intact)."""
    return cls(message, code=code, retry_after_s=retry_after_s, details=details)


class BadRequestError(QuotadError):
    """The request is invalid: a field is missing, of the wrong type or out of range."""

    default_code = "bad_request"


class BadFrameError(QuotadError):
    """A frame could not be read (too large, truncated or not MessagePack)."""

    default_code = "bad_frame"


class UnknownModelError(QuotadError):
    """The model is neither a group, a target nor a model exactly one provider declares."""

    default_code = "unknown_model"


class UnauthorizedError(QuotadError):
    """The caller is not allowed to do this."""

    default_code = "unauthorized"


class BudgetExceededError(QuotadError):
    """A spend budget would be exceeded by this request; retrying will not help."""

    default_code = "budget_exceeded"


class RateLimitedError(QuotadError):
    """Gate admission did not come within ``max_wait_s``; see ``retry_after_s``."""

    default_code = "rate_limited"


class UpstreamError(QuotadError):
    """Every attempt at a provider failed; ``details`` lists the attempts."""

    default_code = "upstream_error"


class RequestTimeoutError(QuotadError):
    """The request ran out of time (in the daemon, or the client's ``timeout``)."""

    default_code = "timeout"


class OverloadedError(QuotadError):
    """The daemon's queues are full."""

    default_code = "overloaded"


class RequestCancelledError(QuotadError):
    """The request was cancelled before it finished."""

    default_code = "cancelled"


class InternalError(QuotadError):
    """A bug in quotad (or a reply this client did not expect)."""

    default_code = "internal"


class BlockedError(QuotadError):
    """A guardrail refused the request (or its reply): ``details["kinds"]`` lists the entity
    kinds found (``credit_card``, ``secret``…), never their values; retrying will not help."""

    default_code = "blocked"


class DaemonUnavailableError(QuotadError):
    """No quotad daemon answered; the message lists every socket tried and why it failed."""

    default_code = "daemon_unavailable"

    @classmethod
    def after_trying(cls, tried: Sequence[tuple[str, str]]) -> DaemonUnavailableError:
        """The error for a failed connect, from ``(socket path, reason)`` pairs in order."""
        listing = "; ".join(f"{path} ({reason})" for path, reason in tried)
        return cls(
            f"no quotad daemon answered; tried {listing}",
            details={"tried": [{"socket": path, "reason": reason} for path, reason in tried]},
        )


class ConnectionLostError(DaemonUnavailableError):
    """The connection dropped with the request in flight: it may or may not have run."""

    default_code = "connection_lost"


_ERROR_CLASSES: dict[str, type[QuotadError]] = {
    cls.default_code: cls
    for cls in (
        BadRequestError,
        BadFrameError,
        UnknownModelError,
        UnauthorizedError,
        BudgetExceededError,
        RateLimitedError,
        UpstreamError,
        RequestTimeoutError,
        OverloadedError,
        RequestCancelledError,
        InternalError,
        BlockedError,
    )
}


def error_from_reply(error: Error) -> QuotadError:
    """The exception for an ``Error`` reply: the class of its code, else :class:`QuotadError`."""
    cls = _ERROR_CLASSES.get(error.code, QuotadError)
    return cls(
        error.message,
        code=error.code,
        retry_after_s=error.retry_after_s,
        details=error.details,
    )
