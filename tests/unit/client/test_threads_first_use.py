"""Many threads using the protocol's message types for the first time at once do not crash the
process.

msgspec (0.22, GIL builds) fills in a Struct type's field info on its first use, after making
it visible to other threads: a thread switch in between lets another thread convert or decode
with a field type that is still NULL, and the process dies of SIGSEGV. It killed a
16-thread blocking-client process in the fleet budget tests. :mod:`quotad.protocol.messages`
fills in every message type at import, which no other thread can interleave with. Each run
here is a fresh interpreter (the info is per process) switching threads every microsecond, so
that the window is hit: before the fix every run crashed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RACE = textwrap.dedent(
    """
    import sys, threading, faulthandler
    faulthandler.enable()
    sys.setswitchinterval(1e-6)
    from quotad.client._common import build, chat_request
    from quotad.protocol.framing import FrameEncoder, reply_decoder
    from quotad.protocol.messages import (
        Acquire, Admin, ChatReply, ClusterStatus, Embed, Event, RequestRecord, Settle, Snapshot,
        Spend, SpendReply, SpendRow, Status, StatusReply, TargetStatus, Usage,
    )

    PARTS = [
        {"type": "text", "text": "héllo 世界"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    REPLIES = FrameEncoder().encode(ChatReply(id=1, content="ok", usage=Usage(prompt_tokens=3)))
    REPLIES += FrameEncoder().encode(StatusReply(
        id=2, targets=[TargetStatus(name="t")], events=[Event(kind="k")],
        cluster=ClusterStatus(host="h"),
    ))
    REPLIES += FrameEncoder().encode(Snapshot(id=3, requests=[RequestRecord(app="a")]))
    REPLIES += FrameEncoder().encode(SpendReply(id=4, rows=[SpendRow(key="k")]))
    barrier = threading.Barrier(16)

    def first_use():
        barrier.wait()
        chat_request(
            "m", [{"role": "user", "content": PARTS}], stream=False, max_tokens=5,
            temperature=None, tools=None, priority=None, max_wait_s=None, cache="use",
            user="", tags=None, extra={"stop": "x"},
        )
        build(Embed, model="m", input=["a"])
        build(Acquire, target="m", tokens=5)
        build(Settle, permit_id="p", tokens_used=1, prompt_tokens=1)
        build(Status)
        build(Spend, period="day", by="app")
        build(Admin, action="reload")
        assert len(list(reply_decoder().feed(REPLIES))) == 4

    threads = [threading.Thread(target=first_use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("done")
    """
)


@pytest.mark.parametrize("run", range(3))
def test_sixteen_threads_using_the_messages_first_at_once(run: int) -> None:
    out = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "done"


def test_the_unions_filled_in_at_import_reach_every_message_struct() -> None:
    import msgspec

    from quotad.protocol import messages

    reached: set[type] = set()

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in reached:
                return
            reached.add(info.cls)
            for field in info.fields:
                walk(field.type)
        for attribute in ("types", "item_type", "key_type", "value_type"):
            inner = getattr(info, attribute, None)
            if isinstance(inner, tuple):
                for item in inner:
                    walk(item)
            elif isinstance(inner, msgspec.inspect.Type):
                walk(inner)

    walk(msgspec.inspect.type_info(messages.Request | messages.Reply))
    structs = {
        value
        for value in vars(messages).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__.startswith(f"{messages.__name__}.")  # its modules' own
        and value not in (messages.Message, messages.PipelineRequest, messages.PipelineReply)
    }
    assert structs - reached == set()
