"""What a config reload does inside the daemon: the broker tells when the requests in flight at
a reload have all finished (so replaced providers may be closed), a rebuilt router keeps
its targets, pointed at the new providers, and cached embeddings of a model a group no longer
resolves to answer it no more."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from quotad.daemon import cli, runtime
from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config, load_config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ChatResult, EmbedResult
from quotad.daemon.routing import Router
from quotad.daemon.runtime import Daemon
from quotad.daemon.systemd import Notifier
from quotad.protocol.messages import Chat, ChatMessage, Embed, Usage
from tests.support.providers import UNREACHABLE, InProcessProvider, one_provider_config
from tests.support.store import open_store

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


class HeldProvider(InProcessProvider):
    """A provider whose chats wait until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0
        self.release = anyio.Event()
        self._arrived = anyio.Condition()

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        async with self._arrived:
            self.started += 1
            self._arrived.notify_all()
        await self.release.wait()
        return ChatResult(content=f"{self.name} answered")

    async def wait_started(self, count: int) -> None:
        """Until ``count`` chats have arrived in all."""
        with anyio.fail_after(5):
            async with self._arrived:
                while self.started < count:
                    await self._arrived.wait()


def config() -> Config:
    return one_provider_config("m")


CHAT = Chat(id=1, model="g", messages=[ChatMessage(role="user", content="hi")])


async def test_reconfigure_tells_when_earlier_requests_are_done(anyio_backend: str) -> None:
    provider = HeldProvider("p")
    async with open_store(config()) as store:
        broker = Broker(config(), Router(config(), {"p": provider}), store)
        idle = broker.reconfigure(config(), broker.router)
        assert idle.is_set()  # nothing in flight: done at once

        answers: list[str | None] = []

        async def ask() -> None:
            answers.append((await broker.chat(CHAT, Caller(app="t"))).content)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask)
            tasks.start_soon(ask)
            await provider.wait_started(2)
            first = broker.reconfigure(config(), broker.router)
            assert not first.is_set()
            tasks.start_soon(ask)  # begun after the first reload
            await provider.wait_started(3)
            second = broker.reconfigure(config(), broker.router)
            assert not first.is_set()
            assert not second.is_set()
            provider.release.set()
        assert first.is_set()
        assert second.is_set()
        assert answers == ["p answered"] * 3
        assert broker.tail.in_flight == 0


async def test_a_rebuilt_router_keeps_its_targets_on_new_providers(anyio_backend: str) -> None:
    old, new = HeldProvider("old"), HeldProvider("new")
    router = Router(config(), {"p": old})
    target = router.resolve("g").targets[0]
    target.requests = 7
    target.enabled = False
    rebuilt = Router(config(), {"p": new}, previous=router)
    kept = rebuilt.resolve("g").targets[0]
    assert kept is target
    assert kept.provider is new
    assert (kept.requests, kept.enabled) == (7, False)
    adhoc = router.resolve("p/other").targets[0]  # a target made on first use lives on too
    assert Router(config(), {"p": new}, previous=router).resolve("p/other").targets[0] is adhoc


async def test_the_config_apps_and_targets_are_kept_apart_from_start_and_after_a_reload(
    anyio_backend: str,
) -> None:
    """What the live tail and the metrics keep apart past their bounds on names clients choose
    (see tests/unit/test_metrics.py) follows the config: at start, and at each reload."""
    provider = HeldProvider("p")
    first = one_provider_config("m", apps={"indexer": {}})
    async with open_store(first) as store:
        broker = Broker(first, Router(first, {"p": provider}), store)
        assert broker.tail.activity.declared.apps == {"indexer"}
        assert broker.metrics.declared.targets == {"p/m"}
        assert broker.tail.declared.models == {"g", "p/m", "m"}  # a group, a target, its model
        reloaded = one_provider_config("n", apps={"batch": {}})
        broker.reconfigure(reloaded, Router(reloaded, {"p": provider}))
        assert broker.tail.activity.declared.apps == broker.metrics.declared.apps == {"batch"}
        assert broker.metrics.declared.targets == {"p/n"}


