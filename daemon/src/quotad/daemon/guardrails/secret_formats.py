"""The ``secret`` entity: provider and cloud keys and tokens in their published formats.

Every format has a fixed marker (``sk-``, ``AKIA``, ``ghp_``, ``xoxb-``, ``AIza``, ``eyJ``,
``-----BEGIN``…). :data:`HINTS` find a marker by one of its rare characters (``-``, ``_``,
``K``, ``z``, ``J``…) and look-behinds, so that they join the one pass
:mod:`~quotad.daemon.guardrails.detectors` makes over a text; :func:`secrets_at` then reads
the token from where its marker says it starts. Every expression is bounded or
possessive: no input takes more than linear time.

Formats (the name each match carries, for tests and error details; the entity kind is
always ``secret``):

- ``openai``: ``sk-``, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-`` + 20 or more of
  ``[A-Za-z0-9_-]``; ``anthropic``: ``sk-ant-…``. Both must mix upper case, lower case and
  digits, as random keys do and words joined by dashes (``sk-learn-style-guide``) do not.
- ``groq``: ``gsk_`` + 52; ``huggingface``: ``hf_`` + 34 letters of both cases; ``stripe``:
  ``sk_live_``/``sk_test_``/``rk_live_``/``rk_test_`` + 24 or more.
- ``aws_access_key``: ``AKIA``/``ASIA`` + 16 upper-case letters or digits;
  ``aws_secret_key``: 40 characters of base64 that mix cases and digits (a hex digest does
  not), either after a label (``aws_secret_access_key =``, ``"SecretAccessKey": "``) or
  within 120 characters after an access key id.
- ``github``: ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` + 36 or more, ``github_pat_`` + 22
  or more.
- ``slack``: ``xoxa-``/``xoxb-``/``xoxp-``/``xoxr-`` + 10 or more, with digits.
- ``google``: ``AIza`` + 35.
- ``jwt``: three (JWS) or five (JWE) base64url parts whose first decodes to a JSON object
  with ``alg``.
- ``private_key``: a PEM block from ``-----BEGIN … PRIVATE KEY-----`` (PGP ``… PRIVATE KEY
  BLOCK``) to its ``-----END …-----`` line, or, when the end is missing (a truncated paste),
  through the base64 lines that follow the header. Line breaks may be JSON-escaped (``\\n``).
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import msgspec

Span = tuple[int, int, str]
"""(start, end, format name) of one secret in a text."""

HINTS: Final[tuple[tuple[str, str, str, int], ...]] = (
    # (format, the rare character of its marker it is found by, an expression read after
    # that character (its look-behinds see it), how many characters before that character
    # the token starts)
    ("openai", "-", r"(?<=sk-)(?<![A-Za-z0-9_-]sk-)", 2),
    ("slack", "-", r"(?<=xox[abpr]-)(?<![A-Za-z0-9_-]xox[abpr]-)", 4),
    ("private_key", "-", r"----BEGIN ", 0),
    ("groq", "_", r"(?<=gsk_)(?<![A-Za-z0-9_-]gsk_)", 3),
    ("stripe", "_", r"(?<=[sr]k_)(?=live_|test_)", 2),
    ("huggingface", "_", r"(?<=hf_)(?<![A-Za-z0-9_-]hf_)", 2),
    ("github", "_", r"(?<=gh[pousr]_)(?<![A-Za-z0-9_-]gh[pousr]_)", 3),
    ("github_pat", "_", r"(?<=github_)(?=pat_)", 6),
    (
        "aws_label",
        "_",
        r"(?<=[Ss][Ee][Cc][Rr][Ee][Tt]_)(?=[Aa][Cc][Cc][Ee][Ss][Ss]_[Kk][Ee][Yy])",
        6,
    ),
    ("aws_access_key", "K", r"(?<=AK)(?<![A-Za-z0-9]AK)IA", 1),
    ("aws_label", "K", r"(?<=[Ss]ecretAccessK)(?=ey)", 12),
    ("aws_access_key", "S", r"(?<=AS)(?<![A-Za-z0-9]AS)IA", 1),
    ("google", "z", r"(?<=AIz)(?<![A-Za-z0-9_-]AIz)a", 2),
    ("jwt", "J", r"(?<=eyJ)(?<![A-Za-z0-9_-]eyJ)", 2),
)


_OPENAI = re.compile(r"(?a)(?<![\w-])sk-(?:ant-)?[A-Za-z0-9_-]{20,400}+(?![\w-])")
_GROQ = re.compile(r"(?a)(?<![\w-])gsk_[A-Za-z0-9]{52}(?![\w-])")
_HUGGINGFACE = re.compile(r"(?a)(?<![\w-])hf_[A-Za-z]{34}(?![\w-])")
_STRIPE = re.compile(r"(?a)(?<![\w-])[sr]k_(?:live|test)_[A-Za-z0-9]{24,247}+(?![\w-])")
_AWS_KEY_ID = re.compile(r"(?<![A-Za-z0-9])A(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_LABELLED = re.compile(
    r"(?:[Ss][Ee][Cc][Rr][Ee][Tt]_?[Aa][Cc][Cc][Ee][Ss][Ss]_?[Kk][Ee][Yy])[\"']?[ \t]*[:=][ \t]*"
    r"[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_LABEL = re.compile(r"(?i:(?:aws_?)?secret_?access_?key)")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}")
_AWS_SECRET_NEAR = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_SECRET_REACH: Final = 120
_BASE64_CHARS: Final = frozenset(string.ascii_letters + string.digits + "/+=")
_GITHUB = re.compile(
    r"(?a)(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,251}+|github_pat_[A-Za-z0-9_]{22,251}+)(?![\w-])"
)
_SLACK = re.compile(r"(?a)(?<![\w-])xox[abpr]-[A-Za-z0-9-]{10,250}+(?![\w-])")
_GOOGLE = re.compile(r"(?a)(?<![\w-])AIza[A-Za-z0-9_-]{35}(?![\w-])")
_JWT = re.compile(r"(?a)(?<![\w-])eyJ[A-Za-z0-9_-]{4,}+(?:\.[A-Za-z0-9_-]*+){2,4}+(?![\w-])")
_PEM_LABEL = r"(?:(?!PRIVATE )[A-Z0-9]++ )*+PRIVATE KEY(?: BLOCK)?-----"
_PEM_BREAK = r"(?:[ \t\r\n]|\\[rn])"
_PEM_LINE = r"(?:[A-Za-z-]++:[^\r\n\\]*+|[A-Za-z0-9+/=]++)"
_PEM_HEADER = re.compile(r"-----BEGIN " + _PEM_LABEL)
_PEM_LINES = re.compile(rf"(?:{_PEM_BREAK}*+{_PEM_LINE})*+{_PEM_BREAK}*+")
"""A block's lines after its header, as far as they go (it always matches)."""
_PEM_FOOTER = re.compile(r"-----END " + _PEM_LABEL)
_PEM_TRUNCATED = re.compile(rf"(?:[ \t]*+(?:\r?\n|\\r?\\n)[ \t]*+{_PEM_LINE})*+")
"""A truncated block's lines after its header: one a line, as far as they go."""


