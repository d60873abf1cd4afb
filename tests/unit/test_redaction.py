"""The provider key in every form a server may echo it (quotad.daemon.providers.redaction):
as it is, cut, masked as providers mask it, JSON-, percent- and HTML-escaped, base64 at any
alignment, hex; in text and in every string of a decoded body; and what is not the key left
alone."""

from __future__ import annotations

import base64
import random
import string
import time
import urllib.parse

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.providers.redaction import REDACTED, KeyRedactor

RANDOM = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=40))
KEY = f"sk-proj-{RANDOM}"


def shows_the_key(text: str) -> list[str]:
    """What in ``text`` is a recognisable piece of :data:`KEY` (checked independently of the
    redactor: any 8 characters of its secret part, or its last 4 beside a mask)."""
    found = [RANDOM[i : i + 8] for i in range(len(RANDOM) - 7) if RANDOM[i : i + 8] in text]
    if RANDOM[-4:] in text:
        found.append(RANDOM[-4:])
    return found


def escaped(text: str, every: int = 1) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(text))


FORMS = {
    "plain": f"Incorrect API key provided: {KEY}.",
    "openai masked": f"Incorrect API key provided: {KEY[:8]}****...{KEY[-4:]}. You can find",
    "issue masked": f"key {KEY[:12]}*****{KEY[-4:]} refused",
    "ellipsis masked": f"key {KEY[:10]}…{KEY[-4:]} refused",
    "bullets": f"key {KEY[:9]}••••••{KEY[-4:]}",
    "x masked": f"key {KEY[:9]}xxxxxxxx{KEY[-4:]}",
    "suffix only": f"the key ending ...{KEY[-4:]} is revoked",
    "prefix only masked": f"the key {KEY[:14]}*** is revoked",
    "truncated": f"the key {KEY[:24]} (cut)",
    "middle": f"the key …{KEY[10:30]}",
    "json escaped": f"bad {escaped(KEY)} key",
    "half escaped": f"bad {escaped(KEY, 2)} key",
    "upper escaped": "bad " + escaped(KEY).upper().replace("\\U", "\\u") + " key",
    "percent": f"bad {urllib.parse.quote(KEY, safe='')} key",
    "percent every byte": "bad " + "".join(f"%{b:02X}" for b in KEY.encode()),
    "html": "bad " + "".join(f"&#{ord(c)};" for c in KEY),
    "basic auth": "Authorization: Basic " + base64.b64encode(f"u:{KEY}".encode()).decode(),
    "base64 aligned": base64.b64encode(KEY.encode()).decode(),
    "base64 off by two": base64.b64encode(f"ab{KEY}cd".encode()).decode(),
    "base64 urlsafe": base64.urlsafe_b64encode(f"a{KEY}".encode()).decode(),
    "hex": KEY.encode().hex(),
    "HEX": KEY.encode().hex().upper(),
    "escaped inside percent": urllib.parse.quote(escaped(KEY), safe=""),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_redacted(form: str) -> None:
    echoed = FORMS[form]
    redacted = KeyRedactor(KEY).text(echoed)
    assert REDACTED in redacted
    assert not shows_the_key(redacted), redacted
    # and no decoding of what is left shows it either
    for decoded in (urllib.parse.unquote(redacted), redacted.encode().decode("unicode_escape")):
        assert not shows_the_key(decoded)


def test_what_is_not_the_key_is_left_alone() -> None:
    """(A mask after the key's own first characters is taken for its masked echo, even when
    they are the part every key of the provider shares: ``sk-proj-...`` is redacted.)"""
    redactor = KeyRedactor(KEY)
    for text in (
        "keys look like sk-... or sk-xyz-...",
        "Rate limit reached for gpt-4o: 10000 TPM. Try again in 6ms.",
        "sk-p is a prefix",
        "***** ... *****",
        "",
    ):
        assert redactor.text(text) == text


def test_every_string_of_a_decoded_body_is_redacted() -> None:
    body = {
        "error": {
            "message": f"bad key {KEY[:8]}****{KEY[-4:]}",
            "param": {"headers": [f"Bearer {KEY}", 3, None]},
            KEY: "as a key too",
        }
    }
    redacted = KeyRedactor(KEY).value(body)
    assert not shows_the_key(msgspec.json.encode(redacted).decode())
    assert redacted["error"]["param"]["headers"][1:] == [3, None]


def test_an_error_body_is_decoded_before_it_is_redacted() -> None:
    raw = b'{"error": {"message": "bad key ' + escaped(KEY).encode() + b'"}}'
    body = KeyRedactor(KEY).body(raw, 4096)
    assert body == {"error": {"message": f"bad key {REDACTED}"}}
    cut = KeyRedactor(KEY).body(b"x" * 4090 + KEY.encode(), 4096)  # the key across the cut
    assert isinstance(cut, str)
    assert not shows_the_key(cut)
    assert len(cut) <= 4096


def test_a_successful_answer_is_untouched_unless_it_holds_the_key() -> None:
    redactor = KeyRedactor(KEY)
    clean = b'{"choices": [{"message": {"content": "caf\\u00e9\\nhi"}}]}'
    assert redactor.answer(clean) is clean
    for echo in (KEY.encode(), escaped(KEY).encode()):
        answer = b'{"choices": [{"message": {"content": "the key is ' + echo + b'"}}]}'
        redacted = redactor.answer(answer)
        assert not shows_the_key(redacted.decode())
        assert msgspec.json.decode(redacted)["choices"][0]["message"]["content"] == (
            f"the key is {REDACTED}"
        )


def test_a_placeholder_key_is_no_secret() -> None:
    redactor = KeyRedactor("EMPTY")
    assert redactor.text("model EMPTY not found") == "model EMPTY not found"
    assert KeyRedactor(None).value({"a": "b"}) == {"a": "b"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.sampled_from(list(FORMS)))
def test_the_key_is_found_whatever_surrounds_it(before: str, after: str, form: str) -> None:
    redacted = KeyRedactor(KEY).text(f"{before} {FORMS[form]} {after}")
    assert not shows_the_key(redacted)


@pytest.mark.parametrize(
    "hostile", ["x" * 32768, "." * 32768, KEY[:4] * 8192, ("xx" + KEY[-4:]) * 5461]
)
def test_a_long_run_of_masks_or_key_pieces_is_redacted_in_linear_time(hostile: str) -> None:
    """Found by the provider fuzzer: a 64 KiB error body of ``x`` (a mask character) took
    the masked-echo patterns quadratic time, seconds of the event loop per answer (16 K
    characters: 2 s). Timed against a text of the same length without masks, in the same run:
    linear, the ratio stays small (before: hundreds)."""
    redactor = KeyRedactor(KEY)
    plain = ("lorem ipsum " * 3000)[: len(hostile)]
    timings = []
    for text in (plain, hostile, plain, hostile):
        started = time.perf_counter()
        redactor.text(text)
        timings.append(time.perf_counter() - started)
    plain_s = min(timings[0], timings[2])
    hostile_s = min(timings[1], timings[3])
    assert hostile_s < 50 * plain_s + 0.01, (hostile_s, plain_s)


SURROGATE_ESCAPES = {
    "lone high": ("\\ud800", "\ufffd"),
    "lone low": ("\\udfff", "\ufffd"),
    "high then text": ("\\ud83dx", "\ufffdx"),
    "a pair": ("\\ud83d\\ude00", "\U0001f600"),
    "a pair, upper case": ("\\uD83D\\uDE00", "\U0001f600"),
    "two highs": ("\\ud83d\\ud83d\\ude00", "\ufffd\U0001f600"),
}


@pytest.mark.parametrize("name", list(SURROGATE_ESCAPES))
def test_surrogate_escapes_beside_an_escaped_key_decode_to_utf8_text(name: str) -> None:
    """Found by the provider fuzz (seed 101): an error body that is not JSON, with a ``\\ud800``
    escape in it and the key JSON-escaped, was given back decoded, the escape made a lone
    surrogate: the error's message could not be encoded (UTF-8 has no surrogates), the
    connection's task died with its request unanswered (a client waited forever) and a
    traceback. A pair now decodes to its character; a lone surrogate to U+FFFD."""
    escape, character = SURROGATE_ESCAPES[name]
    redactor = KeyRedactor(KEY)
    echoed = f'{{"error": {{{escape}"message": "bad key {escaped(KEY)}"}}}}'
    for redacted in (
        redactor.text(echoed),
        redactor.body(echoed.encode(), 4096),
        redactor.answer(echoed.encode()).decode(),
    ):
        assert isinstance(redacted, str)
        redacted.encode()  # UTF-8: no surrogate left
        assert not shows_the_key(redacted)
        assert f"{{{character}" in redacted
