"""Values as users of other scripts type them, through the check the broker makes on every
request (:meth:`Guardrails.check`) and the reply's way back (:class:`Screening`): Japanese
and Chinese input methods type fullwidth digits, punctuation and spaces by default
(``０９０－１２３４－５６７８``), Arabic and Persian users write Arabic-Indic digits, Hindi
users sometimes Devanagari ones. Each is found as its ASCII spelling would be; what is
masked, restored and held back in a stream is the caller's own writing, character for
character."""

# ruff: noqa: RUF001, RUF002
# (the strings here are other ways of writing ASCII characters, on purpose)

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest

from quotad.daemon.caller import Caller
from quotad.daemon.config import Config, EntityKind, parse_config
from quotad.daemon.guardrails import Blocked
from quotad.daemon.guardrails.detectors import ascii_view
from quotad.daemon.guardrails.screening import Guardrails, Screening
from quotad.daemon.request_context import RequestContext
from quotad.protocol.messages import Chat, ChatChunk, ChatMessage, ChatReply, Embed
from tests.unit.guardrails.test_detectors import found

pytestmark = pytest.mark.anyio

MASK = parse_config(
    {
        "guardrails": {
            "input": dict.fromkeys(("email", "phone", "iban", "ip", "us_ssn"), "mask")
            | {"credit_card": "block"},
            "output": {"credit_card": "mask"},
        }
    }
)

# (text, the value in it as written, its kind): the value must be masked exactly
MASKED: list[tuple[str, str, EntityKind]] = [
    ("電話番号は０９０－１２３４－５６７８です", "０９０－１２３４－５６７８", "phone"),
    ("（０３）１２３４－５６７８までお電話ください", "（０３）１２３４－５６７８", "phone"),
    ("电话：＋８６　１３８　１２３４　５６７８。", "＋８６　１３８　１２３４　５６７８", "phone"),
    ("رقم هاتفي ٠٢٠ ٧٩٤٦ ٠٩٥٨ شكرا", "٠٢٠ ٧٩٤٦ ٠٩٥٨", "phone"),
    ("اتصل على +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨ اليوم", "+٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨", "phone"),
    ("شماره من ۰۹۱۲ ۳۴۵ ۶۷۸۹ است", "۰۹۱۲ ۳۴۵ ۶۷۸۹", "phone"),
    ("मेरा नंबर +९१ ९८७६५ ४३२१० है", "+९१ ९८७६५ ४३२१०", "phone"),
    ("メール：ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ まで", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "email"),
    ("邮箱ana＠example.com。", "ana＠example.com", "email"),
    (
        "口座ＤＥ８９　３７０４　００４４　０５３２　０１３０　００です",
        "ＤＥ８９　３７０４　００４４　０５３２　０１３０　００",
        "iban",
    ),
    ("SSN：１２３－４５－６７８９", "１２３－４５－６７８９", "us_ssn"),
    ("サーバー２０３．０．１１３．７に接続", "２０３．０．１１３．７", "ip"),
    ("الخادم ٢٠٣.٠.١١٣.٧ متصل", "٢٠٣.٠.١١٣.٧", "ip"),
    # spaces and hyphens that are not ASCII's (pasted from a web page, a word processor)
    (
        "Appelez le 06\u00a012\u00a034\u00a056\u00a078 demain",
        "06\u00a012\u00a034\u00a056\u00a078",
        "phone",
    ),
    (
        "Tél. : +33\u202f1\u202f23\u202f45\u202f67\u202f89.",
        "+33\u202f1\u202f23\u202f45\u202f67\u202f89",
        "phone",
    ),
    ("call 555\u2011123\u20114567 now", "555\u2011123\u20114567", "phone"),
    ("call 020\u20127946\u20120958 now", "020\u20127946\u20120958", "phone"),
    ("SSN 123\u201045\u20106789", "123\u201045\u20106789", "us_ssn"),
]

BLOCKED: list[str] = [
    "カード番号：４１１１　１１１１　１１１１　１１１１",
    "カード番号：４１１１－１１１１－１１１１－１１１１です",
    "卡号４１１１１１１１１１１１１１１１，谢谢",
    "رقم البطاقة ٤١١١ ١١١١ ١١١١ ١١١١",
    "कार्ड ५५५५ ५५५५ ५५५५ ४४४४ है",
    "carte 4111\u00a01111\u00a01111\u00a01111",
    "card 4111\u20111111\u20111111\u20111111",
]

