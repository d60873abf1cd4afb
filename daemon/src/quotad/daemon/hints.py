"""What a valid config may still lack for a first request to succeed, each said with what to do.

A config with no provider loads without error (the built-in default with no API key in the
environment is one), and the first sign would be ``unknown model 'default'`` on the first
request. ``quotad check-config`` prints these as warnings (its exit code stays 0),
``quotad doctor`` as a ``warn`` check, and ``quotad serve`` logs them at start.
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

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}"


def config_hints(config: Config) -> list[Hint]:
    """Warnings about ``config``: valid, but unable to serve a request as it stands."""
    if config.providers:
        return []
    if config.source == "built-in default":
        where = "no config file, no API key in the environment and no Ollama on 127.0.0.1:11434"
    else:
        where = f"{config.source} has no [providers.NAME] table"
    problem = f"no providers configured ({where}): every request will fail with unknown_model"
    return [Hint(problem, NO_PROVIDERS_FIX)]
