"""Applying a policy to whole requests (``Guard.for_app(app).check_chat/check_embed``): every
place text lives, placeholders per request, block and log, per-app policies, and the caller's
objects left as they were."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from quotad.daemon.config import Config, parse_config
from quotad.daemon.guardrails import Blocked, Guard
from quotad.protocol.messages import Chat, ChatMessage, ChatReply, Embed
from tests.support import guardrails as samples

EMAIL = "ana.lopez@example.com"
OTHER_EMAIL = "bob@example.org"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"


def config(**guardrails: Any) -> Config:
    apps = guardrails.pop("apps", {})
    return parse_config({"guardrails": guardrails, "apps": apps})


MASK_ALL = config(
    input=dict.fromkeys(("email", "phone", "credit_card", "iban", "ip", "us_ssn"), "mask")
    | {"secret": "mask"}
)


def chat(*messages: ChatMessage) -> Chat:
    return Chat(model="fast", messages=list(messages))


def user(content: str | list[dict[str, Any]]) -> ChatMessage:
    return ChatMessage(role="user", content=content)


def encoded(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def masked_arguments(arguments: str) -> str:
    """The arguments of one tool call in an assistant message, as MASK_ALL leaves them."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    request = chat(ChatMessage(role="assistant", tool_calls=[call]))
    calls = Guard(MASK_ALL).for_app("a").check_chat(request).request.messages[0].tool_calls
    assert calls is not None
    masked: str = calls[0]["function"]["arguments"]
    return masked


def test_values_are_masked_the_same_value_the_same_placeholder() -> None:
    request = chat(
        ChatMessage(role="system", content=f"Support writes from {OTHER_EMAIL}."),
        user(f"I am {EMAIL}, call {PHONE}; again: {EMAIL}"),
    )
    before = encoded(request)
    checked = Guard(MASK_ALL).for_app("a").check_chat(request)
    system, message = checked.request.messages
    assert system.content == "Support writes from [EMAIL_1]."
    assert message.content == "I am [EMAIL_2], call [PHONE_1]; again: [EMAIL_2]"
    assert checked.counts == {"email": 3, "phone": 1}
    assert checked.restorer.originals == {
        "[EMAIL_1]": OTHER_EMAIL,
        "[EMAIL_2]": EMAIL,
        "[PHONE_1]": PHONE,
    }
    assert encoded(request) == before  # the caller's objects are untouched


def test_masking_is_deterministic_so_the_cache_key_is() -> None:
    def masked() -> bytes:
        request = chat(user(f"mail {EMAIL} card-less, key {samples.OPENAI_KEY}"))
        return encoded(Guard(MASK_ALL).for_app("a").check_chat(request).request)

    assert masked() == masked()


def test_different_values_give_the_same_masked_request() -> None:
    # what the cache keys on: "mail X" for any X is one entry, restored per caller
    guard = Guard(MASK_ALL).for_app("a")
    first = guard.check_chat(chat(user(f"mail {EMAIL}")))
    second = guard.check_chat(chat(user(f"mail {OTHER_EMAIL}")))
    assert encoded(first.request) == encoded(second.request)
    reply = ChatReply(content="Done: [EMAIL_1]")
    assert first.restorer.reply(reply).content == f"Done: {EMAIL}"
    assert second.restorer.reply(reply).content == f"Done: {OTHER_EMAIL}"


