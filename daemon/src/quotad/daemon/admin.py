"""Operator actions (``Admin`` messages): targets by hand, the config reloaded, HTTP front door
keys and the cache.

========================  ==========================================  =====================
action                    arguments                                   ``Ok.data``
========================  ==========================================  =====================
``target_enable``         ``target``: the target's name               its status
``target_disable``        ``target``                                  its status
``target_reset``          ``target`` (closes its breaker, lifts its   its status
                          429 pause)
``enable``, ``disable``,  ``target``: the three above, in DESIGN     its status
``reset``                 §5's words
``reload``                                                            (a rejection is
                                                                      ``bad_request``)
``key_create``            ``args.app``                                the key (shown once),
                                                                      id, app, created,
                                                                      prefix
``key_list``                                                          ``keys``: records
``key_revoke``            ``target`` (or ``args.id``): the key's id
``cache_clear``           ``args.older_than_s`` (optional)            ``removed``
``cache_warm``            ``args.entries``: lines of a warm file      ``stored``,
                          (:mod:`.warm`)                              ``problems``
========================  ==========================================  =====================

Warmed entries go through the guardrails of their request's app, as a live request would
(:mod:`quotad.daemon.guardrails.warming`): an entry a rule blocks is a problem, not stored.
Target actions, key creation and revocation are recorded in the audit table (a reload is
recorded by the runtime, which applies it). A write that cannot be committed
answers ``internal`` naming the file and SQLite's reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from quotad.daemon.caller import Caller
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Gates
from quotad.daemon.guardrails.screening import Guardrails
from quotad.daemon.guardrails.warming import guarded_entry
from quotad.daemon.request_limits import check_name
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.daemon.store.db import WriteFailed
from quotad.daemon.store.warm import WarmEntry
from quotad.protocol.messages import MAX_NAME, Admin, Ok

STORE_ACTIONS: Final = frozenset(
    {"key_create", "key_list", "key_revoke", "cache_clear", "cache_warm"}
)
TARGET_ACTIONS: Final = frozenset({"target_enable", "target_disable", "target_reset"})
TARGET_ACTION_WORDS: Final = {
    "enable": "target_enable",
    "disable": "target_disable",
    "reset": "target_reset",
}
"""DESIGN §5 names the target actions "enable/disable target, reset breaker" (and the clients'
``admin()`` documents those words): each is the target action of that name."""

MAX_TEXT_ARG: Final = MAX_NAME
"""The longest app name or key id an action takes (as long as a name in any message)."""

ReloadConfig = Callable[[int | None, int | None], Awaitable[bool]]
"""Re-read the config for the peer ``(uid, pid)``: True when applied (the runtime's)."""


def _text_arg(request: Admin, name: str) -> str:
    """``request.args[name]``, a string of 1 to :data:`MAX_TEXT_ARG` characters, or
    ``bad_request`` naming it."""
    value = request.args.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_ARG:
        raise RequestError(
            "bad_request",
            f"args.{name}: expected a string of 1 to {MAX_TEXT_ARG} characters",
            details={"field": f"args.{name}"},
        )
    check_name(f"args.{name}", value)
    return value


class AdminActions:
    """Runs the operator's actions (see the module docstring)."""

    def __init__(
        self, store: Store, router: Router, gates: Gates, guardrails: Guardrails | None = None
    ) -> None:
        self.keys = store.keys
        self.cache = store.cache
        self.audit = store.audit
        self.prices = store.prices
        self.gates = gates
        self.router = router
        """The current router (a reload replaces it)."""
        self.reload_config: ReloadConfig | None = None
        """Set by the runtime: re-read the config (``Admin(action="reload")``)."""
        self.guardrails = guardrails
        """Warmed entries go through them, as a live request would (see
        :mod:`quotad.daemon.guardrails.warming`)."""

    async def run(self, request: Admin, caller: Caller) -> Ok:
        """Answer one operator action; ``bad_request`` for one this daemon does not know."""
        if request.action in TARGET_ACTION_WORDS:
            request = msgspec.structs.replace(request, action=TARGET_ACTION_WORDS[request.action])
        if request.action in STORE_ACTIONS:
            return await self._store_action(request, caller.uid, caller.pid)
        if request.action in TARGET_ACTIONS:
            done = self._target_action(request)
            await self.audit.record(request.action, request.target, caller.uid, caller.pid)
            return done
        if request.action == "reload" and self.reload_config is not None:
            if await self.reload_config(caller.uid, caller.pid):
                return Ok(id=request.id, message="config reloaded")
            raise RequestError(
                "bad_request",
                "the new config has problems; still serving the previous one "
                "(the daemon's log lists every problem; `quotad check-config` too)",
            )
        raise RequestError(
            "bad_request", f"admin action {request.action!r} is not supported by this daemon"
        )

    def _target_action(self, request: Admin) -> Ok:
        """``quotad target enable|disable|reset NAME``."""
        if not request.target:
            raise RequestError(
                "bad_request",
                f"target: {request.action} needs a target name",
                details={"field": "target"},
            )
        if request.action == "target_enable":
            target = self.router.enable(request.target)
            done = "enabled"
        elif request.action == "target_disable":
            target = self.router.disable(request.target)
            done = "disabled"
        else:
            target = self.router.reset(request.target)
            self.gates.unpause(target.name)
            done = "reset: its breaker is closed and its 429 pause lifted"
        status = self.router.target_status(target)
        return Ok(id=request.id, message=f"{target.name} {done}", data=msgspec.to_builtins(status))

    async def _store_action(
        self, request: Admin, caller_uid: int | None, caller_pid: int | None
    ) -> Ok:
        """Answer one of :data:`STORE_ACTIONS`."""
        try:
            match request.action:
                case "key_create":
                    return await self._key_create(request, caller_uid, caller_pid)
                case "key_list":
                    records = [record.as_dict() for record in self.keys.list()]
                    return Ok(id=request.id, data={"keys": records})
                case "key_revoke":
                    key_id = request.target or _text_arg(request, "id")
                    if not await self.keys.revoke(key_id):
                        field = "target" if request.target else "args.id"
                        raise RequestError(
                            "bad_request",
                            f"{field}: no live key has the id {key_id!r}",
                            details={"field": field},
                        )
                    await self.audit.record("key_revoke", key_id, caller_uid, caller_pid)
                    return Ok(id=request.id, message=f"revoked key {key_id}")
                case "cache_clear":
                    return await self._cache_clear(request)
                case "cache_warm":
                    return await self._cache_warm(request)
        except WriteFailed as failure:
            raise RequestError("internal", f"{request.action}: {failure}") from None
        raise RequestError("bad_request", f"{request.action!r} is not a store action")

    async def _key_create(
        self, request: Admin, caller_uid: int | None, caller_pid: int | None
    ) -> Ok:
        app = _text_arg(request, "app")
        key, record = await self.keys.create(app)
        await self.audit.record("key_create", record.id, caller_uid, caller_pid, {"app": app})
        return Ok(
            id=request.id,
            message=f"created key {record.id} for app {app!r}",
            data={"key": key, **record.as_dict()},
        )

    async def _cache_clear(self, request: Admin) -> Ok:
        older_than_s = request.args.get("older_than_s")
        if older_than_s is not None and (
            isinstance(older_than_s, bool)
            or not isinstance(older_than_s, int | float)
            or older_than_s < 0
        ):
            raise RequestError(
                "bad_request",
                "args.older_than_s: expected seconds >= 0",
                details={"field": "args.older_than_s"},
            )
        removed = await self.cache.clear(older_than_s)
        return Ok(id=request.id, message=f"removed {removed} entries", data={"removed": removed})

    async def _cache_warm(self, request: Admin) -> Ok:
        """Store each of ``args.entries``; each entry's problems are reported by its index,
        the others are stored. An entry's cost (what a hit saves) is its ``cost_usd``, else
        its usage at its target's price (the first target of its model when it names none)."""
        entries = request.args.get("entries")
        if not isinstance(entries, list):
            raise RequestError(
                "bad_request",
                "args.entries: expected a list of entries",
                details={"field": "args.entries"},
            )
        problems: list[str] = []
        valid: list[tuple[WarmEntry, float]] = []
        for index, raw in enumerate(entries):
            try:
                entry = msgspec.convert(raw, WarmEntry)
                route = self.router.resolve(entry.request.model)
                if self.guardrails is not None:  # as a live request would leave it
                    entry = guarded_entry(self.guardrails.for_app(entry.request.app), entry)
            except msgspec.ValidationError as error:
                problems.append(f"entries[{index}]: {error}")
                continue
            except RequestError as error:
                problems.append(f"entries[{index}]: {error.message}")
                continue
            response = entry.response
            if not response.target and route.targets:
                response.target = route.targets[0].name
            cost = response.cost_usd
            if cost is None:
                cost = self.prices.cost(response.target, response.usage)
            valid.append((entry, cost))
        stored = await self.cache.warm(valid)
        return Ok(
            id=request.id,
            message=f"stored {stored} of {len(entries)} entries",
            data={"stored": stored, "problems": problems},
        )