class RecordingNotifier(Notifier):
    """What the daemon tells the service manager, as a list of first lines."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []
        self.statuses: list[str] = []

    def send(self, *assignments: str) -> None:
        self.sent.append(assignments[0])
        self.statuses += [line for line in assignments if line.startswith("STATUS=")]


@contextlib.asynccontextmanager
async def daemon_on_file(
    tables: str, notifier: Notifier | None = None
) -> AsyncIterator[tuple[Daemon, Path]]:
    """A daemon (not serving) on a config file of ``tables`` (:func:`write_config`), and the
    file, for a test to rewrite before a reload; its providers closed after, its directory
    removed."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        path = directory / "quotad.toml"
        write_config(path, tables)
        daemon = Daemon(
            load_config(path), directory / "q.sock", config_location=str(path), notifier=notifier
        )
        try:
            yield daemon, path
        finally:
            for provider in daemon.providers.values():
                await provider.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_config(path: Path, tables: str) -> None:
    """A config of ``tables`` at ``path``, its state in the file's directory."""
    path.write_text(f'[daemon]\nstate_dir = "{path.parent}"\n' + tables)


def provider_tables(port: int, *names: str) -> str:
    """A ``[providers.NAME]`` table for each of ``names``, at ``port`` on the loopback."""
    table = '[providers.{}]\nkind = "openai"\nbase_url = "http://127.0.0.1:{}"\n'
    return "".join(table.format(name, port) for name in names)