def test_every_content_part_with_text_is_masked_others_are_left() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUtJQQ=="}}
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": f"to {EMAIL}"},
        image,
        {"type": "input_text", "text": f"call {PHONE}"},
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": f"card {CARD}"},
            "title": f"from {OTHER_EMAIL}",
        },
        {"type": "search_result", "content": [{"type": "text", "text": "ssn 123-45-6789"}]},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"to": EMAIL, "n": 3}},
    ]
    checked = Guard(MASK_ALL).for_app("a").check_chat(chat(user(parts)))
    content = checked.request.messages[0].content
    assert isinstance(content, list)
    assert content[0] == {"type": "text", "text": "to [EMAIL_1]"}
    assert content[1] is image
    assert content[2]["text"] == "call [PHONE_1]"
    assert content[3]["source"]["data"] == "card [CREDIT_CARD_1]"
    assert content[3]["title"] == "from [EMAIL_2]"
    assert content[4]["content"] == [{"type": "text", "text": "ssn [US_SSN_1]"}]
    assert content[5]["input"] == {"to": "[EMAIL_1]", "n": 3}
    assert parts[0]["text"] == f"to {EMAIL}"  # not changed in place


def test_tool_call_arguments_are_masked_inside_their_json() -> None:
    arguments = json.dumps(
        {
            "to": [EMAIL, {"cc": OTHER_EMAIL}],
            EMAIL: "a key that is an address",
            "card": 4111111111111111,
            "pem": samples.PEM_KEY,
            "note": 'quotes " and \\ stay',
            "unicode": "caf\u00e9",
        }
    )
    call: dict[str, Any] = {
        "id": "c1",
        "type": "function",
        "function": {"name": "send", "arguments": arguments},
    }
    request = chat(
        user("send it"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="c1", name="send", content=f"sent to {EMAIL}"),
    )
    checked = Guard(MASK_ALL).for_app("a").check_chat(request)
    _, assistant, tool = checked.request.messages
    assert assistant.tool_calls is not None
    masked = json.loads(assistant.tool_calls[0]["function"]["arguments"])
    assert masked == {
        "to": ["[EMAIL_1]", {"cc": "[EMAIL_2]"}],
        "[EMAIL_1]": "a key that is an address",
        "card": "[CREDIT_CARD_1]",
        "pem": "[SECRET_1]",
        "note": 'quotes " and \\ stay',
        "unicode": "caf\u00e9",
    }
    assert assistant.tool_calls[0]["id"] == "c1"
    assert (tool.content, tool.tool_call_id, tool.name) == ("sent to [EMAIL_1]", "c1", "send")
    assert call["function"]["arguments"] == arguments


def test_an_aws_secret_labelled_by_its_json_member_name() -> None:
    arguments = json.dumps({"AccessKeyId": "x", "SecretAccessKey": samples.AWS_SECRET_KEY})
    masked = masked_arguments(arguments)
    assert json.loads(masked)["SecretAccessKey"] == "[SECRET_1]"


def test_arguments_that_are_not_json_are_masked_as_text() -> None:
    masked = masked_arguments(f"{{{EMAIL}")
    assert masked == "{[EMAIL_1]"


def test_hostile_json_nesting_costs_only_its_shape() -> None:
    deep = "[" * 5000 + json.dumps(EMAIL) + "]" * 5000
    medium = "[" * 100 + json.dumps(EMAIL) + "]" * 100
    for arguments in (deep, medium):
        masked = masked_arguments(arguments)
        assert EMAIL not in masked
        assert "[EMAIL_1]" in masked


def test_names_and_ids_are_not_text() -> None:
    message = ChatMessage(role="user", name=EMAIL.replace("@", "_at_"), content="hi")
    request = chat(message)
    assert Guard(MASK_ALL).for_app("a").check_chat(request).request is request


def test_embedding_inputs_are_masked() -> None:
    guard = Guard(MASK_ALL).for_app("a")
    single = guard.check_embed(Embed(model="e", input=f"about {EMAIL}"))
    assert single.request.input == "about [EMAIL_1]"
    several = Embed(model="e", input=["plain", f"{PHONE} and {EMAIL}"])
    checked = guard.check_embed(several)
    assert checked.request.input == ["plain", "[PHONE_1] and [EMAIL_1]"]
    assert several.input == ["plain", f"{PHONE} and {EMAIL}"]
    assert checked.counts == {"phone": 1, "email": 1}


