"""The guardrails as configured (DESIGN §12): :class:`Guard` for the daemon, one
:class:`AppGuard` per app, and what checking a request gives back, :class:`Checked`.

    guard = Guard(config)                      # built once per config (and on reload)
    checked = guard.for_app(app).check_chat(request)   # raises Blocked
    checked.request      # what may leave the machine: the cache key, the ledger, the provider
    checked.counts       # entities found by kind (for the ledger row), never what
    checked.restorer.reply(reply) / .stream().feed(delta) … .flush()

An app's policy is ``[guardrails]`` with ``[apps.A.guardrails]`` merged over it: ``input``
and ``output`` entity by entity, ``restore`` as a whole. An app without guardrails of its
own, or unknown to the config, gets the global policy. With no rules at all, checking returns
the request itself and a restorer that changes nothing, at the cost of a few attribute reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from quotad.daemon.config import (
    AppGuardrailsConfig,
    Config,
    EntityKind,
    GuardrailAction,
    GuardrailsConfig,
)
from quotad.daemon.guardrails.blocked import Blocked
from quotad.daemon.guardrails.masking import LiteralPlaceholders, Masker
from quotad.daemon.guardrails.restore import Restorer
from quotad.daemon.guardrails.walk import TextRewriter, rewrite_chat, rewrite_embed
from quotad.protocol.messages import Chat, Embed

RequestT = TypeVar("RequestT", Chat, Embed)
Actions = Mapping[EntityKind, GuardrailAction]


@dataclass(frozen=True, slots=True)
class Policy:
    """What one app's guardrails do: actions on ``input`` and ``output`` (``off`` left out),
    and whether masked values are restored in replies."""

    input: Actions = field(default_factory=dict)
    output: Actions = field(default_factory=dict)
    restore: bool = True

    @classmethod
    def of(cls, config: GuardrailsConfig, app: AppGuardrailsConfig | None = None) -> Policy:
        """The policy of ``config`` with an app's overrides merged over it."""
        input_, output, restore = dict(config.input), dict(config.output), config.restore
        if app is not None:
            input_.update(app.input)
            output.update(app.output)
            if app.restore is not None:
                restore = app.restore
        return cls(input=_actions(input_), output=_actions(output), restore=restore)


def _actions(table: Mapping[str, object]) -> Actions:
    """A validated config table (see ``config_checks._guardrails_problems``) as actions."""
    return {
        cast(EntityKind, kind): cast(GuardrailAction, action)
        for kind, action in table.items()
        if action != "off"
    }


@dataclass(frozen=True, slots=True)
class Checked(Generic[RequestT]):
    """A request that passed its guardrails."""

    request: RequestT
    """The request as it may leave the machine (the caller's own when nothing was masked)."""
    counts: dict[EntityKind, int]
    """Entities found in it, by kind, whatever their action."""
    restorer: Restorer
    """For its reply: output rules, then the caller's values put back."""
    masked: dict[str, str] = field(default_factory=dict)
    """Each placeholder put in the request → the value it replaced (whether or not the
    reply gets them back)."""


class AppGuard:
    """The guardrails of one app."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.active = bool(policy.input or policy.output)
        """Whether there is anything to do for this app."""
        self._idle = Restorer({}, restore=False, output={})

    def check_chat(self, chat: Chat) -> Checked[Chat]:
        """``chat`` with the input rules applied; :class:`Blocked` if one says block."""
        return self._check(chat, rewrite_chat)

    def check_embed(self, embed: Embed) -> Checked[Embed]:
        """An embedding request with the input rules applied to its inputs (masked inputs
        are embedded as masked: there is nothing to restore in vectors)."""
        return self._check(embed, rewrite_embed)

    def _check(
        self, request: RequestT, rewrite: Callable[[RequestT, TextRewriter], RequestT]
    ) -> Checked[RequestT]:
        if not self.active:
            return Checked(request, {}, self._idle)
        reserved: set[str] = set()
        if self.policy.input:
            literals = LiteralPlaceholders()
            rewrite(request, literals)
            reserved = literals.found
        masker = Masker(self.policy.input, reserved=reserved)
        masked = rewrite(request, masker)
        if masker.blocked:
            raise Blocked("input", masker.blocked, masker.counts)
        restorer = Restorer(
            masker.originals,
            restore=self.policy.restore,
            output=self.policy.output,
            reserved=reserved,
            json_content=isinstance(request, Chat) and _asks_for_json(request),
        )
        return Checked(masked, masker.counts, restorer, masker.originals)


def _asks_for_json(chat: Chat) -> bool:
    """Whether the reply's content will be JSON (``response_format`` json_object or
    json_schema), where a value put back must be JSON-escaped."""
    kind = (chat.response_format or {}).get("type")
    return kind in ("json_object", "json_schema")


class Guard:
    """The daemon's guardrails for one config: :meth:`for_app` gives each app's."""

    def __init__(self, config: Config) -> None:
        self._global = AppGuard(Policy.of(config.guardrails))
        self._apps = {
            name: AppGuard(Policy.of(config.guardrails, app.guardrails))
            for name, app in config.apps.items()
        }

    def for_app(self, app: str) -> AppGuard:
        """The guardrails of ``app`` (the global ones for an app the config does not name)."""
        return self._apps.get(app, self._global)
