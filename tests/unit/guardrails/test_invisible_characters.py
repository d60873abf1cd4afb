"""Values with characters drawn as nothing inside them, through the check the broker makes on
every request (:meth:`Guardrails.check`) and the reply's way back (:class:`Screening`).

Pasted text brings them: a web page's zero-width spaces and soft hyphens, a word processor's
word joiners, the byte-order mark at a file's start; and right-to-left text puts
left-to-right marks and isolates around every number (a phone number in Hebrew or Arabic
text). A reader sees the value whole, and so must the detectors; what is masked and
restored is the caller's text, invisible characters and all."""

# ruff: noqa: RUF001
# (Arabic-Indic digits, on purpose)

from __future__ import annotations

import unicodedata

import pytest

from quotad.daemon.guardrails import Blocked
from quotad.daemon.guardrails.detectors import ascii_view, in_text, left_out
from quotad.protocol.messages import ChatChunk, ChatReply
from tests.unit.guardrails.test_detectors import found
from tests.unit.guardrails.test_other_scripts import check_chat, text_of

pytestmark = pytest.mark.anyio

ZWSP, ZWJ, WJ, SHY, BOM = "\u200b", "\u200d", "\u2060", "\u00ad", "\ufeff"
LRM, RLM, ALM, LRI, PDI = "\u200e", "\u200f", "\u061c", "\u2066", "\u2069"

# (text, the value in it as written, its kind): the value must be masked exactly
MASKED: list[tuple[str, str, str]] = [
    (f"write to jo{ZWSP}hn@example.com today", f"jo{ZWSP}hn@example.com", "email"),
    (f"write to john@exam{SHY}ple.com today", f"john@exam{SHY}ple.com", "email"),
    (f"call 555-{WJ}123-{WJ}4567 now", f"555-{WJ}123-{WJ}4567", "phone"),
    (
        f"התקשרו אליי {LRM}+972-50-123-4567{LRM} בערב",
        "+972-50-123-4567",  # the marks around it stay outside the value
        "phone",
    ),
    (
        f"התקשרו {LRI}+972{RLM} 50{RLM} 123{RLM} 4567{PDI} תודה",
        f"+972{RLM} 50{RLM} 123{RLM} 4567",
        "phone",
    ),
    (f"اتصل على {ALM}+٤٤ ٢٠{ALM} ٧٩٤٦ ٠٩٥٨ اليوم", f"+٤٤ ٢٠{ALM} ٧٩٤٦ ٠٩٥٨", "phone"),
    (f"{BOM}SSN 123-45-{ZWJ}6789", f"123-45-{ZWJ}6789", "us_ssn"),
    (f"server 203.0.{ZWSP}113.7 is up", f"203.0.{ZWSP}113.7", "ip"),
]

BLOCKED: list[str] = [
    f"card 4111{ZWSP}1111{ZWSP}1111{ZWSP}1111",
    f"card 4111 {WJ}1111 {WJ}1111 {WJ}1111",
    f"card {BOM}4111111111111111{BOM}",
    f"x{ZWSP}4111 1111 1111 1111",  # a zero-width space still ends the word before it
    f"בטלפון {LRM}4111 1111 1111 1111{LRM}",
]

PASSED: list[str] = [  # what is no value with them is no value without them
    f"card 4111{ZWSP}1111{ZWSP}1111{ZWSP}1112",  # Luhn fails
    f"on 2024-{ZWSP}01-{ZWSP}05 at 12:30",
    f"version 3.{ZWSP}11.{ZWSP}2, order 123{WJ}456{WJ}789",
    f"{LRM}٢٠٢٤{LRM} في ١٥ مارس، نما بنسبة ١٢٫٥٪",
    f"mention @{ZWSP}team and lodash@{ZWSP}4.17.21",
]


@pytest.mark.parametrize(("text", "value", "kind"), MASKED)
async def test_a_value_with_invisible_characters_inside_is_masked_and_restored(
    text: str, value: str, kind: str
) -> None:
    checked, screening = await check_chat(text)
    placeholder = f"[{kind.upper()}_1]"
    assert text_of(checked) == text.replace(value, placeholder)
    assert screening.counts == {kind: 1}
    assert screening.restore(ChatReply(content=f"«{placeholder}»")).content == f"«{value}»"


@pytest.mark.parametrize("text", BLOCKED)
async def test_a_card_number_with_invisible_characters_inside_is_blocked(text: str) -> None:
    with pytest.raises(Blocked) as raised:
        await check_chat(text)
    assert raised.value.kinds == ["credit_card"]


@pytest.mark.parametrize("text", PASSED)
async def test_numbers_that_are_no_value_pass_with_invisible_characters_too(text: str) -> None:
    checked, screening = await check_chat(text)
    assert text_of(checked) == text
    assert screening.counts == {}


@pytest.mark.parametrize(
    "pieces",
    [
        ["card: 4111", ZWSP + "1111" + ZWSP, "1111", ZWSP + "1111 ok"],
        ["card: 4111" + BOM, "1111" + BOM + "1111", BOM + "1111", " ok"],  # ≥ U+3000, not a space
        [f"{LRM}4111 ", f"1111{LRM} 1111 ", "1111 ok"],
    ],
    ids=["zero-width-space", "byte-order-mark", "left-to-right-mark"],
)
async def test_a_reply_card_number_split_by_invisible_characters_is_masked_when_streamed(
    pieces: list[str],
) -> None:
    _, screening = await check_chat("give me an example card")
    stream = screening.stream(1)
    shown: list[ChatChunk | None] = [stream.first(ChatChunk(id=1, delta=pieces[0]))]
    shown += [stream.chunk(ChatChunk(id=1, delta=piece)) for piece in pieces[1:]]
    shown.append(stream.flush())
    text = "".join(chunk.delta for chunk in shown if chunk is not None)
    assert "[CREDIT_CARD_1]" in text
    assert "4111" not in text
    assert "1111" not in text
    assert screening.counts == {"credit_card": 1}


def test_the_view_leaves_invisible_characters_out_and_finds_its_way_back() -> None:
    text = f"{BOM}a{ZWSP}{ZWJ}b{SHY}c{LRM}"
    view = ascii_view(text)
    assert view == "abc"
    runs = left_out(text)
    assert [text[in_text(index, runs)] for index in range(3)] == ["a", "b", "c"]
    assert in_text(3, runs) == len(text)
    assert ascii_view(text, leave_out_invisible=False) == text
    assert found(f"{ZWSP}{ZWSP}jo{ZWSP}hn@example.com{ZWSP}") == [
        (f"jo{ZWSP}hn@example.com", "email")
    ]


def test_every_invisible_format_character_is_left_out() -> None:
    """Every character of category Cf but those drawn as a sign (the Arabic number and year
    signs, which stand before the digits they span) and the interlinear annotation and
    Egyptian hieroglyph controls."""
    drawn = {*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x110BD, 0x110CD}
    drawn |= {*range(0xFFF9, 0xFFFC), *range(0x13430, 0x13440)}
    invisible = [
        chr(code)
        for code in range(0x80, 0x110000)
        if unicodedata.category(chr(code)) == "Cf" and code not in drawn
    ]
    assert len(invisible) > 100
    assert ascii_view("1" + "".join(invisible) + "2") == "12"