def test_block_names_the_kinds_never_the_values() -> None:
    guard = Guard(
        config(input={"email": "mask", "credit_card": "block", "secret": "block", "ip": "log"})
    ).for_app("a")
    request = chat(user(f"{EMAIL} pays with {CARD}, key {samples.GITHUB_TOKEN}, from 10.1.2.3"))
    with pytest.raises(Blocked) as blocked:
        guard.check_chat(request)
    error = blocked.value
    assert (error.code, error.direction) == ("blocked", "input")
    assert error.kinds == ["credit_card", "secret"]
    assert error.details == {
        "kinds": ["credit_card", "secret"],
        "direction": "input",
        "found": {"email": 1, "credit_card": 1, "secret": 1, "ip": 1},
    }
    shown = error.message + json.dumps(error.details)
    for value in (EMAIL, CARD, samples.GITHUB_TOKEN, "4111", "10.1.2.3"):
        assert value not in shown
    assert "credit_card, secret" in error.message


def test_log_counts_and_changes_nothing() -> None:
    guard = Guard(config(input={"email": "log", "phone": "log"})).for_app("a")
    request = chat(user(f"{EMAIL} {PHONE}"))
    checked = guard.check_chat(request)
    assert checked.request is request
    assert checked.counts == {"email": 1, "phone": 1}
    assert not checked.restorer.active


def test_no_rules_is_the_request_itself() -> None:
    request = chat(user(f"{EMAIL} {CARD}"))
    checked = Guard(parse_config({})).for_app("a").check_chat(request)
    assert checked.request is request
    assert checked.counts == {}
    assert checked.restorer.reply(reply := ChatReply(content="[EMAIL_1]")) is reply


def test_nothing_found_is_the_request_itself() -> None:
    request = chat(user("Nothing personal here, version 3.11.2 on 2024-05-17."))
    assert Guard(MASK_ALL).for_app("a").check_chat(request).request is request


def test_a_callers_placeholder_shaped_text_is_never_restored_into() -> None:
    # a document the caller pastes says "[EMAIL_1]"; the caller's own address must not be
    # given that placeholder, or the reply's "[EMAIL_1]" would be "restored" to it
    request = chat(user(f"The form says: reply to [EMAIL_1]. My address: {EMAIL}"))
    checked = Guard(MASK_ALL).for_app("a").check_chat(request)
    assert checked.request.messages[0].content == (
        "The form says: reply to [EMAIL_1]. My address: [EMAIL_2]"
    )
    reply = ChatReply(content="I will write [EMAIL_1] and cc [EMAIL_2]")
    assert checked.restorer.reply(reply).content == f"I will write [EMAIL_1] and cc {EMAIL}"


def test_per_app_guardrails_merge_over_the_global_ones() -> None:
    guard = Guard(
        config(
            input={"email": "mask", "phone": "mask", "credit_card": "block"},
            output={"secret": "mask"},
            apps={
                "notebook": {"guardrails": {"input": {"email": "log"}, "restore": False}},
                "trusted": {"guardrails": {"input": {"credit_card": "off", "phone": "off"}}},
            },
        )
    )
    text = f"{EMAIL} {PHONE}"
    notebook = guard.for_app("notebook").check_chat(chat(user(text)))
    assert notebook.request.messages[0].content == f"{EMAIL} [PHONE_1]"
    assert not notebook.restorer.originals  # restore = false for this app
    assert notebook.restorer.screens  # output rules still apply
    trusted = guard.for_app("trusted")
    assert trusted.check_chat(chat(user(CARD))).counts == {}
    with pytest.raises(Blocked):
        guard.for_app("unknown-app").check_chat(chat(user(CARD)))
    with pytest.raises(Blocked):
        guard.for_app("notebook").check_chat(chat(user(CARD)))


def test_entities_between_any_characters() -> None:
    guard = Guard(MASK_ALL).for_app("a")
    for around in ("({})", "«{}»", "电子邮件{}。", "😀 {} 😀", "\t{}\n", '"{}"'):
        request = chat(user(around.format(PHONE)))
        assert guard.check_chat(request).request.messages[0].content == around.format(
            "[PHONE_1]"
        ), around


