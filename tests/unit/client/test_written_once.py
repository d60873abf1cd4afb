"""The client is written once: each blocking module (``_sync.py``, ``_sync_stream.py``) is what
scripts/unasync.py generates from its async one (checked here, so that CI's ``uv run pytest``
fails while they differ); the two APIs have the same public names, with the same signatures and
docstrings; the generator refuses a table that no longer fits its sources; and blocking users do
not import anyio."""

from __future__ import annotations

import difflib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quotad.client import (
    AsyncChatStream,
    AsyncClient,
    AsyncHeldPermit,
    AsyncSubscription,
    ChatStream,
    Client,
    HeldPermit,
    Subscription,
)
from quotad.protocol.messages import Chat, Permit, Subscribe
from scripts.unasync import PAIRS, ROOT, GenerationError, generate, unasync_text

# The protocols the objects of each side follow: the async name, and the blocking one.
PROTOCOL_DUNDERS = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}


def test_the_committed_sync_client_is_what_the_generator_makes() -> None:
    generated = generate()
    assert sorted(generated) == sorted(target for _, target in PAIRS)
    for source, target in PAIRS:
        committed = target.read_text()
        if committed != generated[target]:
            diff = "".join(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated[target].splitlines(keepends=True),
                    f"committed {target.name}",
                    f"generated from {source.name}",
                )
            )
            pytest.fail(
                f"{target.relative_to(ROOT)} is not what scripts/unasync.py makes of "
                f"{source.name}: edit {source.name}, then run "
                f"`uv run python scripts/unasync.py`\n{diff}"
            )


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[source.name for source, _ in PAIRS])
def test_the_generator_refuses_async_code_left_in_its_output(source: Path, target: Path) -> None:
    leaked = source.read_text() + "\n\nasync def leaked() -> None:\n    anyio.run(main)\n"
    expected = rf"async code left in the output of {source.name}:\n.*anyio\.run"
    with pytest.raises(GenerationError, match=expected):
        generate({source: leaked})


def test_the_generator_refuses_an_async_module_name_left_in_its_output() -> None:
    """A module of the async side imported by a generated one (a rule forgotten for it)."""
    source, _ = PAIRS[0]
    leaked = source.read_text() + "\n\nfrom quotad.client import _async_other\n"
    with pytest.raises(GenerationError, match="_async_other"):
        generate({source: leaked})


def test_the_generator_refuses_a_rule_its_sources_no_longer_use() -> None:
    """``StopAsyncIteration`` is only in the streams' module: a rule is kept while one
    source uses it."""
    streams, _ = PAIRS[1]
    source = streams.read_text().replace("StopAsyncIteration", "StopIteration")
    with pytest.raises(GenerationError, match="StopAsyncIteration"):
        generate({streams: source})


def twins() -> list[Any]:
    """An object of each public class of the blocking API, and one of its async twin."""
    client = Client("/nonexistent/q.sock")
    twin = AsyncClient("/nonexistent/q.sock")
    chat = Chat(model="m", messages=[])
    permit = Permit(permit_id="p1")
    return [
        pytest.param(client, twin, id="Client"),
        pytest.param(ChatStream(client, chat), AsyncChatStream(twin, chat), id="ChatStream"),
        pytest.param(HeldPermit(client, permit, 0), AsyncHeldPermit(twin, permit, 0), id="Permit"),
        pytest.param(
            Subscription(client, Subscribe()),
            AsyncSubscription(twin, Subscribe()),
            id="Subscription",
        ),
    ]


def public_names(obj: object) -> set[str]:
    """The public names of ``obj``: methods, properties and the instance's attributes."""
    return {name for name in dir(obj) if not name.startswith("_")}


def described(obj: object, name: str) -> tuple[str, str | None]:
    """What ``obj.name`` is (a method's signature, ``property``, ``attribute``) and its
    docstring."""
    member = inspect.getattr_static(type(obj), name, None)
    if isinstance(member, property):
        return "property", member.__doc__
    value = getattr(obj, name)
    if inspect.ismethod(value) or inspect.isfunction(value):
        return str(inspect.signature(value)), value.__doc__
    return "attribute", None


@pytest.mark.parametrize(("blocking", "twin"), twins())
def test_both_apis_have_the_same_public_names(blocking: object, twin: object) -> None:
    blocking_names = public_names(blocking)
    twin_names = public_names(twin)
    assert blocking_names == {unasync_text(name) for name in twin_names}
    for async_dunder, dunder in PROTOCOL_DUNDERS.items():
        assert hasattr(twin, async_dunder) == hasattr(blocking, dunder), dunder


@pytest.mark.parametrize(("blocking", "twin"), twins())
def test_both_apis_have_the_same_signatures_and_docstrings(blocking: object, twin: object) -> None:
    assert type(blocking).__doc__ == unasync_text(type(twin).__doc__ or "")
    for name in sorted(public_names(twin)):
        kind, doc = described(twin, name)
        assert described(blocking, unasync_text(name)) == (
            unasync_text(kind),
            None if doc is None else unasync_text(doc),
        ), name


def test_blocking_users_do_not_import_anyio() -> None:
    check = (
        "import sys\n"
        "from quotad.client import Client, QuotadError\n"
        "assert 'anyio' not in sys.modules, 'anyio imported'\n"
        "from quotad.client import AsyncClient\n"
        "assert 'anyio' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
