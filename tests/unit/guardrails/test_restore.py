"""The reply side: output rules, then the caller's values put back, in whole replies, tool
calls and streams (however the stream is cut, placeholders split across chunks included)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from quotad.daemon.config import parse_config
from quotad.daemon.guardrails import Blocked, Checked, Guard, Restorer
from quotad.daemon.guardrails.restore import MAX_HOLD
from quotad.protocol.messages import Chat, ChatChunk, ChatMessage, ChatReply
from tests.support import guardrails as samples

EMAIL = "ana.lopez@example.com"
PHONE = "+44 20 7946 0958"
NEW_KEY = samples.GITHUB_TOKEN  # a secret the model writes, never in the request


def check(
    text: str, *, output: dict[str, str] | None = None, restore: bool = True
) -> Checked[Chat]:
    config = parse_config(
        {
            "guardrails": {
                "input": {"email": "mask", "phone": "mask", "secret": "mask"},
                "output": output if output is not None else {"secret": "mask"},
                "restore": restore,
            }
        }
    )
    request = Chat(model="m", messages=[ChatMessage(role="user", content=text)])
    return Guard(config).for_app("a").check_chat(request)


REQUEST = f"I am {EMAIL}, phone {PHONE}, my key {samples.OPENAI_KEY}"


def restorer() -> Restorer:
    checked = check(REQUEST)
    assert (
        checked.request.messages[0].content == "I am [EMAIL_1], phone [PHONE_1], my key [SECRET_1]"
    )
    return checked.restorer


def test_a_whole_reply_gets_the_callers_values_back() -> None:
    reply = ChatReply(content="Hello [EMAIL_1]! I will call [PHONE_1].", finish_reason="stop")
    restored = restorer().reply(reply)
    assert restored.content == f"Hello {EMAIL}! I will call {PHONE}."
    assert restored.finish_reason == "stop"
    assert reply.content == "Hello [EMAIL_1]! I will call [PHONE_1]."


def test_output_rules_mask_a_new_secret_but_not_the_callers_restored_one() -> None:
    reply = ChatReply(content=f"Your key [SECRET_1] is revoked; use {NEW_KEY} instead.")
    restoring = restorer()
    restored = restoring.reply(reply)
    # the model's new key is masked (numbered after the request's own), the caller's is back
    assert restored.content == f"Your key {samples.OPENAI_KEY} is revoked; use [SECRET_2] instead."
    assert restoring.counts == {"secret": 1}
    assert "[SECRET_2]" not in restoring.originals


def test_the_screened_reply_holds_placeholders_only() -> None:
    # what the cache may keep: output rules applied, nothing restored
    restoring = restorer()
    screened = restoring.screen(f"[EMAIL_1] and {NEW_KEY}")
    assert screened == "[EMAIL_1] and [SECRET_2]"
    assert restoring.restore(screened) == f"{EMAIL} and [SECRET_2]"


def test_an_output_block_refuses_the_reply() -> None:
    checked = check(REQUEST, output={"secret": "block", "email": "log"})
    with pytest.raises(Blocked) as blocked:
        checked.restorer.reply(ChatReply(content=f"here: {NEW_KEY} for {EMAIL}"))
    assert (blocked.value.direction, blocked.value.kinds) == ("output", ["secret"])
    assert NEW_KEY not in str(blocked.value.details) + blocked.value.message
    assert blocked.value.message.startswith("the reply was blocked")


@pytest.mark.parametrize(
    "variant",
    ["[email_1]", "[EMAIL 1]", "[EMAIL-1]", "EMAIL_1", "[EMAIL_01]", "[EMAIL_2]", "[ EMAIL_1 ]"],
)
def test_only_exact_placeholders_of_the_request_are_restored(variant: str) -> None:
    assert restorer().reply(ChatReply(content=f"to {variant}.")).content == f"to {variant}."


def test_restore_off_leaves_placeholders_and_still_screens() -> None:
    checked = check(REQUEST, restore=False)
    reply = checked.restorer.reply(ChatReply(content=f"[EMAIL_1] {NEW_KEY}"))
    assert reply.content == "[EMAIL_1] [SECRET_2]"


def test_tool_call_arguments_get_json_escaped_values() -> None:
    pem = samples.PEM_KEY.replace("\n", "\\n", 2)  # line breaks and JSON-escaped ones
    checked = check(f"keys: {pem} and {EMAIL}")
    assert checked.restorer.originals == {"[SECRET_1]": pem, "[EMAIL_1]": EMAIL}
    arguments = json.dumps({"key": "[SECRET_1]", "to": ["[EMAIL_1]"], "new": NEW_KEY})
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    reply = checked.restorer.reply(ChatReply(tool_calls=[call], finish_reason="tool_calls"))
    assert reply.tool_calls is not None
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {
        "key": pem,
        "to": [EMAIL],
        "new": "[SECRET_2]",
    }
    assert reply.tool_calls[0]["id"] == "c"


def test_a_reply_with_nothing_to_do_is_the_same_object() -> None:
    reply = ChatReply(content="nothing to see")
    assert restorer().reply(reply) is reply


# --------------------------------------------------------------------------- streams


def streamed(restoring: Restorer, pieces: list[str]) -> tuple[list[str], str]:
    stream = restoring.stream()
    shown = [stream.feed(piece) for piece in pieces]
    tail, calls = stream.flush()
    assert calls is None
    return shown, "".join(shown) + tail


def test_a_placeholder_split_across_chunks_is_restored() -> None:
    shown, whole = streamed(restorer(), ["Hello [EM", "AIL", "_1", "]! Bye [PHONE_", "1]"])
    assert whole == f"Hello {EMAIL}! Bye {PHONE}"
    assert shown[0] == "Hello "  # "[EM" is held until it can be decided


def test_brackets_that_cannot_become_placeholders_are_not_held() -> None:
    stream = check(REQUEST, output={}).restorer.stream()  # restoring only
    assert stream.feed("see [note] and [E") == "see [note] and "
    assert stream.feed("x]") == "[Ex]"
    assert stream.feed("[EMAIL_1") == ""
    assert stream.feed("0") == ""  # [EMAIL_10 may still come
    assert stream.feed("]") == "[EMAIL_10]"  # not this request's


def test_the_stream_restorer_passes_text_through_when_nothing_applies() -> None:
    checked = check("nothing personal", output={})
    stream = checked.restorer.stream()
    assert stream.feed("[EMA") == "[EMA"
    assert stream.flush() == ("", None)


def test_a_new_secret_streamed_in_pieces_is_masked_whole() -> None:
    text = f"Use {NEW_KEY} now. Also call [PHONE_1] at {PHONE}."
    for size in (1, 2, 3, 7, 16):
        pieces = [text[index : index + size] for index in range(0, len(text), size)]
        shown, whole = streamed(restorer(), pieces)
        assert whole == f"Use [SECRET_2] now. Also call {PHONE} at {PHONE}."
        assert not any(NEW_KEY[:6] in piece for piece in shown)


def test_a_private_key_streamed_line_by_line_is_masked_whole() -> None:
    text = f"Here it is:\n{samples.PEM_KEY}\nKeep it safe."
    pieces = [line + "\n" for line in text.split("\n")]
    pieces[-1] = pieces[-1].rstrip("\n")
    shown, whole = streamed(restorer(), pieces)
    assert whole == "Here it is:\n[SECRET_2]\nKeep it safe."
    assert shown[0] == "Here it is:\n"


def test_text_without_spaces_is_not_held_back() -> None:
    cjk = samples.CJK * 3
    shown, whole = streamed(restorer(), [cjk[index : index + 4] for index in range(0, len(cjk), 4)])
    assert whole == cjk
    assert sum(len(piece) for piece in shown) > len(cjk) - 8


def test_a_stream_holds_at_most_max_hold() -> None:
    stream = restorer().stream()
    token = "x" * 4096
    emitted = sum(len(stream.feed(token)) for _ in range(MAX_HOLD // 4096 + 2))
    assert emitted > 0
    assert emitted + len(stream.flush()[0]) == 4096 * (MAX_HOLD // 4096 + 2)


def test_an_output_block_in_a_stream_raises() -> None:
    checked = check(REQUEST, output={"secret": "block"})
    stream = checked.restorer.stream()
    assert stream.feed("fine so far ") == "fine so far "
    with pytest.raises(Blocked):
        stream.feed(f"{NEW_KEY} ")


def test_streamed_tool_call_arguments_are_restored_json_escaped() -> None:
    checked = check(f"my address is {EMAIL} and my key {samples.PEM_KEY}", output={})
    arguments = json.dumps({"to": "[EMAIL_1]", "key": "[SECRET_1]"})
    stream = checked.restorer.stream()
    fragments: list[dict[str, Any]] = [
        {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]
    fragments += [
        {"index": 0, "function": {"arguments": arguments[index : index + 3]}}
        for index in range(0, len(arguments), 3)
    ]
    shown = [stream.feed_tool_calls([fragment]) for fragment in fragments]
    _text, tail = stream.flush()
    pieces = [call[0]["function"]["arguments"] for call in shown if call] + [
        call["function"]["arguments"] for call in tail or []
    ]
    assert json.loads("".join(pieces)) == {"to": EMAIL, "key": samples.PEM_KEY}
    assert shown[0] is not None
    assert shown[0][0]["id"] == "c"


def test_streamed_tool_calls_with_output_rules_come_whole_and_screened_at_the_end() -> None:
    restoring = restorer()
    stream = restoring.stream()
    arguments = json.dumps({"to": "[EMAIL_1]", "token": NEW_KEY})
    first = stream.feed_tool_calls(
        [{"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments[:10]}}]
    )
    assert first == [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]
    assert stream.feed_tool_calls([{"index": 0, "function": {"arguments": arguments[10:]}}])
    _text, tail = stream.flush()
    assert tail is not None
    assert json.loads(tail[0]["function"]["arguments"]) == {"to": EMAIL, "token": "[SECRET_2]"}


def test_chunks_keep_what_they_say_about_the_stream() -> None:
    stream = restorer().stream()
    first = ChatChunk(id=4, delta="[EMA", request_id="r1", target="p/m", attempts=1)
    shown = stream.chunk(first)
    assert (shown.delta, shown.request_id, shown.target, shown.attempts) == ("", "r1", "p/m", 1)
    assert stream.chunk(ChatChunk(id=4, delta="IL_1] ok")).delta == f"{EMAIL} "  # "ok" may grow
    assert stream.flush() == ("ok", None)


# --------------------------------------------------------------------------- any cut

PIECES = st.sampled_from(
    [
        "Hello ",
        "[EMAIL_1]",
        "[PHONE_1]",
        "[SECRET_1]",
        "[EMAIL_9]",
        "[note]",
        "[",
        "]",
        NEW_KEY,
        EMAIL,
        PHONE,
        "4111 1111 1111 1111",
        "10.0.0.7",
        "本季度的",
        samples.JWT,
        " ",
        "\n",
        ". ",
        "2024-05-17",
        "x",
        "(555) 123-4567",
        "123 45 6789",
        "GB82 WEST 1234 5698 7654 32",
        "DE89 3704 0044 0532 0130 00",
        "+1 ",
        "4111",
        f"aws_secret_access_key = {samples.AWS_SECRET_KEY}",
        f"{samples.AWS_ACCESS_KEY_ID} {samples.AWS_SECRET_KEY}",
        samples.PEM_KEY,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n",
        "2001:db8::1",
        "电话",
        "４１１１　１１１１　",  # noqa: RUF001 (fullwidth digits and an ideographic space)
        "０９０－１２３４－５６７８",  # noqa: RUF001
        "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ",  # noqa: RUF001
        "٠٢٠ ٧٩٤٦ ٠٩٥٨",  # Arabic-Indic digits
        "\u3000",
    ]
)


@settings(max_examples=300, deadline=None)
# cases hypothesis found, kept: a phone's "+44 " glued to what precedes it; a PEM block cut
# inside its end line; a key, a JWT and a PEM block glued together; digit groups that run
# from the context (text already sent) into a card number
@example(parts=["[EMAIL_1]", "+44 20 7946 0958"], cuts=[13], screening=True)
@example(parts=[samples.PEM_KEY], cuts=[len(samples.PEM_KEY) - 10], screening=True)
@example(
    parts=[NEW_KEY, samples.JWT, "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n"],
    cuts=[],
    screening=True,
)
@example(parts=["GB82 WEST 1234 5698 7654 32", "4111", "+44 20 7946 0958"], cuts=[], screening=True)
# an international number is its first 15 digits when more groups follow: they ended glued to
# "Hello", and that made the whole run no number, where the stream had masked its start
@example(
    parts=["+44 20 7946 0958", "2024-05-17", "4111 1111 1111 1111", "Hello "],
    cuts=[31],
    screening=True,
)
@given(
    parts=st.lists(PIECES, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
    screening=st.booleans(),
)
def test_a_stream_cut_anywhere_equals_the_whole_reply(
    parts: list[str], cuts: list[int], screening: bool
) -> None:
    text = "".join(parts)
    output = dict.fromkeys(
        ("secret", "email", "phone", "credit_card", "iban", "us_ssn", "ip"), "mask"
    )
    rules = output if screening else {}
    whole = check(REQUEST, output=rules).restorer.text(text)
    points = sorted({cut % (len(text) + 1) for cut in cuts} | {0, len(text)})
    pieces = [text[start:end] for start, end in itertools.pairwise(points)]
    _shown, streamed_text = streamed(check(REQUEST, output=rules).restorer, pieces)
    assert streamed_text == whole


def test_a_json_reply_gets_json_escaped_values() -> None:
    # response_format json: the content is JSON, a key with line breaks must stay valid in it
    config = parse_config({"guardrails": {"input": {"secret": "mask", "email": "mask"}}})
    request = Chat(
        model="m",
        messages=[ChatMessage(role="user", content=f"store {samples.PEM_KEY} for {EMAIL}")],
        response_format={"type": "json_object"},
    )
    checked = Guard(config).for_app("a").check_chat(request)
    content = json.dumps({"key": "[SECRET_1]", "owner": "[EMAIL_1]"})
    assert json.loads(checked.restorer.text(content)) == {"key": samples.PEM_KEY, "owner": EMAIL}
    _shown, whole = streamed(checked.restorer, [content[:9], content[9:20], content[20:]])
    assert json.loads(whole) == {"key": samples.PEM_KEY, "owner": EMAIL}