@dataclass(slots=True)
class PemProgress:
    """How far one pass over a text has read its private key blocks. A header inside a
    block found is not read again, nor are lines read already looked through for a footer a
    second time: a text of headers each inside the one before's lines (``a:-----BEGIN RSA
    PRIVATE KEY-----\\n`` repeated: a header line's value runs to the line's end) was read
    to its end from every header, in time quadratic in their number (128 KB: 3.5 s)."""

    lines_read_until: int = 0
    block_until: int = 0


def _private_key(text: str, start: int, progress: PemProgress) -> Iterator[Span]:
    """A PEM block from its header to its footer, or, without one, through the lines that
    follow the header (a truncated paste)."""
    if start < progress.block_until:
        return  # inside a block found: its span holds this one's
    header = _PEM_HEADER.match(text, start)
    if header is None:
        return
    if header.end() >= progress.lines_read_until:  # (lines read: they reach no footer)
        lines = _PEM_LINES.match(text, header.end())
        assert lines is not None  # it may match nothing
        progress.lines_read_until = lines.end()
        footer = _PEM_FOOTER.match(text, lines.end())
        if footer is not None:
            progress.block_until = footer.end()
            yield start, footer.end(), "private_key"
            return
    truncated = _PEM_TRUNCATED.match(text, header.end())
    assert truncated is not None  # it may match nothing
    progress.block_until = truncated.end()
    yield start, truncated.end(), "private_key"


_RANDOM_CLASSES: Final = (str.isupper, str.islower, str.isdigit)