async def test_a_provider_that_cannot_be_built_rejects_the_reload(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything raised while the new config's providers are built rejects the reload: the
    running config and providers stay, a ``reload_rejected`` event says why, READY=1 follows
    RELOADING=1 (it escaped ``try_reload`` and killed the daemon on SIGHUP)."""
    notifier = RecordingNotifier()
    async with daemon_on_file(provider_tables(9, "p"), notifier) as (daemon, path):
        running = daemon.providers["p"]
        write_config(path, provider_tables(10, "p"))  # p must be rebuilt

        def cannot_build(*args: object, **kwargs: object) -> None:
            raise UnicodeEncodeError("ascii", "\u00fc", 0, 1, "ordinal not in range(128)")

        monkeypatch.setattr(runtime, "build_provider", cannot_build)
        rejected = await daemon.try_reload()
        assert rejected is not None
        assert rejected.problems[0].startswith("providers.p: cannot be built: UnicodeEncodeError")
        assert daemon.providers == {"p": running}
        assert daemon.config.providers["p"].base_url == "http://127.0.0.1:9"
        assert notifier.sent == ["RELOADING=1", "READY=1"]
        assert [event.kind for event in daemon.events.recent()] == ["reload_rejected"]


async def test_the_providers_built_for_a_rejected_reload_are_closed(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One provider of the new config could not be built: those that were (each a pool of
    its own) were dropped unclosed, at every rejected reload."""
    async with daemon_on_file(provider_tables(9, "p", "q")) as (daemon, path):
        write_config(path, provider_tables(10, "p", "q"))  # both rebuilt
        built: list[InProcessProvider] = []

        def build_p_only(name: str, *args: object) -> InProcessProvider:
            if name != "p":
                raise ValueError("cannot")
            provider = InProcessProvider()
            built.append(provider)
            return provider

        monkeypatch.setattr(runtime, "build_provider", build_p_only)
        closed: list[object] = []

        async def aclose(self: InProcessProvider) -> None:
            closed.append(self)

        monkeypatch.setattr(InProcessProvider, "aclose", aclose)
        assert await daemon.try_reload() is not None
        assert closed == built != []


async def test_a_reload_that_fails_once_applying_does_not_say_it_reloaded(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 follows RELOADING=1 whatever happens, but its status said "config reloaded"
    even when putting the new config in place raised."""
    notifier = RecordingNotifier()
    async with daemon_on_file("", notifier) as (daemon, _):

        def broken_apply(*args: object) -> int:
            raise RuntimeError("a bug while applying")

        monkeypatch.setattr(daemon, "_apply", broken_apply)
        with pytest.raises(RuntimeError):
            await daemon.try_reload()
        assert notifier.sent == ["RELOADING=1", "READY=1"]
        assert notifier.statuses[-1].endswith("; reload failed")


async def test_a_reload_reads_the_file_found_at_start_even_once_it_is_gone(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quotad serve`` without ``--config`` (as the systemd units run it) found its file in
    $XDG_CONFIG_HOME; with the file moved away, a reload applied the built-in default (no
    providers: every request unknown_model). Now it reads that file again, and is rejected."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        path = directory / "quotad" / "quotad.toml"
        path.parent.mkdir()
        path.write_text(
            f'[daemon]\nstate_dir = "{directory}"\n[providers.p]\nkind = "openai"\n'
            'base_url = "http://127.0.0.1:9"\n'
        )
        monkeypatch.delenv("QUOTAD_CONFIG", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(directory))
        started: dict[str, Any] = {}

        def run_daemon(config: Config, **options: Any) -> int:
            started.update(options, config=config)
            return 0

        monkeypatch.setattr(runtime, "run_daemon", run_daemon)
        assert cli.main(["serve"]) == 0
        assert started["config_location"] == str(path)
        daemon = Daemon(
            started["config"], directory / "q.sock", config_location=started["config_location"]
        )
        path.rename(directory / "quotad.toml.old")  # an editor's save, half done
        rejected = await daemon.try_reload()
        assert rejected is not None
        assert rejected.problems == ["cannot read the file: No such file or directory"]
        assert list(daemon.providers) == ["p"]
        for provider in daemon.providers.values():
            await provider.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class VectorProvider(InProcessProvider):
    """Embeds every input as a vector of ``width`` values: each model its own width."""

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        width = {"small": 8, "large": 256}[model]
        return EmbedResult(embeddings=[[0.5] * width for _ in inputs], usage=Usage(prompt_tokens=1))


def embedding_group(*targets: str) -> Config:
    return parse_config(
        {
            "providers": {"p": {"kind": "openai", "base_url": UNREACHABLE}},
            "models": {"emb": {"targets": list(targets)}},
        }
    )


async def test_a_group_pointed_at_another_embedding_model_never_answers_with_the_old_vectors(
    anyio_backend: str,
) -> None:
    """A reload took group ``emb`` from an 8-dimension model to a 256-dimension one: the
    same input was answered from the cache with the old model's 8 dimensions."""
    before = embedding_group("p/small")
    provider = VectorProvider()
    request = Embed(id=1, model="emb", input="the same text")
    async with open_store(before) as store:
        broker = Broker(before, Router(before, {"p": provider}), store)
        first = await broker.embed(request, Caller(app="a"))
        assert (first.cached, len(first.embeddings[0])) == (False, 8)
        assert (await broker.embed(request, Caller(app="a"))).cached
        after = embedding_group("p/large")
        broker.reconfigure(after, Router(after, {"p": provider}, previous=broker.router))
        again = await broker.embed(request, Caller(app="a"))
        assert (again.cached, again.target, len(again.embeddings[0])) == (False, "p/large", 256)
        assert (await broker.embed(request, Caller(app="a"))).cached
        # the same targets in another order are the same model: the vectors still answer
        both = embedding_group("p/large", "p/small")
        broker.reconfigure(both, Router(both, {"p": provider}, previous=broker.router))
        assert (await broker.embed(request, Caller(app="a"))).cached is False
        reordered = embedding_group("p/small", "p/large")
        broker.reconfigure(reordered, Router(reordered, {"p": provider}, previous=broker.router))
        assert (await broker.embed(request, Caller(app="a"))).cached


async def test_a_rejected_reload_reports_a_bounded_list_of_problems(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4 MiB config can hold 300,000 problems: their rejection was 11.6 MiB, past the wire
    protocol's frame (``quotad reload`` saw none of them), and logged 24 MB at each reload. A
    key or value quoted in one may be megabytes long too."""
    async with daemon_on_file(provider_tables(9, "p")) as (daemon, path):
        long_key = "k" * 50_000
        write_config(
            path,
            provider_tables(9, "p")
            + f'"{long_key}" = 1\n'
            + "[apps]\n"
            + "".join(f"a{n} = 1\n" for n in range(2_000)),
        )
        with (
            caplog.at_level(logging.ERROR, logger="quotad"),
            pytest.raises(RequestError) as refused,
        ):
            await daemon._reload_for_peer(None, None)
    reported = refused.value.details["problems"]
    assert len(reported) == 101  # the first 100 (config.MAX_REPORTED_PROBLEMS), then a count
    assert all(len(problem) < 1_040 for problem in reported)  # each cut at 1,000 characters
    assert reported[-1] == f"… and 1,901 more (quotad check-config {path} lists them all)"
    assert "2001 problem(s)" in refused.value.message
    logged = [r for r in caplog.records if r.getMessage().startswith("reload rejected: ")]
    assert len(logged) == 101


async def test_sighups_during_a_reload_ask_for_one_more_and_a_sigterm_does_not_wait(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SIGHUP was a reload in turn in the loop that reads signals, and a SIGTERM waited
    for all those before it: 20 SIGHUPs to a daemon of 10,000 apps held its SIGTERM 54 s (past
    systemd's stop timeout). Now SIGHUPs that come during a reload ask for one more, and a
    SIGTERM stops at once."""
    async with daemon_on_file(provider_tables(9, "p")) as (daemon, _):
        reloads: list[int] = []
        first_began, release = anyio.Event(), anyio.Event()
        seen_by_stop: list[int] = []

        async def held_reload(**kwargs: object) -> bool:
            reloads.append(len(reloads) + 1)
            first_began.set()
            await release.wait()
            return True

        async def stop() -> None:
            seen_by_stop.append(len(reloads))  # the first still held
            release.set()
            await anyio.wait_all_tasks_blocked()  # the reloads asked for have run
            seen_by_stop.append(len(reloads))

        monkeypatch.setattr(daemon, "reload", held_reload)
        monkeypatch.setattr(daemon, "stop", stop)
        async with anyio.create_task_group() as tasks:
            await tasks.start(daemon._handle_signals, tasks)
            with anyio.fail_after(10):  # a bound on a hang, not a figure
                os.kill(os.getpid(), signal.SIGHUP)
                await first_began.wait()
                for _ in range(50):
                    os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGTERM)
                await anyio.sleep_forever()  # until the SIGTERM cancels the task group
        assert seen_by_stop == [1, 2]  # the SIGTERM did not wait; 50 SIGHUPs, one more reload


@pytest.mark.parametrize("emptied", ["truncated", "comments only", "a FIFO nobody writes"])
async def test_a_file_that_sets_nothing_is_refused_by_a_reload(
    anyio_backend: str, emptied: str
) -> None:
    """A reload that read the file between an editor's truncation and its write, or a FIFO no
    process writes, applied an empty config: every provider dropped, every request
    unknown_model (2,404 of 4,407 chats of a SIGHUP storm over a file rewritten in place)."""
    async with daemon_on_file(provider_tables(9, "p")) as (daemon, path):
        running = daemon.providers["p"]
        if emptied == "a FIFO nobody writes":
            path.unlink()
            os.mkfifo(path)
        else:
            path.write_text("" if emptied == "truncated" else "# quotad\n\n# to come\n")
        rejected = await daemon.try_reload()
        assert rejected is not None
        assert rejected.problems == [
            "the file sets nothing (it is empty, or holds only comments: a file being written? "
            "a FIFO nothing was written to?); a reload keeps the running config rather than "
            "drop every provider"
        ]
        assert daemon.providers == {"p": running}


async def test_a_reload_that_changes_only_limits_keeps_the_provider_and_its_connections(
    anyio_backend: str,
) -> None:
    """Each limit changed in ``[providers.X]`` rebuilt the provider: a new pool of connections
    (new TLS handshakes with a real provider) at every reload that tuned a limit."""
    async with daemon_on_file(provider_tables(9, "p")) as (daemon, path):
        running = daemon.providers["p"]
        write_config(
            path,
            provider_tables(9, "p")
            + "rpm = 5\ntpm = 900\nlimits = [{ requests = 2, window_s = 1 }]\npace = false\n"
            + "health_check_s = 30\nbreaker = { failures = 2 }\n"
            + '[providers.p.models."m"]\nrpm = 3\n',
        )
        assert await daemon.try_reload() is None
        assert daemon.providers["p"] is running
        assert daemon.config.providers["p"].models["m"].rpm == 3  # applied all the same
        write_config(path, provider_tables(9, "p") + "timeout_s = 5\n")  # the provider's own
        async with anyio.create_task_group() as daemon._tasks:  # closes the one it replaces
            assert await daemon.try_reload() is None
        assert daemon.providers["p"] is not running
