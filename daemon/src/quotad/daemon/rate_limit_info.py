"""What a provider's answer says of its rate limits (:class:`RateLimitInfo`): the providers
produce it from their response headers (:mod:`quotad.daemon.providers.ratelimits`), the gates
consume it to correct their view (:meth:`quotad.daemon.gates.Gates.observe`). A neutral home,
so that neither imports the other."""

from __future__ import annotations

import msgspec


class RateLimitInfo(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """What a provider's response headers say of its limits; None where a header is absent.

    ``reset_*_s`` are seconds from the response until that limit is fully restored (OpenAI
    sends durations such as ``6m0s``; Anthropic sends RFC 3339 timestamps, converted here).
    Anthropic's separate input/output token limits are kept apart. Frozen: the empty
    :data:`NO_RATE_LIMITS` is shared by every reply without rate-limit headers.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None
    retry_after_s: float | None = None

    def is_empty(self) -> bool:
        """True when the response carried no rate-limit header at all."""
        return all(value is None for value in msgspec.structs.astuple(self))


NO_RATE_LIMITS = RateLimitInfo()