def test_huge_json_numbers_are_left_as_they_are() -> None:
    # Python will not turn an int of more than 4300 digits into text; 19 digits at most are
    # looked at (a card number), the rest is left alone
    arguments = '{"n": ' + "4" * 5000 + ', "card": 4111111111111111, "to": "' + EMAIL + '"}'
    masked = masked_arguments(arguments)
    assert masked == arguments.replace("4111111111111111", '"[CREDIT_CARD_1]"').replace(
        EMAIL, "[EMAIL_1]"
    )  # masked as text, but still JSON: the number is quoted


def test_json_too_deep_for_a_decoder_is_masked_as_text_and_stays_json() -> None:
    escaped = "caf\\u00e9" + EMAIL  # an escape right before the address
    arguments = "[" * 3000 + f'"{escaped}", 4111111111111111' + "]" * 3000
    masked = masked_arguments(arguments)
    assert masked == ("[" * 3000 + '"caf\\u00e9[EMAIL_1]", "[CREDIT_CARD_1]"' + "]" * 3000)


def sent_text(request: Chat, policy: Config = MASK_ALL) -> str:
    """Everything of ``request`` the policy lets reach a provider, as JSON text."""
    checked = Guard(policy).for_app("a").check_chat(request).request
    return msgspec.json.encode(checked).decode()


GITHUB = "ghp_" + "J9Jv" * 9  # 40 characters


def test_a_value_right_after_a_json_escape_is_found() -> None:
    """A tool's JSON output: ``\\n`` before a value is two characters, and its ``n`` made the
    value look like part of a word: the card, the token and the phone number went out raw."""
    output = json.dumps({"stdout": f"paid with\n{CARD}\ntoken\n{GITHUB}\nfrom\n{PHONE}\t{EMAIL}"})
    assert "\\n4111" in output
    tool = ChatMessage(role="tool", tool_call_id="c1", content=output)
    sent = sent_text(chat(user("run it"), tool))
    for value in (CARD, GITHUB, PHONE, EMAIL):
        assert value not in sent
    for placeholder in ("[CREDIT_CARD_1]", "[SECRET_1]", "[PHONE_1]"):
        assert placeholder in sent


def test_a_duplicate_key_in_tool_arguments_hides_nothing() -> None:
    """A decoder keeps a duplicate key's last value: the first one, an email, went out
    unread in the arguments' text."""
    masked = masked_arguments(json.dumps({"to": EMAIL})[:-1] + ', "to": "x"}')
    assert EMAIL not in masked
    assert "[EMAIL_1]" in masked


def test_thinking_mcp_inputs_and_a_nested_result_part_are_scanned() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": f"card {CARD}, mail {EMAIL}", "signature": "s"},
        {"type": "mcp_tool_use", "id": "m", "name": "n", "server_name": "s", "input": {"q": PHONE}},
        {"type": "web_fetch_tool_result", "tool_use_id": "w",
         "content": {"type": "web_fetch_result", "content": {"type": "document", "source": {
             "type": "text", "media_type": "text/plain", "data": f"key {GITHUB}"}}}},
    ]  # fmt: skip
    sent = sent_text(chat(user("hi"), ChatMessage(role="assistant", content=parts)))
    for value in (CARD, EMAIL, PHONE, GITHUB):
        assert value not in sent


def test_of_two_kinds_in_the_same_characters_the_stricter_action_wins() -> None:
    """ "+32 2.123.45.67" is an IP (log) and a phone number (mask): the IP, ranked first,
    let the number go out raw; "4111111111111111@example.com" with cards logged, an email."""
    policy = config(input={"phone": "mask", "ip": "log", "email": "mask", "credit_card": "log"})
    for value in ("+32 2.123.45.67", "4111111111111111@example.com"):
        assert value not in sent_text(chat(user(f"reach me at {value} today")), policy)
