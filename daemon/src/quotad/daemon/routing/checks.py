"""Active health checks: for each provider with ``health_check_s > 0``, ``GET {base_url}/models``
(``Provider.list_models``) every ``health_check_s`` seconds, its outcome applied to each of the
provider's targets.

- passed (any answer but a 5xx or 429: a server without ``/models`` answering 404 is up):
  recorded (``h``); an open breaker turns half-open at once and the check counts as a
  successful trial call, so a provider that came back is used again before its cooldown ends;
- failed (connect error, timeout, 5xx): recorded (``H``) and counted against the breaker, so
  a provider that died is taken out of rotation without a request paying for it;
- rate limited (429): recorded (``r``) and nothing more: a full provider is not an unwell one.

A check that has no answer within ``health_check_s`` (at least :data:`MIN_CHECK_TIMEOUT_S`;
at most the provider's own ``timeout_s``) failed: a hanging provider is found as fast as a
dead one, and the checks keep their pace.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio

from quotad.daemon.providers.base import ProviderError
from quotad.daemon.routing.router import Router

log = logging.getLogger("quotad.routing")

MIN_CHECK_TIMEOUT_S: Final = 1.0


class HealthChecks:
    """The active health checks of one router's providers."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._providers = router.providers
        self._intervals = {
            name: provider.health_check_s
            for name, provider in router.config.providers.items()
            if provider.health_check_s > 0 and name in self._providers
        }
        self._timeouts = {
            name: max(MIN_CHECK_TIMEOUT_S, interval) for name, interval in self._intervals.items()
        }

    async def run(self) -> None:
        """Check every provider that asks for it, forever (cancel to stop)."""
        if not self._intervals:
            return
        async with anyio.create_task_group() as tasks:
            for name, interval in self._intervals.items():
                tasks.start_soon(self._check_forever, name, interval)

    async def _check_forever(self, provider_name: str, interval_s: float) -> None:
        while True:
            await self.check(provider_name)
            await anyio.sleep(interval_s)

    async def check(self, provider_name: str) -> bool:
        """Check one provider now and apply the outcome to its targets; whether it passed.
        Any HTTP answer but a 5xx or 429 passes (a server without ``/models`` answers 404,
        and is up)."""
        try:
            with anyio.fail_after(self._timeouts.get(provider_name, MIN_CHECK_TIMEOUT_S)):
                await self._providers[provider_name].list_models()
        except TimeoutError:
            self._failed(provider_name, "no answer in time")
            return False
        except ProviderError as error:
            if error.kind == "rate_limited":
                for target in self._router.targets_of(provider_name):
                    target.check_rate_limited()
                return False
            if error.retryable:
                self._failed(provider_name, error.message)
                return False
        for target in self._router.targets_of(provider_name):
            target.check_passed()
        return True

    def _failed(self, provider_name: str, why: str) -> None:
        log.debug("health check of %s failed: %s", provider_name, why)
        for target in self._router.targets_of(provider_name):
            target.check_failed()
