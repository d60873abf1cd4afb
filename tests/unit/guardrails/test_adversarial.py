"""No input makes the guardrails slow: a megabyte of digits, ``@``, letters, base64, colons,
markers… each takes time linear in its size. Asserted as scaling (8 times the input may not
take much more than 8 times as long), never as absolute time; CPU time, so that a loaded
machine's scheduling does not count."""

from __future__ import annotations

import random
import string
import time

import anyio
import anyio.to_thread
import pytest

from quotad.daemon.config import ENTITY_KINDS, EntityKind, parse_config
from quotad.daemon.guardrails import Guard
from quotad.daemon.guardrails.detectors import find_entities
from quotad.protocol.messages import Chat, ChatMessage
from tests.support.event_loop import TurnCounter
from tests.support.scaling import LINEAR_RATIO_BOUND, cpu_time

SMALL = 1 << 17
LARGE = 1 << 20  # 8 x SMALL

_rng = random.Random(5)
BASE64 = "".join(_rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(4096))

UNITS = {
    "digits": "1",
    "at_signs": "@",
    "letters": "a",
    "base64": BASE64,
    "local_parts": "a@",
    "dotted_domains": "a@b.",
    "dotted_digits": "1.",
    "colons": ":",
    "hex_colons": "ab:",
    "spaced_digits": "1 ",
    "dashed_digits": "1-",
    "plus_digits": "+1 ",
    "parenthesised": "(1) ",
    "pem_headers": "-----BEGIN PRIVATE KEY-----\n",
    "pem_bodies": "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n",
    "aws_key_ids": "AKIAAAAAAAAAAAAAAAAA ",
    "jwt_starts": "eyJ.",
    "openai_starts": "sk-",
    "iban_starts": "DE89 ",
    "ssn_groups": "123-45-",
    "slack_starts": "xoxb-1",
    "aws_labels": "secret_access_key=",
    "dashes": "-",
    "cjk": "本",
    "fullwidth_digits": "\uff11",
    "fullwidth_groups": "\uff11\u3000",
    "arabic_digits": "\u0664 ",
    "cjk_punctuation": "\u672c\uff0c",
    "json_escapes": "\\n1 ",
    "zero_width_spaces": "\u200b",
    "zero_width_digits": "1\u200b",
    "zero_width_cards": "4111\u200b1111\u200b1111\u200b1111 ",
    "marked_numbers": "\u05d8 \u200e123\u200e ",
}


def repeated(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


@pytest.mark.parametrize("unit", list(UNITS.values()), ids=list(UNITS))
def test_detection_is_linear(unit: str) -> None:
    small, large = repeated(unit, SMALL), repeated(unit, LARGE)
    ratio = cpu_time(lambda: find_entities(large, ENTITY_KINDS)) / cpu_time(
        lambda: find_entities(small, ENTITY_KINDS)
    )
    assert ratio < LINEAR_RATIO_BOUND


NESTED_UNITS = {
    # every address's local part is the one before's domain: all of them overlap in one run,
    # and choosing among them compared each with every one chosen
    "chained_addresses": "a@b.c",
    "chained_addresses_zero_width": "a@b\u200b.c",
    # every private key header inside the one before's lines (a header line's value runs to
    # the line's end), and the lines were read to the text's end from every header
    "pem_headers_in_header_lines": "a:-----BEGIN RSA PRIVATE KEY-----\n",
    "pem_headers_on_one_line": "-----BEGIN RSA PRIVATE KEY----- x: ",
}


@pytest.mark.parametrize("unit", list(NESTED_UNITS.values()), ids=list(NESTED_UNITS))
def test_values_overlapping_or_inside_one_another_are_linear(unit: str) -> None:
    """Inputs that took time quadratic in their size (64 KB of each: seconds; a megabyte:
    minutes), so at smaller sizes than above."""
    small, large = repeated(unit, SMALL // 16), repeated(unit, LARGE // 16)
    assert find_entities(small, ENTITY_KINDS)
    ratio = cpu_time(lambda: find_entities(large, ENTITY_KINDS)) / cpu_time(
        lambda: find_entities(small, ENTITY_KINDS)
    )
    assert ratio < LINEAR_RATIO_BOUND


@pytest.mark.parametrize(
    "unit",
    [
        *("x", "1 ", "[EMA", "本", "-----BEGIN RSA PRIVATE KEY-----\n"),
        *("\uff11", "\uff11\u3000", "\u672c\uff0c"),  # fullwidth digit, space, comma
    ],
)
def test_a_stream_in_small_pieces_is_linear(unit: str) -> None:
    guard = Guard(
        parse_config(
            {
                "guardrails": {
                    "input": {"email": "mask"},
                    "output": {"secret": "mask", "phone": "mask"},
                }
            }
        )
    ).for_app("a")
    request = Chat(model="m", messages=[ChatMessage(role="user", content="a@example.com")])

    def stream(size: int) -> None:
        restorer = guard.check_chat(request).restorer.stream()
        text = repeated(unit, size)
        for index in range(0, size, 8):
            restorer.feed(text[index : index + 8])
        restorer.flush()

    ratio = cpu_time(lambda: stream(LARGE // 4)) / cpu_time(lambda: stream(SMALL // 4))
    assert ratio < LINEAR_RATIO_BOUND


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_many_entities_are_put_in_order_without_holding_the_gil_in_one_call(
    anyio_backend: str,
) -> None:
    """A big request is screened in a worker thread so that the event loop serves others
    meanwhile; but ``sorted(set(found))`` of 460,000 addresses' spans (7 MB of them) was one
    call that held the GIL 1.2 s, and the loop with it (a quarter of the screening's time).
    Another task's longest wait for a turn is now a small part of it."""
    counter = TurnCounter()
    text = "ana@example.com " * 200_000
    emails: frozenset[EntityKind] = frozenset({"email"})
    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(counter.run)
        found = await anyio.to_thread.run_sync(find_entities, text, emails)
        counter.done = True
    elapsed = time.perf_counter() - started
    assert len(found) == 200_000
    assert counter.longest_wait_s < elapsed / 10, (counter.longest_wait_s, elapsed)
