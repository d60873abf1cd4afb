"""What the pipeline knows of one request while it runs (:class:`RequestContext`), and the ids
requests are known by (:class:`RequestIds`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from quotad.daemon.caller import Caller
from quotad.daemon.gates import AppPolicy, Reservation
from quotad.daemon.providers.base import ChatResult, EmbedResult, ProviderError, UsageReported
from quotad.daemon.request_limits import (
    billable_tokens,
    check_chat_shape,
    check_embed_shape,
    completion_limit,
    embed_inputs,
)
from quotad.daemon.routing import Target
from quotad.daemon.store.budgets import BudgetHold
from quotad.daemon.store.cache import Answer, CacheEntry
from quotad.daemon.store.ledger import INTERRUPTED, Ledger, LedgerRow, encode_tags
from quotad.daemon.store.prices import Price, PriceTable
from quotad.daemon.tokens import (
    estimate_prompt_tokens,
    estimate_text_tokens,
    input_tokens_upper_bound,
    text_tokens_upper_bound,
    value_tokens_upper_bound,
)
from quotad.protocol.messages import SEMANTIC_HIT, Chat, Embed, Usage

if TYPE_CHECKING:
    from quotad.daemon.semantic.step import Asked

AnswerT = TypeVar("AnswerT", bound=Answer)


class Findings(Protocol):
    """What the guardrails found in a request and its reply (its
    :class:`~quotad.daemon.guardrails.screening.Screening`), as its ledger row keeps it."""

    def ledger_entities(self) -> str:
        """The ledger's ``entities`` column."""
        ...


