"""Sample values and texts for the guardrails' tests and benchmark: keys and tokens in their
published formats (made up here, never real), and realistic mixed text (prose with a few
entities, code, JSON, CJK) of any size."""

from __future__ import annotations

import base64
import json
import random
from typing import Final

from quotad.daemon.config import EntityKind


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _random_token(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


_ALNUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_RNG = random.Random(17)

OPENAI_KEY: Final = "sk-" + _random_token(_RNG, 45, _ALNUM) + "T3"
OPENAI_PROJECT_KEY: Final = "sk-proj-" + _random_token(_RNG, 120, _ALNUM + "_-") + "A1b"
ANTHROPIC_KEY: Final = "sk-ant-api03-" + _random_token(_RNG, 93, _ALNUM + "_-") + "Aa1AA"
AWS_ACCESS_KEY_ID: Final = "AKIAIOSFODNN7EXAMPLE"
AWS_TEMPORARY_KEY_ID: Final = "ASIA" + _random_token(_RNG, 16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
AWS_SECRET_KEY: Final = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB_TOKEN: Final = "ghp_" + _random_token(_RNG, 36, _ALNUM)
GITHUB_FINE_GRAINED: Final = (
    "github_pat_" + _random_token(_RNG, 22, _ALNUM) + "_" + _random_token(_RNG, 59, _ALNUM)
)
SLACK_TOKEN: Final = "xoxb-" + "2" * 12 + "-" + "3" * 13 + "-" + _random_token(_RNG, 24, _ALNUM)
GOOGLE_KEY: Final = "AIza" + _random_token(_RNG, 35, _ALNUM + "_-")
GROQ_KEY: Final = "gsk_" + _random_token(_RNG, 52, _ALNUM)
JWT: Final = ".".join(
    [
        _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64url(json.dumps({"sub": "1234567890", "name": "Jane", "iat": 1516239022}).encode()),
        _b64url(bytes(range(32))),
    ]
)
PEM_KEY: Final = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(_random_token(_RNG, 64, _ALNUM + "+/") for _ in range(6))
    + "\nAbCd==\n-----END RSA PRIVATE KEY-----"
)

SECRETS: Final[dict[str, str]] = {
    "openai": OPENAI_KEY,
    "openai_project": OPENAI_PROJECT_KEY,
    "anthropic": ANTHROPIC_KEY,
    "aws_access_key": AWS_ACCESS_KEY_ID,
    "aws_temporary_key": AWS_TEMPORARY_KEY_ID,
    "github": GITHUB_TOKEN,
    "github_fine_grained": GITHUB_FINE_GRAINED,
    "slack": SLACK_TOKEN,
    "google": GOOGLE_KEY,
    "groq": GROQ_KEY,
    "jwt": JWT,
    "private_key": PEM_KEY,
}

EXAMPLES: Final[dict[EntityKind, list[str]]] = {
    "email": ["ana.lopez@example.com", "bob+news@mail.example.org"],
    "phone": ["+44 20 7946 0958", "(555) 123-4567", "+49 30 123456"],
    "credit_card": ["4111 1111 1111 1111", "5555555555554444"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "ip": ["203.0.113.7", "2001:db8::8a2e:370:7334"],
    "us_ssn": ["123-45-6789"],
    "secret": [OPENAI_KEY, AWS_ACCESS_KEY_ID, GITHUB_TOKEN],
}
"""A few values of each kind, for texts that hold them."""

PROSE: Final = (
    "The quarterly review is scheduled for next Tuesday at 3pm in the main conference room. "
    "Please bring the updated figures for revenue (up 12.5% year over year), the hiring plan "
    "for 2025 and version 3.11.2 of the deployment checklist. Order #48213 shipped on "
    "2024-05-17; ask {email} or call {phone} if it has not arrived. "
)
CODE: Final = (
    "def retry(call, attempts=3, base_s=0.1):\n"
    '    """Call until it succeeds, backing off exponentially."""\n'
    "    for attempt in range(attempts):\n"
    "        try:\n"
    "            return call()\n"
    "        except ConnectionError:\n"
    "            time.sleep(base_s * 2 ** attempt)  # 0.1, 0.2, 0.4\n"
    "    raise RuntimeError(f'gave up after {attempts} attempts')\n"
)
JSON_TEXT: Final = (
    '{"id": 90210, "items": [{"sku": "A-1001", "qty": 2, "price": 19.99}, '
    '{"sku": "B-2002", "qty": 1, "price": 5.25}], "created": "2024-06-01T12:30:45Z", '
    '"customer": {"name": "Ana", "ip": "{ip}", "tags": ["vip", "eu"]}}\n'
)
CJK: Final = (
    "本季度的销售额比去年同期增长了百分之十二\uff0c主要来自亚太地区的新客户。"
    "会議は来週の火曜日に予定されています。資料を事前にご確認ください。"
    "다음 주 화요일 회의 자료를 미리 확인해 주세요. "
)


PLAIN_PROSE: Final = (
    "Thanks for the quick turnaround on the draft. I think the second section reads much "
    "better now, although the summary could still be shorter; most readers will stop after "
    "the first paragraph, so the recommendation should come first and the background after. "
)


def mixed_text(size: int, seed: int = 0, entity_share: float = 0.25) -> str:
    """About ``size`` characters of prose, code, JSON and CJK; ``entity_share`` of the
    prose paragraphs hold an address and a phone number (the JSON holds an IP address)."""
    rng = random.Random(seed)
    pieces: list[str] = []
    length = 0
    while length < size:
        kind = rng.choice(["prose", "code", "json", "cjk"])
        if kind == "prose" and rng.random() < entity_share:
            email, phone = rng.choice(EXAMPLES["email"]), rng.choice(EXAMPLES["phone"])
            piece = PROSE.format(email=email, phone=phone)
        elif kind == "prose":
            piece = PLAIN_PROSE
        elif kind == "code":
            piece = CODE
        elif kind == "json":
            piece = JSON_TEXT.replace("{ip}", rng.choice(EXAMPLES["ip"]))
        else:
            piece = CJK
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)[:size]


def typical_chat() -> list[dict[str, str]]:
    """A typical chat of about 2 KB of text: a system prompt and four turns (prose, code,
    JSON), an e-mail address and a phone number in them."""
    email, phone = EXAMPLES["email"][0], EXAMPLES["phone"][0]
    return [
        {"role": "system", "content": PLAIN_PROSE * 2},
        {"role": "user", "content": PROSE.format(email=email, phone=phone)},
        {"role": "assistant", "content": PLAIN_PROSE + CODE[:300]},
        {"role": "user", "content": JSON_TEXT.replace("{ip}", "203.0.113.7")[:400]},
        {"role": "user", "content": f"Please write to {email} or call {phone} about it today."},
    ]
