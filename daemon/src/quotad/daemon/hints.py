"""What a valid config may still lack for a first request to succeed, or holds to no effect,
each said with what to do.

A config with no provider loads without error (the built-in default with no API key in the
environment is one), and the first sign would be ``unknown model 'default'`` on the first
request. A group's ``weights`` are used by ``strategy = "weighted"`` only (DESIGN §4's example
gives them to a failover group: valid, and ignored). ``quotad check-config`` prints these as
warnings (its exit code stays 0), ``quotad doctor`` as ``warn`` checks, and ``quotad serve``
logs them at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from quotad.daemon.config import Config

NO_PROVIDERS_FIX: Final = (
    "set OPENAI_API_KEY, ANTHROPIC_API_KEY or GROQ_API_KEY (the built-in config, used when "
    "there is no config file, makes a provider of each and the group 'default' over them), or "
    "write a config with a [providers.NAME] table (kind, base_url, api_key_env) and a "
    "[models.default] group; for a local try with no key, run `quotad sim` and point a "
    "provider's base_url at it, or run `quotad demo`"
)


@dataclass(frozen=True, slots=True)
class Hint:
    """A warning: what is wrong, and what to do about it."""

    problem: str
    fix: str
    topic: str = "providers"
    """What it is about: the name of its ``quotad doctor`` check."""

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}"


def config_hints(config: Config) -> list[Hint]:
    """Warnings about ``config``: valid, but unable to serve a request as it stands, or with
    keys that have no effect."""
    hints = [
        Hint(
            f"models.{name}.weights: ignored: only strategy = 'weighted' uses them (this "
            f"group's strategy is {group.strategy!r})",
            "remove them, or set strategy = 'weighted'",
            topic="groups",
        )
        for name, group in config.models.items()
        if group.weights and group.strategy != "weighted"
    ]
    if config.providers:
        return hints
    if config.source == "built-in default":
        where = "no config file, no API key in the environment and no Ollama on 127.0.0.1:11434"
    else:
        where = f"{config.source} has no [providers.NAME] table"
    problem = f"no providers configured ({where}): every request will fail with unknown_model"
    return [Hint(problem, NO_PROVIDERS_FIX), *hints]