class RequestIds:
    """Request ids unique across daemon restarts: a random prefix per daemon, then a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "qd-" + os.urandom(4).hex() + "-"
        self._count = 0

    def next(self) -> str:
        """A new request id."""
        self._count += 1
        return f"{self._prefix}{self._count}"


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows of one request while it runs."""

    request_id: str
    kind: str
    caller: Caller
    model: str
    started: float
    generation: int = 0
    """The config generation it began under (see :mod:`quotad.daemon.config_generations`)."""
    priority: str = "normal"
    max_wait_s: float | None = None
    max_tokens: int = 0
    tokens: int = 0
    least_tokens: int | None = None
    """When ``tokens`` is an upper bound (embeddings): the fewest the provider counts."""
    attempts: int = 0
    wait_s: float = 0.0
    target: Target | None = None
    reservation: Reservation | None = None
    finished: bool = False
    user: str = ""
    tags: list[str] | None = None
    budget: BudgetHold | None = None
    cached: bool = False
    similarity: float | None = None
    """A semantic cache hit's similarity (None: not a semantic hit)."""
    asked: Asked | None = None
    """The question a chat request asks the semantic cache, from step 3 to step 7."""
    saved_usd: float = 0.0
    cost_usd: float = 0.0
    screening: Findings | None = None
    """Its guardrails (step 0): what they found, and its reply's way back."""
    calling: bool = False
    """A provider call is under way (from the hand-off to its answer or its failure)."""
    delivered_usage: Usage | None = None
    """A stream that stopped being read before its end: the usage of what it delivered."""
    unanswered_calls: int = 0
    """Failed attempts their providers may bill all the same (``ProviderError.may_bill``)."""
    unanswered_usage: Usage | None = None
    """Their bounds, summed: what the request is charged for them, whatever comes after."""
    unanswered_cost_usd: float = 0.0
    """Their bounds' cost, each at its target's price."""
    further_holds: list[BudgetHold] | None = None
    """The bound held again on its budgets for each attempt after one of those."""
    request: Chat | Embed | None = None
    """The request as planned (step 1, after the guardrails: what providers are sent)."""

    def abandoned_usage(self, request: Chat | Embed) -> Usage | None:
        """What a request that stopped waiting for its provider (cancelled by its caller, or
        past its deadline) is charged, since the provider was paid all the same: a stream
        stopped while delivering, its delivered usage (as a broken stream is charged); a call
        under way, the most it can bill (:func:`billable_tokens`), since the provider may
        finish it. None when no provider had the request."""
        if self.delivered_usage is not None:
            return self.delivered_usage
        if not self.calling:
            return None
        return self.billable_usage(request)

    def billable_usage(self, request: Chat | Embed) -> Usage:
        """The most a provider can bill ``request`` (:func:`billable_tokens`), as usage."""
        prompt_tokens, completion_tokens = billable_tokens(request, self.max_tokens)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def charged_usage(
        self,
        usage: Usage,
        reported: UsageReported,
        delivered: str = "",
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Usage:
        """The usage an answer is charged, for its row, its budgets and its gates (DESIGN
        §8: reserve an upper bound, settle the truth): each count of ``usage`` its provider
        reported, as it is; for one it left out (0 in ``usage``, or a running count: a
        stream that ended before its usage did) an upper bound, never below that count. The
        prompt's is the request's (:func:`billable_tokens`: its prompt's bound, an embedding
        request's inputs'); the completion's, the UTF-8 bytes of what was ``delivered`` (text
        and ``tool_calls``), at most the completion limit, so that no budget is charged less
        than what was delivered can have cost. Left out, they were charged 0: a server that
        leaves usage out was never charged at all."""
        if all(reported):
            return usage
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        if not reported.prompt:
            assert self.request is not None  # planned before any provider has it
            prompt = max(prompt, billable_tokens(self.request, self.max_tokens)[0])
        if not reported.completion:
            bound = text_tokens_upper_bound(delivered)
            if tool_calls:
                bound += value_tokens_upper_bound(tool_calls)
            completion = max(completion, min(bound, self.max_tokens))
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, cached_tokens=usage.cached_tokens
        )

    def charged_answer_usage(self, result: ChatResult | EmbedResult) -> Usage:
        """What a provider's whole answer is charged (:meth:`charged_usage`): a chat's for
        its content and tool calls."""
        if isinstance(result, EmbedResult):
            return self.charged_usage(result.usage, result.usage_reported)
        delivered = result.content or ""
        return self.charged_usage(result.usage, result.usage_reported, delivered, result.tool_calls)

    def plan(
        self,
        request: Chat | Embed,
        default_max_tokens: int,
        app_policy: Callable[[str], AppPolicy],
    ) -> None:
        """Its priority, wait, completion limit (a chat's ``max_tokens``, or a larger spelling
        of it in ``extra``) and gate reservation: a chat's estimated prompt tokens + that
        limit; an embedding request's inputs at their upper bound (their UTF-8 bytes, DESIGN
        §8: reserve an upper bound, settle the truth), as its budget hold counts them: inputs
        are all prompt, with no completion to make an estimate's error up, and at four
        characters a token, 17,000 CJK characters (17,002 tokens) reserved 4,250, so two such
        requests filled a 30,000-token window to 34,004. Their estimate is
        ``least_tokens``, what the provider counts them as at the least (see
        :class:`~quotad.daemon.gates.window.Demand`). No messages or inputs, refused fields
        of ``extra``, and content parts or tools whose type is not a string, are
        ``bad_request`` (:mod:`quotad.daemon.request_limits`)."""
        if isinstance(request, Chat):
            check_chat_shape(request)
            self.max_tokens = completion_limit(request, default_max_tokens)
            prompt = estimate_prompt_tokens(request.messages, request.tools)
        else:
            check_embed_shape(request)
            inputs = embed_inputs(request)
            prompt = input_tokens_upper_bound(inputs)
            self.least_tokens = sum(estimate_text_tokens(text) for text in inputs)
        self.priority = request.priority or app_policy(self.caller.app).priority
        self.max_wait_s = request.max_wait_s
        self.tokens = prompt + self.max_tokens
        self.request = request

    def call_failed(self, error: ProviderError, prices: PriceTable) -> None:
        """The call under way failed. If its provider may bill it all the same
        (``ProviderError.may_bill``), the most it can bill, at its target's price, is charged
        to the request whatever comes after: a stream that broke before its first piece, its
        prompt (a stream is charged what it delivered: :meth:`charged_usage`); another call,
        its prompt and completion bounds."""
        self.calling = False
        if not error.may_bill:
            return
        assert self.request is not None  # planned before any provider has it
        usage = self.billable_usage(self.request)
        if error.kind == "stream_broken":
            usage = Usage(prompt_tokens=usage.prompt_tokens)
        self.unanswered_calls += 1
        self.unanswered_usage = self.with_unanswered(usage)
        self.unanswered_cost_usd += prices.cost(self.target_name, usage)

    def journal(self, ledger: Ledger, prices: PriceTable, now: float) -> None:
        """What it costs if the daemon dies now (a call under way, failed ones that may be
        billed), for ``ledger`` to journal (:meth:`~quotad.daemon.store.ledger.Ledger.handed_off`)
        and the next start to charge; or nothing, when no provider may bill it."""
        if self.calling or self.unanswered_usage is not None:
            ledger.handed_off(self.request_id, lambda: self.interrupted_row(prices, now))
        else:
            ledger.not_handed_off(self.request_id)

    def cost_of(self, usage: Usage, price: Price | None) -> float:
        """What the request costs: ``usage`` at ``price`` (None: nothing), and the failed
        attempts that may be billed."""
        return (price.cost(usage) if price is not None else 0.0) + self.unanswered_cost_usd

    def with_unanswered(self, usage: Usage) -> Usage:
        """``usage`` and the bounds of the failed attempts that may be billed, as one."""
        earlier = self.unanswered_usage
        if earlier is None:
            return usage
        return Usage(
            prompt_tokens=usage.prompt_tokens + earlier.prompt_tokens,
            completion_tokens=usage.completion_tokens + earlier.completion_tokens,
            cached_tokens=usage.cached_tokens,
        )

    def interrupted_row(self, prices: PriceTable, handed_off: float) -> LedgerRow:
        """Its row if the daemon dies while a provider has it, charged at the next start
        (:meth:`~quotad.daemon.store.ledger.Ledger.recover_interrupted`): the most the call
        under way can bill at its target's price, as a call abandoned under way is charged,
        and the failed attempts that may be billed, at the time it was ``handed_off`` (its day
        is the ledger's to fill in)."""
        assert self.request is not None  # planned before any provider has it
        usage = self.billable_usage(self.request) if self.calling else Usage()
        price = prices.for_target(self.target_name)
        cost = self.cost_of(usage, price)
        return self.ledger_row(
            handed_off,
            "",
            self.with_unanswered(usage),
            INTERRUPTED,
            cost,
            unpriced=price is None,
            latency_s=0.0,
        )

    def answered_from_cache(
        self, entry: CacheEntry, kind: type[AnswerT], targets: Mapping[str, Target]
    ) -> AnswerT:
        """Step 3 hit: it is answered by ``entry`` at no cost, saving what the call it replaces
        cost (a semantic hit: ``entry.similarity``, marked in its ledger row)."""
        answer = entry.answer
        assert isinstance(answer, kind)
        self.cached = True
        self.similarity = entry.similarity
        self.saved_usd = entry.cost_usd
        self.target = targets.get(answer.target)
        return answer

    @property
    def target_name(self) -> str:
        """The name of the target that answers ("" before one was picked)."""
        return self.target.name if self.target is not None else ""

    def ledger_row(
        self,
        now: float,
        day: str,
        usage: Usage,
        status: str,
        cost_usd: float,
        *,
        unpriced: bool,
        latency_s: float,
    ) -> LedgerRow:
        """The request's ledger row (step 7), as it ends at ``now`` with ``status`` (``ok``
        is :data:`SEMANTIC_HIT` for a semantic cache hit: DESIGN §11, its own status)."""
        caller = self.caller
        if status == "ok" and self.similarity is not None:
            status = SEMANTIC_HIT
        return LedgerRow(
            request_id=self.request_id,
            time=now,
            day=day,
            kind=self.kind,
            app=caller.app,
            user=self.user,
            uid=caller.uid,
            pid=caller.pid,
            gid=caller.gid,
            model=self.model,
            target=self.target_name,
            attempts=self.attempts,
            status=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost_usd,
            saved_usd=self.saved_usd,
            cached=self.cached,
            unpriced=unpriced,
            wait_s=self.wait_s,
            latency_s=latency_s,
            priority=self.priority,
            tags=encode_tags(self.tags or ()),
            semantic_similarity=self.similarity,
            entities=self.screening.ledger_entities() if self.screening is not None else "",
        )
