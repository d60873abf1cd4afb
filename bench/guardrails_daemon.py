"""What the guardrails add in the daemon, and what checking a big request off the event loop
costs and buys.

``chat_2kb``: one real ``quotad serve`` in front of one ``quotad sim`` (no latency), a typical
chat of about 2 KB of text (a system prompt and four turns, an e-mail address and a phone
number in them) sent through the native client, cache bypassed, as two apps of the same
daemon: ``guarded`` (every detector on, masking; output rule on secrets; restore on) and
``plain`` (every guardrail off for it). The arms alternate in rounds, so that the noise of a
shared machine falls on both alike; the figure is the added p50 latency and the ratio, plain
and streamed.

``off_loop``: in this process, :meth:`Guardrails.check` on requests of 64 KB and 1 MB of
mixed text, inline and in a worker thread (as the daemon does above
``OFF_LOOP_CHARS``): the wall time of one check each way, and how late a task that wants the
event loop every millisecond runs meanwhile (its worst lateness): what other requests wait.
Prints one JSON line.

    uv run python bench/guardrails_daemon.py [--rounds 6] [--requests 150] [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import bench_parser, percentile, print_figures, sequential
from quotad.client import Client
from quotad.daemon.caller import Caller
from quotad.daemon.config import ENTITY_KINDS, parse_config
from quotad.daemon.guardrails.screening import Guardrails
from quotad.daemon.request_context import RequestContext
from quotad.protocol.messages import Chat, ChatMessage
from tests.support import guardrails as samples
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

EVERY_KIND = "\n".join(f'{kind} = "mask"' for kind in ENTITY_KINDS)
EVERY_KIND_OFF = "\n".join(f'{kind} = "off"' for kind in ENTITY_KINDS)
GUARDRAILS = f"""\
[guardrails.input]
{EVERY_KIND}
[guardrails.output]
secret = "mask"
[apps.plain.guardrails.input]
{EVERY_KIND_OFF}
[apps.plain.guardrails.output]
secret = "off"
"""
MODEL = "sim/gpt-4o-mini"


def guarded_config(sim_url: str) -> str:
    """No cache; every kind masked in requests and secrets in answers, except for app ``plain``."""
    return daemon_config(GUARDRAILS, sim_provider_config("sim", sim_url), cache='mode = "off"')


def chat_2kb(rounds: int, requests: int) -> dict[str, Any]:
    messages: list[Any] = samples.typical_chat()
    size = sum(len(message["content"].encode()) for message in messages)
    with (
        SimProcess() as sim,
        DaemonProcess(guarded_config(sim.base_url)) as daemon,
        Client(socket=daemon.socket_path, app="guarded") as guarded,
        Client(socket=daemon.socket_path, app="plain") as plain,
    ):
        reply = guarded.chat(MODEL, messages, max_tokens=32, cache="bypass")
        assert reply.content is not None
        assert samples.EXAMPLES["email"][0] in reply.content  # masked, then restored

        def arms(stream: bool) -> dict[str, list[float]]:
            def call(client: Client) -> Any:
                if stream:
                    return lambda: list(
                        client.chat_stream(MODEL, messages, max_tokens=32, cache="bypass")
                    )
                return lambda: client.chat(MODEL, messages, max_tokens=32, cache="bypass")

            latencies: dict[str, list[float]] = {"plain": [], "guarded": []}
            for client in (plain, guarded):  # warm both
                sequential(call(client), 30)
            for _ in range(rounds):
                latencies["plain"] += sequential(call(plain), requests)
                latencies["guarded"] += sequential(call(guarded), requests)
            return latencies

        figures: dict[str, Any] = {"text_bytes": size}
        for name, stream in (("plain", False), ("streamed", True)):
            latencies = arms(stream)
            off = statistics.median(latencies["plain"])
            on = statistics.median(latencies["guarded"])
            figures[name] = {
                "off_p50_ms": round(off * 1000, 3),
                "on_p50_ms": round(on * 1000, 3),
                "added_p50_us": round((on - off) * 1e6, 1),
                "ratio": round(on / off, 3),
                "off_p99_ms": round(percentile(latencies["plain"], 0.99) * 1000, 3),
                "on_p99_ms": round(percentile(latencies["guarded"], 0.99) * 1000, 3),
            }
    return figures


async def checks_beside_a_ticker(
    guardrails: Guardrails, request: Chat, repeat: int
) -> tuple[float, float]:
    """The least wall time of ``repeat`` checks of ``request``, and the worst lateness of a
    task that wants the event loop every millisecond meanwhile."""
    walls: list[float] = []
    lateness = [0.0]
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            asked = time.perf_counter()
            await anyio.sleep(0.001)
            lateness.append(time.perf_counter() - asked - 0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await anyio.sleep(0.01)
        lateness[:] = [0.0]
        for _ in range(repeat):
            started = time.perf_counter()
            context = RequestContext("bench", "chat", Caller(app="bench"), "m", 0.0)
            await guardrails.check(request, context)
            walls.append(time.perf_counter() - started)
            await anyio.sleep(0.005)
        done.set()
    return min(walls), max(lateness)


async def off_loop(sizes: list[int], repeat: int) -> dict[str, Any]:
    config = parse_config({"guardrails": {"input": dict.fromkeys(ENTITY_KINDS, "mask")}})
    figures: dict[str, Any] = {}
    for size in sizes:
        text = samples.mixed_text(size)
        chunk = len(text) // 8 + 1
        request = Chat(
            model="m",
            messages=[
                ChatMessage(role="user", content=text[start : start + chunk])
                for start in range(0, len(text), chunk)
            ],
        )
        row: dict[str, Any] = {}
        for mode, threshold in (("inline", 1 << 62), ("thread", 0)):
            guardrails = Guardrails(config, off_loop_chars=threshold)
            wall, late = await checks_beside_a_ticker(guardrails, request, repeat)
            row[f"{mode}_ms"] = round(wall * 1000, 2)
            row[f"{mode}_loop_late_ms"] = round(late * 1000, 2)
        row["thread_cost_ms"] = round(row["thread_ms"] - row["inline_ms"], 2)
        figures[f"{size // 1024}kb"] = row
    return figures


def main() -> None:
    args = bench_parser(__doc__, "a few requests (smoke test)", rounds=6, requests=150).parse_args()
    rounds, requests = (1, 10) if args.quick else (args.rounds, args.requests)
    sizes = [64 * 1024] if args.quick else [64 * 1024, 1024 * 1024]
    figures: dict[str, Any] = {"bench": "guardrails_daemon"}
    figures["chat_2kb"] = chat_2kb(rounds, requests)
    figures["off_loop"] = anyio.run(
        off_loop, sizes, 2 if args.quick else 5, backend_options={"use_uvloop": True}
    )
    print_figures(figures)


if __name__ == "__main__":
    main()
