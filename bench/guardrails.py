"""The guardrails' cost: microseconds of CPU per KB of prompt (UTF-8) to check a request
with every detector on (all seven kinds masked), on realistic mixed text (prose with a few
entities, code, JSON, CJK), on a typical chat of about 2 KB, on entity-dense prose, on prose
in other scripts with numbers written in their own digits and fullwidth forms, and on
hostile text (the slowest of the adversarial inputs of
tests/unit/guardrails/test_adversarial.py, per MB); then a reply's
restoring, whole and streamed with output rules. The baseline, in the same run, is what the
daemon pays for every request anyway: decoding its frame (MessagePack → ``Chat``); the
ratios say how many frame decodes a check costs. CPU time (``time.process_time``, least of
several runs), so that a loaded machine's scheduling does not count. Prints one JSON line.

    uv run python bench/guardrails.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.daemon.config import ENTITY_KINDS, parse_config
from quotad.daemon.guardrails import AppGuard, Guard
from quotad.protocol.messages import Chat, ChatMessage, ChatReply
from tests.support import guardrails as samples
from tests.unit.guardrails.test_adversarial import UNITS, repeated

TARGET_US_PER_KB = 50.0

OTHER_SCRIPTS = (  # a phone number in each, dates, amounts, versions: numbers as typed there
    "会議は２０２４年３月２日（土）１０時から。資料：バージョン２．４．１、価格は１，２００円。"  # noqa: RUF001
    "ご不明な点は０９０－１２３４－５６７８までお電話ください。　"  # noqa: RUF001
    "在２０２４年第３季度，销售额增长了１２．５％（见第１２页）。联系电话：０１０－１２３４５６７８。"  # noqa: RUF001
    "في ١٥ مارس ٢٠٢٤ ارتفعت المبيعات بنسبة ١٢٫٥٪، للاستفسار اتصل على ٠٢٠ ٧٩٤٦ ٠٩٥٨ شكرا. "  # noqa: RUF001
    "२०२४ में बिक्री १२.५% बढ़ी; संपर्क +९१ ९८७६५ ४३२१० पर करें। "
)


def cpu_seconds(call: Callable[[], object], repeat: int) -> float:
    """The least CPU time of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        call()
        best = min(best, time.process_time() - started)
    return best


def request_of(text: str, messages: int = 8) -> Chat:
    """A chat whose ``messages`` messages share ``text`` between them."""
    size = len(text) // messages + 1
    return Chat(
        model="fast",
        messages=[
            ChatMessage(
                role="user" if index % 2 else "assistant", content=text[start : start + size]
            )
            for index, start in enumerate(range(0, len(text), size))
        ],
    )


def every_detector() -> AppGuard:
    rules = dict.fromkeys(ENTITY_KINDS, "mask")
    config = parse_config({"guardrails": {"input": rules, "output": {"secret": "mask"}}})
    return Guard(config).for_app("bench")


def check_cost(guard: AppGuard, text: str, repeat: int) -> dict[str, float]:
    """µs per KB to check a request holding ``text``, and the frame decode beside it."""
    request = request_of(text)
    frame = msgspec.msgpack.encode(request)
    decoder = msgspec.msgpack.Decoder(Chat)
    kb = len(text.encode()) / 1024
    checked = guard.check_chat(request)
    found = sum(checked.counts.values())
    decode = cpu_seconds(lambda: decoder.decode(frame), repeat) / kb * 1e6
    check = cpu_seconds(lambda: guard.check_chat(request), repeat) / kb * 1e6
    return {
        "us_per_kb": round(check, 1),
        "decode_us_per_kb": round(decode, 2),
        "vs_decode": round(check / decode, 1),
        "entities_per_kb": round(found / kb, 2),
    }


def chat_cost(guard: AppGuard, repeat: int) -> dict[str, float]:
    """µs per KB (and per request) to check a typical chat of about 2 KB: small messages,
    where what a check costs per message and per entity weighs more than per KB."""
    request = Chat(
        model="fast", messages=[msgspec.convert(m, ChatMessage) for m in samples.typical_chat()]
    )
    kb = sum(len(str(message.content).encode()) for message in request.messages) / 1024
    seconds = cpu_seconds(lambda: [guard.check_chat(request) for _ in range(20)], repeat) / 20
    return {"us_per_kb": round(seconds / kb * 1e6, 1), "us_per_request": round(seconds * 1e6, 1)}


def restore_cost(guard: AppGuard, text: str, repeat: int) -> dict[str, float]:
    """µs per KB to restore a reply as long as ``text`` (its entities as placeholders),
    whole and streamed in 16-character pieces with output rules on."""
    checked = guard.check_chat(request_of(text, messages=1))
    reply_text = checked.request.messages[0].content
    assert isinstance(reply_text, str)
    kb = len(reply_text.encode()) / 1024
    reply = ChatReply(content=reply_text)

    def streamed() -> None:
        stream = checked.restorer.stream()
        for start in range(0, len(reply_text), 16):
            stream.feed(reply_text[start : start + 16])
        stream.flush()

    whole = cpu_seconds(lambda: checked.restorer.reply(reply), repeat) / kb * 1e6
    stream = cpu_seconds(streamed, repeat) / kb * 1e6
    return {"whole_us_per_kb": round(whole, 1), "stream_us_per_kb": round(stream, 1)}


def hostile_cost(guard: AppGuard, size: int) -> dict[str, Any]:
    """The slowest hostile input, in ms per MB."""
    costs = {}
    for name, unit in UNITS.items():
        request = request_of(repeated(unit, size))

        def check(request: Chat = request) -> None:
            guard.check_chat(request)

        seconds = cpu_seconds(check, 1)
        costs[name] = seconds / (size / 2**20) * 1000
    worst = max(costs, key=lambda name: costs[name])
    return {"worst": worst, "worst_ms_per_mb": round(costs[worst], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    size = 16 * 1024 if args.quick else 256 * 1024
    repeat = 3 if args.quick else 9
    guard = every_detector()
    mixed = samples.mixed_text(size)
    dense = samples.mixed_text(size, entity_share=1.0).replace(samples.CJK, "")
    figures: dict[str, Any] = {"bench": "guardrails", "target_us_per_kb": TARGET_US_PER_KB}
    figures["mixed"] = check_cost(guard, mixed, repeat)
    figures["chat_2kb"] = chat_cost(guard, repeat * 50)
    figures["dense_prose"] = check_cost(
        guard,
        samples.PROSE.format(email=samples.EXAMPLES["email"][0], phone=samples.EXAMPLES["phone"][0])
        * (size // 340),
        repeat,
    )
    figures["code"] = check_cost(guard, repeated(samples.CODE, size), repeat)
    figures["json"] = check_cost(
        guard, repeated(samples.JSON_TEXT.replace("{ip}", "localhost"), size), repeat
    )
    figures["cjk"] = check_cost(guard, repeated(samples.CJK, size), repeat)
    figures["other_scripts"] = check_cost(guard, repeated(OTHER_SCRIPTS, size), repeat)
    figures["restore"] = restore_cost(guard, dense, repeat)
    figures["hostile"] = hostile_cost(guard, (1 << 17) if args.quick else (1 << 20))
    figures["mixed_within_target"] = figures["mixed"]["us_per_kb"] <= TARGET_US_PER_KB
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
