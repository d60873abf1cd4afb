"""The detectors, kind by kind: what each must find (true positives, with the exact span) and
what it must leave alone (false positives: dates, versions, ids, digests, code)."""

from __future__ import annotations

import pytest

from quotad.daemon.config import ENTITY_KINDS, EntityKind
from quotad.daemon.guardrails.checksums import iban_valid, luhn_valid
from quotad.daemon.guardrails.detectors import find_entities
from quotad.daemon.guardrails.secret_formats import find_secrets
from tests.support import guardrails as samples


def found(text: str, kinds: tuple[EntityKind, ...] = ENTITY_KINDS) -> list[tuple[str, str]]:
    """(value, kind) of each entity in ``text``."""
    return [(text[start:end], kind) for start, end, kind in find_entities(text, kinds)]


def kinds_found(text: str) -> set[str]:
    return {kind for _value, kind in found(text)}


# (text around the value, the value, its kind): the value must be found exactly
TRUE_POSITIVES: list[tuple[str, str, EntityKind]] = [
    ("mail {} today", "bob@example.com", "email"),
    ("<{}>", "first.last+tag@sub.example.co.uk", "email"),
    ("mailto:{}", "x_y@z.org", "email"),
    ("Unicode: {}.", "josé@exämple.de", "email"),
    ("end of sentence {}.", "ana@example.com", "email"),
    ("call {} now", "+44 20 7946 0958", "phone"),
    ("call {} now", "(555) 123-4567", "phone"),
    ("call {} now", "+49 30 123456", "phone"),
    ("call {} now", "555-123-4567", "phone"),
    ("call {} now", "555.123.4567", "phone"),
    ("call {} now", "+1 (555) 123-4567", "phone"),
    ("call {} now", "1-800-555-1234", "phone"),
    ("call {} now", "+33 1 23 45 67 89", "phone"),
    ("call {} now", "+81 3-1234-5678", "phone"),
    ("call {} now", "+4930123456", "phone"),
    ("call {} now", "020 7946 0958", "phone"),
    ("call {} now", "(020) 7946 0958", "phone"),
    ("call {} now", "06 12 34 56 78", "phone"),
    ("tel:{}", "+442079460958", "phone"),
    ("card {} exp", "4111 1111 1111 1111", "credit_card"),
    ("card {} exp", "4111-1111-1111-1111", "credit_card"),
    ("card {} exp", "4111111111111111", "credit_card"),
    ("card {} exp", "5555555555554444", "credit_card"),
    ("amex {} exp", "378282246310005", "credit_card"),
    ("amex {} exp", "3782 822463 10005", "credit_card"),
    ("discover {}.", "6011111111111117", "credit_card"),
    ("visa-13 {}", "4222222222222", "credit_card"),
    ("card {} 2030", "4111 1111 1111 1111", "credit_card"),  # a trailing group is not it
    ("charge {},12/27,737", "4111111111111111", "credit_card"),  # a list after it: a card
    ("iban {} ok", "DE89 3704 0044 0532 0130 00", "iban"),
    ("iban {} ok", "DE89370400440532013000", "iban"),
    ("iban {} ok", "GB82WEST12345698765432", "iban"),
    ("iban {} ok", "GB82 WEST 1234 5698 7654 32", "iban"),
    ("iban {} ok", "FR14 2004 1010 0505 0001 3M02 606", "iban"),
    ("iban {} ok", "NL91ABNA0417164300", "iban"),
    ("iban {} ok", "de89370400440532013000", "iban"),
    ("iban {} and more words", "NO9386011117947", "iban"),
    ("host {} up", "10.0.0.1", "ip"),
    ("host {}.", "192.168.1.20", "ip"),
    ("dns {}", "8.8.8.8", "ip"),
    ("ip={};", "203.0.113.7", "ip"),
    ("v6 {} up", "2001:db8::8a2e:370:7334", "ip"),
    ("v6 {} up", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip"),
    ("v6 {}%eth0 up", "fe80::1", "ip"),
    ("mapped ::ffff:{} up", "192.0.2.1", "ip"),  # the IPv4 part of a mapped address
    ("v6 {} up", "fd12:3456:789a::1", "ip"),
    ("v6 {} up", "fe80::abcd:ef01", "ip"),
    ("ssn {} on file", "123-45-6789", "us_ssn"),
    ("ssn {} on file", "219 09 9999", "us_ssn"),
    ("ssn {}.", "078-05-1120", "us_ssn"),
]


@pytest.mark.parametrize(("around", "value", "kind"), TRUE_POSITIVES)
def test_true_positives(around: str, value: str, kind: EntityKind) -> None:
    assert found(around.format(value)) == [(value, kind)]


# (text, kind that must NOT be found in it)
FALSE_POSITIVES: list[tuple[str, EntityKind]] = [
    ("ping @mention and @here", "email"),
    ("npm i lodash@4.17.21 react@18.2.0", "email"),
    ("assets/icon@2x.png and logo@3x.jpg", "email"),
    ("user@localhost", "email"),
    ("a @ b.com and a@b", "email"),
    ("name@.com", "email"),
    ("git@1.2.3", "email"),
    ("on 2024-01-05 at 12:30", "phone"),
    ("on 05-01-2024 12:30:45", "phone"),
    ("05/01/2024", "phone"),
    ("python 3.11.2 and 1.2.3.4.5", "phone"),
    ("order 123456789 and #12345678", "phone"),
    ("card 4111111111111111", "phone"),
    ("card 4111 1111 1111 1111", "phone"),
    ("ts 1700000000000", "phone"),
    ("10.0.0.1", "phone"),
    ("12:30:45", "phone"),
    ("+12 and +1234", "phone"),
    ("1,234,567 and $1,234.56", "phone"),
    ("ISBN 978-3-16-148410-0", "phone"),
    ("pages 12-15 of 2019-2020", "phone"),
    ("ssn 123-45-6789", "phone"),
    ("000-12-3456", "phone"),
    ("4111111111111112 fails Luhn", "credit_card"),
    ("4111 1111 1111 1112", "credit_card"),
    ("4111-1111-1111-1112", "credit_card"),
    ("epoch ms 1700000000000 and 1700000000018", "credit_card"),
    ("0000 0000 0000 0000", "credit_card"),
    ("12345678901234567890", "credit_card"),
    ("4111 11 1111 1111 1111", "credit_card"),
    ("v4111111111111111", "credit_card"),
    ("3.4111111111111111", "credit_card"),
    ("DE89 3704 0044 0532 0130 01", "iban"),
    ("XX89370400440532013000", "iban"),
    ("DE8937040044053201300", "iban"),
    ("DE893704004405320130001", "iban"),
    ("ABCD1234 and AB12CDEF", "iban"),
    ("1.2.3.4.5", "ip"),
    ("python 3.11.2", "ip"),
    ("256.1.1.1 and 1.2.3.999", "ip"),
    ("127.0.0.1 and 0.0.0.0", "ip"),
    ("::1 and ::", "ip"),
    ("at 12:30:45", "ip"),
    ("mac 00:1A:2B:3C:4D:5E", "ip"),
    ("std::vector and Foo::Bar and Add::Bee", "ip"),
    ("v1.2.3.4", "ip"),
    ("01.02.03.04", "ip"),
    ("2024-01-05T12:30:45Z", "ip"),
    ("000-12-3456", "us_ssn"),
    ("666-12-3456", "us_ssn"),
    ("912-34-5678", "us_ssn"),
    ("123-00-4567", "us_ssn"),
    ("123-45-0000", "us_ssn"),
    ("123-45-67890", "us_ssn"),
    ("1123-45-6789", "us_ssn"),
    ("123456789", "us_ssn"),
    ("123-45 6789", "us_ssn"),
]


@pytest.mark.parametrize(("text", "kind"), FALSE_POSITIVES)
def test_false_positives(text: str, kind: EntityKind) -> None:
    assert kind not in kinds_found(text)


@pytest.mark.parametrize(
    "text",
    [
        samples.PROSE.format(email="", phone=""),
        samples.CODE,
        samples.JSON_TEXT.replace("{ip}", "localhost"),
        samples.CJK,
        "Released v2.4.1 on 2024-03-02; see RFC 2616, ISO 8601 and PEP 440.",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b (40 hex) and sha256:" + "ab" * 32,
    ],
    ids=["prose", "code", "json", "cjk", "versions", "digests"],
)
def test_ordinary_text_holds_nothing(text: str) -> None:
    assert found(text) == []


def test_only_the_kinds_asked_for_are_looked_for() -> None:
    text = "bob@example.com +44 20 7946 0958 4111 1111 1111 1111"
    assert found(text, ("email",)) == [("bob@example.com", "email")]
    assert found(text, ("phone",)) == [("+44 20 7946 0958", "phone")]
    assert found(text, ()) == []


def test_overlaps_go_to_the_stronger_kind() -> None:
    # 16 digits that are a card number are never also a phone number; a key holding an
    # e-mail-looking piece is a secret
    assert found("+1 4111 1111 1111 1111") == [("4111 1111 1111 1111", "credit_card")]
    assert found(f"{samples.PEM_KEY}") == [(samples.PEM_KEY, "secret")]


def test_many_entities_in_one_text() -> None:
    values = [f"user{index}@example.com" for index in range(2000)]
    assert [value for value, _kind in found(" ".join(values))] == values


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("name", sorted(samples.SECRETS))
def test_each_secret_format_is_found_whole(name: str) -> None:
    value = samples.SECRETS[name]
    for around in ("{}", "key: {}\n", 'export TOKEN="{}"', "({}).", "{}, then"):
        assert found(around.format(value)) == [(value, "secret")], around


def test_secret_formats_say_which() -> None:
    text = " ".join(samples.SECRETS.values())
    names = [name for _start, _end, name in sorted(find_secrets(text))]
    assert names == [
        "openai",
        "openai",
        "anthropic",
        "aws_access_key",
        "aws_access_key",
        "github",
        "github",
        "slack",
        "google",
        "groq",
        "jwt",
        "private_key",
    ]


def test_aws_secret_key_next_to_its_id_or_after_a_label() -> None:
    key = samples.AWS_SECRET_KEY
    for text in (
        f"{samples.AWS_ACCESS_KEY_ID} {key}",
        f"Access key ID,Secret access key\n{samples.AWS_ACCESS_KEY_ID},{key}\n",
        f"aws_secret_access_key = {key}",
        f'AWS_SECRET_ACCESS_KEY="{key}"',
        f'{{"SecretAccessKey": "{key}"}}',
    ):
        assert (key, "secret") in found(text), text


def test_forty_characters_alone_are_not_an_aws_secret() -> None:
    key = samples.AWS_SECRET_KEY
    assert found(f"token {key} here") == []
    digest = "3f786850e387550fdab836ed7e6dc881de23001b"
    assert found(f"{samples.AWS_ACCESS_KEY_ID} {digest}") == [(samples.AWS_ACCESS_KEY_ID, "secret")]
    far = f"{samples.AWS_ACCESS_KEY_ID} " + "word " * 40 + key
    assert (key, "secret") not in found(far)


def test_private_key_blocks_end_at_their_end_line_or_with_their_base64() -> None:
    assert found(f"here:\n{samples.PEM_KEY}\nthanks") == [(samples.PEM_KEY, "secret")]
    escaped = samples.PEM_KEY.replace("\n", "\\n")  # as inside a JSON string
    assert found(f'{{"key": "{escaped}"}}') == [(escaped, "secret")]
    truncated = samples.PEM_KEY.rsplit("\n", 2)[0]
    assert found(f"{truncated}\n\nthe rest was cut") == [(truncated, "secret")]
    encrypted = (
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        "DEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\nMIIabc+/=\n-----END ENCRYPTED PRIVATE KEY-----"
    )
    assert found(encrypted) == [(encrypted, "secret")]
    pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0=\n-----END PGP PRIVATE KEY BLOCK-----"
    assert found(pgp) == [(pgp, "secret")]


SECRET_FALSE_POSITIVES = [
    "use the sk-learn-style-guide-for-everyone pattern",
    "sk-short and sk-",
    "ghp_short and gho_ and github_pat_",
    "AKIA12345 and AKIAIOSFODNN7EXAMPL and xAKIAIOSFODNN7EXAMPLE",
    "xoxb-abcdefghijklmnop and xoxz-1234567890",
    "AIzaShort",
    "eyJhbGciOiJIUzI1NiJ9.only-two-parts",
    "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.sig",  # {"typ":"JWT"}: no alg
    "eyJub3QganNvbg.eyJzdWIiOiIxIn0.sig",  # not JSON
    "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBIjAN\n-----END CERTIFICATE-----",
    "hf_lowercaseonlylettershereabcdefghij",
    "sk_live_short",
]


@pytest.mark.parametrize("text", SECRET_FALSE_POSITIVES)
def test_secret_false_positives(text: str) -> None:
    assert "secret" not in kinds_found(text)


def test_a_jwt_at_the_end_of_a_sentence_leaves_the_full_stop() -> None:
    assert found(f"token {samples.JWT}.") == [(samples.JWT, "secret")]


# --------------------------------------------------------------------------- checksums


def test_luhn_and_iban_checksums() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111")
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234569876543")  # one short for GB
    assert not iban_valid("ZZ82WEST12345698765432")
    assert not iban_valid("GB8XWEST12345698765432")
    assert not iban_valid("GB82WEST12345698765٤32")  # a non-ASCII digit


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("电话+44 20 7946 0958。", "+44 20 7946 0958", "phone"),
        ("邮件ana@example.com。", "ana@example.com", "email"),
        ("卡号4111 1111 1111 1111\uff0c", "4111 1111 1111 1111", "credit_card"),
        ("服务器10.0.0.1上", "10.0.0.1", "ip"),
        ("地址fe80::1之", "fe80::1", "ip"),
        ("密钥" + samples.GITHUB_TOKEN + "。", samples.GITHUB_TOKEN, "secret"),
    ],
)
def test_text_written_without_spaces_around_an_entity(text: str, value: str, kind: str) -> None:
    assert found(text) == [(value, kind)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +44 (20) 7946 0958) now", [("+44 (20) 7946 0958", "phone")]),
        ("call +1 555-123-4567 now", [("+1 555-123-4567", "phone")]),  # not a local one in it
        ("+1 123-45-6789", [("123-45-6789", "us_ssn")]),  # the stronger kind still wins
        (
            "+49 30 123456 7890 1234 5678 9",  # whole groups up to 15 digits, the rest left
            [("+49 30 123456 7890", "phone")],
        ),
    ],
)
def test_international_numbers_and_what_runs_on_from_them(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert found(text) == expected


def test_an_email_local_part_is_at_most_64_characters() -> None:
    assert found("x " + "a" * 64 + "@example.com") == [("a" * 64 + "@example.com", "email")]
    assert found("x " + "a" * 65 + "@example.com") == []
    assert found("..a.b@example.com") == [("a.b@example.com", "email")]
