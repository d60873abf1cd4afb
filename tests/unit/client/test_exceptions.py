"""The client's exceptions (quotad.client.exceptions): one class per wire error code, each with
its code, message and retry-after, surviving pickling."""

from __future__ import annotations

import pickle

import quotad.client
from quotad.client import (
    BlockedError,
    ConnectionLostError,
    DaemonUnavailableError,
    QuotadError,
    RateLimitedError,
    error_from_reply,
)
from quotad.client.exceptions import _ERROR_CLASSES
from quotad.protocol.errors import ERROR_CODES
from quotad.protocol.messages import Error


def test_every_wire_error_code_has_its_exception_class() -> None:
    assert set(_ERROR_CLASSES) == set(ERROR_CODES)
    for code, cls in _ERROR_CLASSES.items():
        assert issubclass(cls, QuotadError)
        assert cls.__name__ in quotad.client.__all__
        error = error_from_reply(Error(code=code, message="m", retry_after_s=2.5))
        assert type(error) is cls
        assert (error.code, error.message, error.retry_after_s) == (code, "m", 2.5)


def test_unknown_error_code_becomes_plain_quotad_error() -> None:
    error = error_from_reply(Error(code="from_the_future", message="new", details={"a": 1}))
    assert type(error) is QuotadError
    assert error.code == "from_the_future"
    assert error.details == {"a": 1}


def test_errors_survive_pickling() -> None:
    error = error_from_reply(Error(code="rate_limited", message="slow", retry_after_s=1.0))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimitedError
    assert (copy.code, copy.message, copy.retry_after_s) == ("rate_limited", "slow", 1.0)


def test_connection_lost_is_a_daemon_unavailable_error() -> None:
    assert issubclass(ConnectionLostError, DaemonUnavailableError)
    assert ConnectionLostError("x").code == "connection_lost"
    assert DaemonUnavailableError("x").code == "daemon_unavailable"


def test_blocked_is_its_own_error_naming_the_kinds() -> None:
    details = {"kinds": ["credit_card", "secret"], "direction": "input"}
    error = error_from_reply(Error(code="blocked", message="blocked", details=details))
    assert type(error) is BlockedError
    assert error.details["kinds"] == ["credit_card", "secret"]
    assert error.retry_after_s is None
    assert "blocked" in ERROR_CODES
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is BlockedError
    assert copy.details == details