def _looks_random(token: str) -> bool:
    """Whether a token mixes upper case, lower case and digits, as a random key does."""
    return all(any(test(char) for char in token) for test in _RANDOM_CLASSES)


def _openai(text: str, start: int) -> Iterator[Span]:
    match = _OPENAI.match(text, start)
    if match and _looks_random(match.group()[3:]):
        name = "anthropic" if match.group().startswith("sk-ant-") else "openai"
        yield match.start(), match.end(), name


def _huggingface(text: str, start: int) -> Iterator[Span]:
    match = _HUGGINGFACE.match(text, start)
    if match:
        token = match.group()[3:]
        if any(char.isupper() for char in token) and any(char.islower() for char in token):
            yield match.start(), match.end(), "huggingface"


def _aws_access_key(text: str, start: int) -> Iterator[Span]:
    match = _AWS_KEY_ID.match(text, start)
    if match is None:
        return
    yield match.start(), match.end(), "aws_access_key"
    near = _AWS_SECRET_NEAR.search(text, match.end(), match.end() + _AWS_SECRET_REACH)
    if near and near.end() < len(text) and text[near.end()] in _BASE64_CHARS:
        return  # cut short by the reach: part of a longer token
    if near and _looks_random(near.group()):
        yield near.start(), near.end(), "aws_secret_key"


def _aws_label(text: str, start: int) -> Iterator[Span]:
    match = _AWS_LABELLED.match(text, start)
    if match and _looks_random(match.group(1)):
        yield match.start(1), match.end(1), "aws_secret_key"


def is_labelled_aws_secret(name: str, value: str) -> bool:
    """Whether a JSON member (``"SecretAccessKey": "…"``) holds an AWS secret access key."""
    return (
        _AWS_SECRET_LABEL.fullmatch(name) is not None
        and _AWS_SECRET.fullmatch(value) is not None
        and _looks_random(value)
    )


def _slack(text: str, start: int) -> Iterator[Span]:
    match = _SLACK.match(text, start)
    if match and any(char.isdigit() for char in match.group()[5:]):
        yield match.start(), match.end(), "slack"


def _jwt_header_has_alg(part: str) -> bool:
    try:
        header = msgspec.json.decode(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _jwt(text: str, start: int) -> Iterator[Span]:
    match = _JWT.match(text, start)
    if match is None:
        return
    end = match.end()
    parts = match.group().split(".")
    if len(parts) == 4 and not parts[3]:  # a sentence's full stop after a JWS
        parts.pop()
        end -= 1
    if len(parts) in (3, 5) and parts[1] and _jwt_header_has_alg(parts[0]):
        yield match.start(), end, "jwt"


def _simple(pattern: re.Pattern[str], name: str) -> Callable[[str, int], Iterator[Span]]:
    def at(text: str, start: int) -> Iterator[Span]:
        match = pattern.match(text, start)
        if match:
            yield match.start(), match.end(), name

    return at


_READERS: Final[dict[str, Callable[[str, int], Iterator[Span]]]] = {
    "openai": _openai,
    "slack": _slack,
    "groq": _simple(_GROQ, "groq"),
    "stripe": _simple(_STRIPE, "stripe"),
    "huggingface": _huggingface,
    "github": _simple(_GITHUB, "github"),
    "github_pat": _simple(_GITHUB, "github"),
    "aws_access_key": _aws_access_key,
    "aws_label": _aws_label,
    "google": _simple(_GOOGLE, "google"),
    "jwt": _jwt,
}


def secrets_at(text: str, name: str, start: int, progress: PemProgress) -> Iterator[Span]:
    """The secrets of format ``name`` whose token starts at ``start`` (hint start less its
    offset); ``progress`` is the pass's over the text."""
    if start < 0:
        return
    if name == "private_key":
        yield from _private_key(text, start, progress)
    else:
        yield from _READERS[name](text, start)


def find_secrets(text: str) -> list[Span]:
    """Every secret in ``text``, as (start, end, format), in text order; spans may overlap.
    (For tests: the daemon finds secrets in the one pass of ``find_entities``.)"""
    found: list[Span] = []
    for name, anchor, expression, offset in HINTS:
        progress = PemProgress()
        for hint in re.finditer(f"{re.escape(anchor)}(?:{expression})", text):
            found.extend(secrets_at(text, name, hint.start() - offset, progress))
    return sorted(set(found))
