"""Planting a bug where the code under test runs: the first call of a method raises, the calls
after it go through, so that a test sees the failure handled and the service still working."""

from __future__ import annotations

from typing import Any

import pytest


def break_first_call(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, error: Exception
) -> None:
    """The first call of ``owner.name`` raises ``error``; later calls reach the real one
    (undone with ``monkeypatch``)."""
    real = getattr(owner, name)
    calls = 0

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, broken_once)
