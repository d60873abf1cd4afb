"""Values with characters drawn as nothing inside them: in a streamed reply, and the view the
detectors read (what is masked, blocked and passed in a request: the tables of
test_other_scripts.py).

Pasted text brings them: a web page's zero-width spaces and soft hyphens, a word processor's
word joiners, the byte-order mark at a file's start; and right-to-left text puts
left-to-right marks and isolates around every number (a phone number in Hebrew or Arabic
text). A reader sees the value whole, and so must the detectors; what is masked and
restored is the caller's text, invisible characters and all."""

from __future__ import annotations

import unicodedata

import pytest

from quotad.daemon.guardrails.detectors import ascii_view, in_text, left_out
from quotad.protocol.messages import ChatChunk
from tests.unit.guardrails.test_detectors import found
from tests.unit.guardrails.test_other_scripts import BOM, LRM, SHY, ZWJ, ZWSP, check_chat

pytestmark = pytest.mark.anyio


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