PASSED: list[str] = [  # the same shapes failing Luhn, and dates, years, amounts
    "カード番号：４１１１　１１１１　１１１１　１１１２",
    "رقم البطاقة ٤١١١ ١١١١ ١١١١ ١١١٢",
    "２０２４年１月５日（金）、２０２４－０１－０５に会議。",
    "价格是１２，３４５元，订单号１２３４５６７８９，版本３．１１．２。",
    "في عام ٢٠٢٤ دفعنا ١٢٣٤٥٦٧٨٩ ريال في ٠٥/٠١/٢٠٢٤",
    "Total : 1 234 567,89 € au 05 / 01 / 2024, pages 12\u201015.".replace(" ", "\u00a0"),
    "from \u2212273.15 to 2019\u20102020, order 123\u2009456\u2009789",
]

# characters drawn as nothing inside values: pasted text's zero-width spaces, word joiners and
# soft hyphens, a file's byte-order mark, the direction marks right-to-left text puts around
# and inside numbers (what a reader sees whole, the detectors must too; streams and the view
# they read: test_invisible_characters.py)
ZWSP, ZWJ, WJ, SHY, BOM = "\u200b", "\u200d", "\u2060", "\u00ad", "\ufeff"
LRM, RLM, ALM, LRI, PDI = "\u200e", "\u200f", "\u061c", "\u2066", "\u2069"
MASKED += [
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

BLOCKED += [
    f"card 4111{ZWSP}1111{ZWSP}1111{ZWSP}1111",
    f"card 4111 {WJ}1111 {WJ}1111 {WJ}1111",
    f"card {BOM}4111111111111111{BOM}",
    f"x{ZWSP}4111 1111 1111 1111",  # a zero-width space still ends the word before it
    f"בטלפון {LRM}4111 1111 1111 1111{LRM}",
]

PASSED += [  # what is no value with them is no value without them
    f"card 4111{ZWSP}1111{ZWSP}1111{ZWSP}1112",  # Luhn fails
    f"on 2024-{ZWSP}01-{ZWSP}05 at 12:30",
    f"version 3.{ZWSP}11.{ZWSP}2, order 123{WJ}456{WJ}789",
    f"{LRM}٢٠٢٤{LRM} في ١٥ مارس، نما بنسبة ١٢٫٥٪",
    f"mention @{ZWSP}team and lodash@{ZWSP}4.17.21",
]


def context() -> RequestContext:
    return RequestContext(
        request_id="r-1", kind="chat", caller=Caller(app="a"), model="m", started=0.0
    )


async def check_chat(content: str, config: Config = MASK) -> tuple[Chat, Screening]:
    request = Chat(model="m", messages=[ChatMessage(role="user", content=content)])
    return await Guardrails(config).check(request, context())


def text_of(chat: Chat) -> Any:
    return chat.messages[0].content


@pytest.mark.parametrize(("text", "value", "kind"), MASKED)
async def test_a_value_typed_in_another_script_is_masked(
    text: str, value: str, kind: EntityKind
) -> None:
    checked, screening = await check_chat(text)
    placeholder = f"[{kind.upper()}_1]"
    assert text_of(checked) == text.replace(value, placeholder)
    assert screening.counts == {kind: 1}
    assert screening.restore(ChatReply(content=f"«{placeholder}»")).content == f"«{value}»"


@pytest.mark.parametrize("text", BLOCKED)
async def test_a_card_number_typed_in_another_script_is_blocked(text: str) -> None:
    with pytest.raises(Blocked) as raised:
        await check_chat(text)
    assert raised.value.kinds == ["credit_card"]


@pytest.mark.parametrize("text", PASSED)
async def test_numbers_that_are_no_value_pass_in_any_script(text: str) -> None:
    checked, screening = await check_chat(text)
    assert text_of(checked) == text
    assert screening.counts == {}


async def test_tool_call_arguments_and_embedding_inputs_are_read_the_same_way() -> None:
    phone = "０９０－１２３４－５６７８"
    for arguments in (json.dumps({"tel": phone}, ensure_ascii=False), json.dumps({"tel": phone})):
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        request = Chat(model="m", messages=[ChatMessage(role="assistant", tool_calls=[call])])
        checked, _ = await Guardrails(MASK).check(request, context())
        calls = checked.messages[0].tool_calls
        assert calls is not None
        assert json.loads(calls[0]["function"]["arguments"]) == {"tel": "[PHONE_1]"}
    embed = Embed(model="e", input=["رقم هاتفي ٠٢٠ ٧٩٤٦ ٠٩٥٨", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"])
    masked, screening = await Guardrails(MASK).check(embed, context())
    assert masked.input == ["رقم هاتفي [PHONE_1]", "[EMAIL_1]"]
    assert screening.counts == {"phone": 1, "email": 1}


async def test_each_writing_of_a_value_is_restored_as_its_caller_wrote_it() -> None:
    checked, screening = await check_chat(
        "携帯は０９０－１２３４－５６７８、つまり090-1234-5678です。"
    )
    assert text_of(checked) == "携帯は[PHONE_1]、つまり[PHONE_2]です。"
    reply = screening.restore(ChatReply(content="[PHONE_2] = [PHONE_1]"))
    assert reply.content == "090-1234-5678 = ０９０－１２３４－５６７８"


async def test_a_reply_card_number_in_fullwidth_digits_is_masked_whole_or_streamed() -> None:
    _, screening = await check_chat("カードの例を出して")
    card = "４１１１　１１１１　１１１１　１１１１"
    reply = screening.screen(ChatReply(content=f"例：{card}です"))
    assert reply.content == "例：[CREDIT_CARD_1]です"
    _, screening = await check_chat("カードの例を出して")
    stream = screening.stream(1)
    pieces = ["例：４１１１　", "１１１１　１１", "１１　", "１１１１", "です"]
    shown: list[ChatChunk | None] = [stream.first(ChatChunk(id=1, delta=pieces[0]))]
    shown += [stream.chunk(ChatChunk(id=1, delta=piece)) for piece in pieces[1:]]
    shown.append(stream.flush())
    text = "".join(chunk.delta for chunk in shown if chunk is not None)
    assert text == "例：[CREDIT_CARD_1]です"
    assert screening.counts == {"credit_card": 1}


# ------------------------------------------------------------------ the detectors themselves

# (text around the value, the value, its kind): the value must be found exactly
TRUE_POSITIVES: list[tuple[str, str, EntityKind]] = [
    ("call {} now", "＋４４　２０　７９４６　０９５８", "phone"),
    ("電話{}です", "０９０－１２３４－５６７８", "phone"),
    ("電話{}まで", "（０３）１２３４－５６７８", "phone"),
    ("اتصل {} الآن", "٠٢٠ ٧٩٤٦ ٠٩٥٨", "phone"),
    ("تماس {} لطفا", "۰۹۱۲ ۳۴۵ ۶۷۸۹", "phone"),
    ("नंबर {} है", "+९१ ९८७६५ ४३२१०", "phone"),
    ("カード{}です", "４１１１　１１１１　１１１１　１１１１", "credit_card"),
    ("卡号{}，", "５５５５５５５５５５５５４４４４", "credit_card"),
    ("بطاقة {} شكرا", "٤١١١-١١١١-١١١١-١١١١", "credit_card"),
    ("メール{}まで", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "email"),
    ("口座{}です", "ＤＥ８９　３７０４　００４４　０５３２　０１３０　００", "iban"),
    ("SSN：{}", "１２３－４５－６７８９", "us_ssn"),
    ("サーバー{}に", "２０３．０．１１３．７", "ip"),
    ("地址{}之", "２００１：ｄｂ８：：８ａ２ｅ：３７０：７３３４", "ip"),
    ("mixed {} digits", "٤١١١ 1111 ११११ １１１１", "credit_card"),
]


@pytest.mark.parametrize(("around", "value", "kind"), TRUE_POSITIVES)
def test_true_positives_in_other_scripts(around: str, value: str, kind: EntityKind) -> None:
    assert found(around.format(value)) == [(value, kind)]


# (text, kind that must NOT be found in it): what is left alone in ASCII is left alone here
FALSE_POSITIVES: list[tuple[str, EntityKind]] = [
    ("２０２４－０１－０５　１２：３０", "phone"),
    ("２０２４年１月５日（金）", "phone"),
    ("٠٥/٠١/٢٠٢٤", "phone"),
    ("注文番号１２３４５６７８９", "phone"),
    ("ｐｙｔｈｏｎ　３．１１．２", "ip"),
    ("１２７．０．０．１", "ip"),
    ("４１１１　１１１１　１１１１　１１１２", "credit_card"),
    ("epoch ١٧٠٠٠٠٠٠٠٠٠١٨", "credit_card"),
    ("１２３－４５－６７８９０", "us_ssn"),
    ("ＤＥ８９　３７０４　００４４　０５３２　０１３０　０１", "iban"),
    ("＠ｍｅｎｔｉｏｎ　ａｎｄ　ｌｏｄａｓｈ＠４．１７．２１", "email"),
]


@pytest.mark.parametrize(("text", "kind"), FALSE_POSITIVES)
def test_false_positives_in_other_scripts(text: str, kind: EntityKind) -> None:
    assert kind not in {found_kind for _value, found_kind in found(text)}


@pytest.mark.parametrize(
    "text",
    [
        "２０２４年３月２日、バージョン２．４．１をリリース（ＲＦＣ　２６１６、ＩＳＯ　８６０１）。"
        "価格は１，２００円、前年比１２．５％増。第３四半期：１２３４５６件。",
        "在２０２４年第３季度，销售额增长了１２．５％，达到１，２３４，５６７元（见第１２页）。",
        "في ١٥ مارس ٢٠٢٤، ارتفعت المبيعات بنسبة ١٢٫٥٪ إلى ١٬٢٣٤٬٥٦٧ ريال في الربع ٣.",
        "२०२४ में बिक्री १२.५% बढ़ी; कुल ₹१,२३,४५६ और संस्करण ३.११.२।",
    ],
    ids=["japanese", "chinese", "arabic", "hindi"],
)
def test_ordinary_prose_with_numbers_holds_nothing(text: str) -> None:
    assert found(text) == []


def test_the_ascii_view_replaces_characters_one_for_one() -> None:
    assert ascii_view("電話０９０－１２３４　٤٥ ۶۷ ९८ ｊｏｈｎ＠ｅｘ．ｃｏｍ") == (
        "電話090-1234 45 67 98 john@ex.com"
    )
    text = "本季度，Ａ１（２）\U0001d7ce\U0001e950😀"  # math bold 0, Adlam 0, an emoji
    assert ascii_view(text) == "本季度,A1(2)00😀"
    for unchanged in ("4111 1111 1111 1111", "本季度的销售额", "josé", ""):
        assert ascii_view(unchanged) is unchanged


@pytest.mark.parametrize(
    "text",
    [
        "555\u2013123\u20134567",  # en dashes
        "555\u2014123\u20144567",  # em dashes
    ],
)
def test_en_and_em_dashes_are_not_read_as_hyphens(text: str) -> None:
    """What README says is not found, is not: digits joined by en or em dashes."""
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("電話は０９０ー１２３４ー５６７８です", "０９０ー１２３４ー５６７８"),
        ("センター０９０ー１２３４ー５６７８", "０９０ー１２３４ー５６７８"),
        ("センター090ー1234ー5678", "090ー1234ー5678"),
        ("ｾﾝﾀｰ０３ｰ１２３４ｰ５６７８", "０３ｰ１２３４ｰ５６７８"),  # halfwidth katakana
    ],
)
def test_the_prolonged_sound_mark_between_digits_is_read_as_a_hyphen(text: str, value: str) -> None:
    """Some Japanese input methods put the katakana mark "ー" (the end of "データ") between a
    phone number's digit groups: read as "-" there, and only there (read as "-" everywhere,
    it would glue the number of "センター090-1234-5678" to the word before it)."""
    assert found(text) == [(value, "phone")]
    assert ascii_view("データー２ー") == "データー2ー"  # not between two digits: a letter


def test_every_space_separator_is_read_as_a_space() -> None:
    spaces = [
        chr(code) for code in range(0x80, 0x110000) if unicodedata.category(chr(code)) == "Zs"
    ]
    assert len(spaces) > 10
    assert ascii_view("".join(spaces)) == " " * len(spaces)
    assert found("+44" + spaces[0] + "20\u200a7946\u20090958") == [
        ("+44" + spaces[0] + "20\u200a7946\u20090958", "phone")
    ]
