"""Finding entities in a text, locally and offline: :func:`find_entities`.

One call returns the non-overlapping :data:`Entity` spans of the kinds asked for, in text
order. It makes *one* pass over the text with ``_HINTS``, an expression whose every branch
starts with a rare character (a digit that starts a run of digits, ``+``, ``@``, or a
character of a secret's marker, see :mod:`.secret_formats`), so that the regular
expression engine skips everything else at the speed of a character-set test. Each hint
then runs the exact expressions of its kind where it points, and only there: a run of 9 or
more digits (with separators) is read for cards, phones and SSNs, two letters and two
digits for an IBAN, ``d.d.d.d`` for IPv4, ``x::``/eight groups for IPv6, an ``@`` with a
domain after it for an e-mail address. Every expression is anchored on a token boundary and
bounded or possessive, and the Python work is per hint, so no input takes more than linear
time (the tests feed megabytes of digits, ``@``, colons, letters, base64 and markers).

Token boundaries are ASCII (and accented Latin) ones: CJK and other scripts written without
spaces end a token, so ``电话+44 20 7946 0958`` holds a phone number.

Values are read as their ASCII spelling (:func:`ascii_view`): the decimal digits of every
script (Arabic-Indic, Persian, Devanagari, fullwidth…), the fullwidth forms of ASCII that
Japanese and Chinese input methods type by default (a phone number as
``\uff10\uff19\uff10\uff0d…``, an address's ``\uff20``), the ideographic, no-break and other
spaces, and hyphens and minus signs that are not ASCII's are each read as the one ASCII
character they stand for, so that the same rules find them (and leave
the same dates and years alone); and characters drawn as nothing (zero-width spaces and
joiners, soft hyphens, the left-to-right and right-to-left marks and isolates that
right-to-left text puts around numbers: :data:`_INVISIBLE`) are read as not there. The
spans are those of the text as written.

What each kind accepts (and what it leaves alone):

- ``email``: ``local@domain.tld`` (ASCII and accented Latin letters); not ``@mentions``,
  ``pkg@1.2.3`` versions, ``user@localhost``, nor ``icon@2x.png`` asset names.
- ``phone``: international ``+CC …`` with 8-15 digits (E.164), North American
  ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` / ``1-800-555-1234``, and national
  numbers with a trunk 0 and one separator kind (``020 7946 0958``, ``06 12 34 56 78``), 9-12
  digits. Never a bare digit run (order ids, card numbers, timestamps), a date
  (``2024-01-05``, ``05-01-2024``), a version or an IP.
- ``credit_card``: 13-19 digits, bare or grouped by one kind of separator (space or dash,
  first group of 4), first digit 2-6 (the card networks' ranges: epoch milliseconds and
  other ids starting 1, 7, 8, 9 are left alone), and a valid Luhn checksum.
- ``iban``: country code, 2 check digits, the country's length (spaces every 4 allowed),
  mod-97 = 1.
- ``ip``: IPv4 (four numbers up to 255, no leading zeros) and IPv6 (as :mod:`ipaddress`
  reads it), not inside longer dotted or colon runs (``1.2.3.4.5``, ``3.11.2``,
  ``12:30:45``, MAC addresses); loopback and unspecified addresses (``127.0.0.1``,
  ``0.0.0.0``, ``::1``, ``::``) are not personal.
  An IPv6 address is found by a digit in its first groups (``fe80::1``, ``2001:db8::``);
  one whose digits all come late (``dead:beef::f00d``) is not, nor ``Ab::Cd`` paths in
  code; of a mapped ``::ffff:192.0.2.1``, the IPv4 part.
- ``us_ssn``: ``AAA-GG-SSSS`` (or spaces), without the numbers never issued: area 000, 666
  or 9xx, group 00, serial 0000.
- ``secret``: see :mod:`quotad.daemon.guardrails.secret_formats`.

Overlaps are settled by kind: secret, iban (mod-97 and a length is stronger evidence than
Luhn), credit_card, us_ssn, email, ip, phone (a card number is never also a phone number),
then by length.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from typing import Final

from quotad.daemon.config import EntityKind
from quotad.daemon.guardrails.checksums import IBAN_LENGTHS, iban_valid, luhn_valid
from quotad.daemon.guardrails.secret_formats import HINTS as SECRET_HINTS
from quotad.daemon.guardrails.secret_formats import PemProgress, secrets_at

Entity = tuple[int, int, EntityKind]
"""(start, end, kind) of one entity found in a text."""

PRIORITY: Final[dict[EntityKind, int]] = {
    "secret": 7,
    "iban": 6,
    "credit_card": 5,
    "us_ssn": 4,
    "email": 3,
    "ip": 2,
    "phone": 1,
}
"""Which kind wins where two spans overlap (higher wins)."""

# --------------------------------------------------------------------------- the one pass

_LATIN: Final = "\u00c0-\u024f"  # accented Latin letters; CJK and other scripts end a token
_NUMBER_HINTS: Final = (
    # (name, an expression read after a digit that starts a run of digits); the first that
    # matches names the hint, so they are ordered: an IPv6 address's first group may look
    # like an IBAN's start (fe80::), and an IBAN's digits like a run for the other kinds
    # (DE89 3704 …), which is why a run after two letters is also read as an IBAN
    ("ipv4", r"[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"),
    # IPv6 by its first digit (fe80::1, 2001:db8::): a colon is the commonest character of
    # JSON and code, too costly an anchor; an address whose groups of digits all come after
    # its last colon but one (dead:beef::cafe:f00d) is not looked for
    # (a "::" within its first groups, or eight groups: never a time such as 12:30:45)
    ("ipv6", r"[0-9A-Fa-f]{0,3}(?::(?:[0-9A-Fa-f]{1,4}:){0,5}:|(?::[0-9A-Fa-f]{1,4}){7})"),
    ("digits", r"(?:[ .()/-]{0,2}+[0-9]){8,}+"),  # 9 digits or more: the fewest a phone has
    ("iban", r"(?<=[A-Za-z]{2}[0-9])(?<![0-9A-Za-z_][A-Za-z]{2}[0-9])[0-9]"),
)
_OTHER_HINTS: Final = (
    # (name, anchor, an expression read after it): each says as much as it cheaply can, so
    # that hostile repetitions ("+1+1+1", "@@@", "a@a@a@") are not hints at all
    ("phone", "+", r"(?<![0-9A-Za-z_+]\+)[0-9](?=[0-9 .()-]{7})"),
    (
        "email",
        "@",
        rf"(?<=[0-9A-Za-z{_LATIN}_%+.-]@)"
        rf"(?=[0-9A-Za-z{_LATIN}-]{{1,63}}\.[0-9A-Za-z{_LATIN}-]{{2}})",
    ),
)


def _hints() -> tuple[re.Pattern[str], list[tuple[str, int]]]:
    """The one-pass expression, and for each of its (empty) groups the hint's name and how
    many characters before the hint its token starts.

    One branch per anchor character, each starting with that character as a literal: so
    the engine finds the anchors at the speed of a set test and skips a branch by its first
    character; within it, an empty group at the end of each expression says which matched.
    (Named groups, or branches starting with a class, cost the engine its skipping:
    measured 2 to 20 times slower.)"""
    branches: dict[str, list[tuple[str, str, int]]] = {}
    for name, expression in _NUMBER_HINTS:
        for digit in "0123456789":
            branches.setdefault(digit, []).append((name, expression, 0))
    for name, anchor, expression in _OTHER_HINTS:
        branches.setdefault(anchor, []).append((name, expression, 0))
    for name, anchor, expression, offset in SECRET_HINTS:
        branches.setdefault(anchor, []).append((name, f"(?:{expression})", offset))
    names: list[tuple[str, int]] = []
    sources = []
    for anchor, expressions in branches.items():
        inner = []
        for name, expression, offset in expressions:
            names.append((name, offset))
            inner.append(f"{expression}()")
        # a digit that does not start a run of digits stops at once
        start = f"(?<![0-9]{anchor})" if anchor.isdigit() else ""
        sources.append(f"{re.escape(anchor)}{start}(?:{'|'.join(inner)})")
    return re.compile("|".join(sources)), names


_HINTS, _HINT_NAMES = _hints()
_ANCHORS = re.compile(
    "["
    + re.escape(
        "".join(
            sorted(
                set("0123456789")
                | {anchor for _, anchor, _ in _OTHER_HINTS}
                | {anchor for _, anchor, _, _ in SECRET_HINTS}
            )
        )
    )
    + "]"
)


def may_hold_entity(text: str) -> bool:
    """Whether an entity can start in ``text``: it has a hint's anchor character (a digit,
    ``@``, ``-``…, as written in ASCII or another way, see :func:`ascii_view`); text without
    one is passed over at the speed of a set test."""
    if _ANCHORS.search(text) is not None:
        return True
    return not text.isascii() and _OTHER_ANCHORS.search(text) is not None


# --------------------------------------------------------------------------- other scripts

_LAST_DIGIT_SCANNED: Final = 0x1F000
"""Decimal digits are looked for below this (the emoji and symbols start there; the only
digits beyond are the segmented digits of legacy computing symbols, U+1FBF0-U+1FBF9)."""


_LAST_SPACE: Final = 0x3000
"""Unicode's space separators (category Zs) all lie at or below the ideographic space."""
_HYPHENS: Final = "\u2010\u2011\u2012\u2212\ufe63"
"""Hyphens and minus signs that stand for ``-`` between digits: hyphen, non-breaking hyphen,
figure dash (the width of a digit, for phone numbers), minus sign, small hyphen-minus. Not
the en and em dashes (ranges and asides), nor the katakana prolonged sound mark (a letter
that ends words such as "center" right before a number)."""


def _ascii_equivalents() -> dict[int, int]:
    """Each character that is another way of writing one ASCII character → that character:
    the decimal digits (Unicode category Nd) of every script but ASCII's, the fullwidth
    forms of ``!`` to ``~`` (U+FF01-U+FF5E), the space separators (no-break, thin, figure,
    ideographic… spaces: category Zs) and :data:`_HYPHENS`."""
    digits = filter(str.isdecimal, map(chr, range(0x80, _LAST_DIGIT_SCANNED)))
    equivalents = {ord(digit): ord("0") + unicodedata.decimal(digit) for digit in digits}
    equivalents.update((code, code - 0xFEE0) for code in range(0xFF01, 0xFF5F))
    for char in map(chr, range(0x80, _LAST_SPACE + 1)):
        if unicodedata.category(char) == "Zs":
            equivalents[ord(char)] = ord(" ")
    equivalents.update((ord(hyphen), ord("-")) for hyphen in _HYPHENS)
    return equivalents


_INVISIBLE: Final = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
"""Unicode's default-ignorable code points (``DerivedCoreProperties.txt``), as ranges:
characters drawn as nothing, which pasted and right-to-left text puts inside values
(``jo\u200bhn@example.com``; a phone number between left-to-right marks in Hebrew or Arabic
text): the zero-width space, joiners and word joiner, the soft hyphen, the byte-order mark,
direction marks, embeddings and isolates, variation selectors, Hangul fillers and tags.
:func:`ascii_view` leaves them out."""
_INVISIBLE_RUN: Final = re.compile(
    "[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in _INVISIBLE) + "]+"
)


def _character_class(codes: Collection[int]) -> str:
    """A regular expression's class of ``codes``: those of the Basic Multilingual Plane as
    ranges, and beyond it one range from the least to the greatest of each plane's codes (a
    class of many ranges past U+FFFF costs the engine a test per range and per character; a
    character of a covering range that is not in ``codes`` only costs a look)."""
    basic = sorted(code for code in codes if code <= 0xFFFF)
    ranges: list[list[int]] = []
    for code in basic:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    for plane in sorted({code >> 16 for code in codes if code > 0xFFFF}):
        astral = [code for code in codes if code >> 16 == plane]
        ranges.append([min(astral), max(astral)])
    return (
        "["
        + "".join(
            re.escape(chr(low)) + ("" if low == high else "-" + re.escape(chr(high)))
            for low, high in ranges
        )
        + "]"
    )


_PROLONGED_MARKS: Final = "\u30fc\uff70"
"""The katakana prolonged sound mark, full and half width: a letter (the end of
``センター``), which some Japanese input methods put between the digit groups of a phone
number (``０９０ー１２３４ー５６７８``)."""
_PROLONGED_BETWEEN_DIGITS: Final = re.compile(f"(?<=[0-9])[{_PROLONGED_MARKS}](?=[0-9])")
"""Such a mark between two digits, which is read as ``-`` there, and only there."""

_ASCII_OF: Final = _ascii_equivalents()
_VIEW_OF: Final[dict[int, int | None]] = {
    **_ASCII_OF,
    **dict.fromkeys(code for low, high in _INVISIBLE for code in range(low, high + 1)),
}
"""What :func:`ascii_view` reads each character that is not ASCII as: its ASCII equivalent,
or nothing (an invisible character)."""
_WRITTEN_OTHERWISE: Final = re.compile(  # the class first: the engine skips to it (not "[…]+")
    "(" + _character_class(_VIEW_OF) + _character_class(_VIEW_OF) + "*+)"
)
"""A run of characters that have an ASCII equivalent or are invisible (a group:
:meth:`re.Pattern.split` keeps it)."""
_OTHER_ANCHORS: Final = re.compile(
    _character_class(
        [code for code, ascii_code in _ASCII_OF.items() if _ANCHORS.match(chr(ascii_code))]
    )
)


def ascii_view(text: str, *, leave_out_invisible: bool = True) -> str:
    """``text`` with each character that is another way of writing one ASCII character
    replaced by it (a Devanagari or a fullwidth nine by ``9``, a fullwidth ``@`` by ``@``, a
    no-break or an ideographic space by a space, a non-breaking hyphen by ``-``), character
    for character; a katakana prolonged sound mark between two digits by ``-``
    (:data:`_PROLONGED_BETWEEN_DIGITS`); and without its invisible characters
    (:data:`_INVISIBLE`), so that the view is shorter only when ``text`` has some
    (:func:`in_text` then finds a view's index in ``text``), unless ``leave_out_invisible``
    is false. ``text`` itself when it has none of these (ASCII text costs one flag test)."""
    if text.isascii():
        return text
    pieces = _WRITTEN_OTHERWISE.split(text)  # text, run, text, run, …, text
    if len(pieces) > 1:
        table = _VIEW_OF if leave_out_invisible else _ASCII_OF
        # every run translated at once (no run holds a NUL): no Python work per run
        pieces[1::2] = "\0".join(pieces[1::2]).translate(table).split("\0")
        text = "".join(pieces)
    if _PROLONGED_MARKS[0] in text or _PROLONGED_MARKS[1] in text:
        text = _PROLONGED_BETWEEN_DIGITS.sub("-", text)
    return text


LeftOut = tuple[list[int], list[int]]
"""Where :func:`ascii_view` left runs of invisible characters out of a text: each run's
index in the view, and how many characters were left out up to its end."""


def left_out(text: str) -> LeftOut:
    """The invisible runs :func:`ascii_view` leaves out of ``text`` (a Python step per run)."""
    at: list[int] = []
    removed: list[int] = []
    total = 0
    for run in _INVISIBLE_RUN.finditer(text):
        at.append(run.start() - total)
        total += run.end() - run.start()
        removed.append(total)
    return at, removed


def in_text(index: int, runs: LeftOut) -> int:
    """The index in a text of the character at ``index`` in its view (the view's end: the
    text's end); ``runs`` are those :func:`left_out` of the text. The invisible characters
    just before that character come before the index."""
    at, removed = runs
    runs_before = bisect.bisect_right(at, index)
    return index + removed[runs_before - 1] if runs_before else index


# --------------------------------------------------------------------------- expressions

_DIGIT_RUN = re.compile(r"[0-9]+")


def _is_word(char: str) -> bool:
    """Whether ``char`` continues a token: an ASCII letter, digit or ``_``, or an accented
    Latin letter. CJK and other scripts written without spaces end tokens, so that an
    address right after Chinese text is still found."""
    return (char.isascii() and (char.isalnum() or char == "_")) or "\u00c0" <= char <= "\u024f"


_LOCAL_PART_REVERSED = re.compile(rf"[0-9A-Za-z{_LATIN}_.%+-]{{0,65}}")
"""An e-mail address's local part read backwards from its ``@`` (on the reversed text
before it): word characters and ``._%+-``, one more than the 64 a local part may have."""
_SEPARATORS_DROPPED: Final = str.maketrans("", "", " .()/-+")
_DOMAIN = re.compile(
    rf"(?:[0-9A-Za-z{_LATIN}][0-9A-Za-z{_LATIN}-]{{0,62}}\.)+[A-Za-z{_LATIN}]{{2,63}}"
    rf"(?![0-9A-Za-z{_LATIN}_-])"
)
_ASSET_DOMAIN = re.compile(r"[0-9]+x\.[A-Za-z]+")  # icon@2x.png

_PHONE_INTERNATIONAL = re.compile(r"(?a)(?<![\w+])\+[0-9](?:(?:[ .-]|[ ]?\()?[0-9]++\)?)*+")
_PHONE_INTERNATIONAL_END = re.compile(r"(?a)[\w]|[.-][0-9]")
"""What may not follow an international number's last digit (a word, more digits)."""
_PHONE_LOCAL = re.compile(
    r"(?a)(?<![\w+.(-])(?:"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-1234
    r"(?:1[ .-])?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}"
    # national, with a trunk 0 and one kind of separator: 020 7946 0958, 06 12 34 56 78
    r"|0[1-9][0-9]{0,3}(?P<sep>[ -])[0-9]{2,8}(?:(?P=sep)[0-9]{2,8}){0,3}"
    r"|\(0[1-9][0-9]{0,3}\)[ ]?[0-9]{2,8}(?:[ -][0-9]{2,8}){0,3}"
    r")(?![\w]|[.-][0-9])"
)
_PHONE_DIGITS: Final = {"international": (8, 15), "local": (9, 12)}

_CARD = re.compile(  # a comma and digits after 13 to 19 digits are a list's ("…,12/27,737")
    r"(?a)(?<![\w.,+-])[2-6]"
    r"(?:[0-9]{12,18}(?![\w]|[.-][0-9])"
    r"|[0-9]{3}(?P<sep>[ -])[0-9]{3,6}(?:(?P=sep)[0-9]{3,6}){1,3}(?![\w]|[.,-][0-9]))"
)
_SSN = re.compile(
    r"(?a)(?<![\w.-])(?!000|666|9)[0-9]{3}(?P<sep>[- ])(?!00)[0-9]{2}(?P=sep)(?!0000)[0-9]{4}"
    r"(?![\w]|[.-][0-9])"
)

_SSN_SHAPE = re.compile(r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}")

_IBAN = re.compile(r"(?a)(?<![\w])[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]{1,4}){3,8}+")

_IPV4 = re.compile(r"(?a)(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![\w]|\.\w)")
_IPV6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")
_IPV6_RUN = re.compile(r"[0-9A-Fa-f:.]*+")
_IPV6_LONGEST: Final = 45  # 6 groups and an IPv4 tail

# --------------------------------------------------------------------------- per hint

Reader = Callable[[str, re.Match[str]], list[tuple[int, int]]]


def _in_window(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[re.Match[str]]:
    """Matches of ``pattern`` that start in ``text[start:end]``, as the whole text has them:
    a search bounded at ``end`` sees the end of the text there, so a match that ends near
    it (where a look-ahead of 2 characters would see past it) is read again unbounded."""
    length = len(text)
    if end >= length:
        return list(pattern.finditer(text, max(0, start)))
    matches = []
    for candidate in pattern.finditer(text, max(0, start), end):
        if candidate.end() + 2 < end:
            matches.append(candidate)
        elif match := pattern.match(text, candidate.start()):
            matches.append(match)
    return matches


def _digit_count(text: str) -> int:
    """The digits of a run of digits and separators (`` .()/-+``)."""
    return len(text.translate(_SEPARATORS_DROPPED))


def _cards(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """Card numbers: 13-19 digits passing Luhn. Grouped digits may be followed by another
    group that is not part of the number (``4111 1111 1111 1111 2030``): the longest
    leading groups that make a card number are taken."""
    found = []
    for match in _in_window(_CARD, text, hint.start() - 1, hint.end() + 3):
        separator = match["sep"]
        if separator is None:
            if _card_number(match.group()):
                found.append(match.span())
            continue
        groups = match.group().split(separator)
        for count in range(len(groups), 2, -1):
            if _card_number("".join(groups[:count])):
                length = sum(len(group) for group in groups[:count]) + count - 1
                found.append((match.start(), match.start() + length))
                break
    return found


def _card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.count(digits[0]) < len(digits) and luhn_valid(digits)


def _phones(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """North American and national phone numbers in a run of digits."""
    low, high = _PHONE_DIGITS["local"]
    return [
        match.span()
        for match in _in_window(_PHONE_LOCAL, text, hint.start() - 3, hint.end() + 3)
        if low <= _digit_count(match.group()) <= high
    ]


def _international_phone(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """``+CC …``: the digit groups after the ``+`` up to 15 digits (E.164), so that a number
    followed by more digit groups (a card number, a date) is still found."""
    match = _PHONE_INTERNATIONAL.match(text, hint.start())
    if match is None:
        return []
    low, high = _PHONE_DIGITS["international"]
    number = match.group()
    ends_well = _PHONE_INTERNATIONAL_END.match(text, match.end()) is None
    if ends_well and low <= _digit_count(number) <= high:  # all of it (what is usual)
        return [(match.start(), match.start() + len(number.rstrip(")")))]
    digits, end, last = 0, None, len(number.rstrip(")"))
    for run in _DIGIT_RUN.finditer(number):
        digits += len(run.group())
        if digits > high or (run.end() == last and not ends_well):
            break  # past 15 digits, or the last group glued to a word: not the number's
        end = run.end() if digits >= low else None
    return [] if end is None else [(match.start(), match.start() + end)]


def _ssns(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """US social security numbers, without never-issued numbers (only looked for in a run
    of digits that has their shape: an SSN is digits and separators, so it is in the run)."""
    if _SSN_SHAPE.search(hint.group()) is None:
        return []
    return [match.span() for match in _in_window(_SSN, text, hint.start() - 1, hint.end() + 3)]


def _iban(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """An IBAN: the country's length and mod-97 = 1, with or without spaces. A candidate
    may run on into the next words (``DE89 3704 … 00 and …``): the country's length is taken
    from its start."""
    start = hint.start() - 2
    length = IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None:
        return []
    match = _IBAN.match(text, start)
    if match is None:
        return []
    compact = match.group().replace(" ", "")
    if len(compact) < length or not iban_valid(compact[:length].upper()):
        return []
    end, taken = start, 0  # where the country's length of characters ends, spaces counted
    while taken < length:
        taken += text[end] != " "
        end += 1
    return [] if end < len(text) and _is_word(text[end]) else [(start, end)]


def _email(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """An e-mail address around an ``@``: the local part read backwards (at most 64
    characters, starting with neither a dot nor inside a longer token), then the domain."""
    at = hint.start()
    local = _LOCAL_PART_REVERSED.match(text[max(0, at - 65) : at][::-1])
    assert local is not None  # it may match nothing
    if local.end() > 64:
        return []
    start = at - local.end()
    while start < at and text[start] == ".":
        start += 1
    domain = _DOMAIN.match(text, at + 1)
    if (
        start < at
        and domain
        and not (domain.group()[0].isdigit() and _ASSET_DOMAIN.fullmatch(domain.group()))
    ):
        return [(start, domain.end())]
    return []


def _ipv4(text: str, hint: re.Match[str]) -> list[tuple[int, int]]:
    """An IPv4 address: four numbers up to 255 without leading zeros (as :mod:`ipaddress`
    reads them), neither loopback (127.x) nor unspecified (0.0.0.0)."""
    match = _IPV4.match(text, hint.start())
    if match is None:
        return []
    octets = match.group().split(".")
    if any((len(octet) > 1 and octet[0] == "0") or int(octet) > 255 for octet in octets):
        return []
    if octets[0] == "127" or octets == ["0", "0", "0", "0"]:
        return []
    return [match.span()]


def _ipv6(text: str, hint: re.Match[str]) -> tuple[tuple[int, int] | None, int]:
    """An IPv6 address around ``::`` or ``:x:``: the run of hex digits, colons and dots
    around it (at most 45 characters), not inside a longer token; and where that run ends
    (the hints inside it need no second look)."""
    run = _IPV6_RUN.match(text, hint.start())
    assert run is not None  # a *-run always matches
    run_end = run.end()
    start = hint.start()
    while start > 0 and text[start - 1] in _IPV6_CHARS and hint.start() - start <= _IPV6_LONGEST:
        start -= 1
    end = run_end
    while end > start and text[end - 1] == ".":
        end -= 1
    if end - start > _IPV6_LONGEST or (
        start and (_is_word(text[start - 1]) or text[start - 1] in ":.")
    ):
        return None, run_end
    if end < len(text) and (_is_word(text[end]) or text[end] == ":"):
        return None, run_end
    candidate = text[start:end]
    if not any(char.isdigit() for char in candidate) and candidate.count(":") < 3:
        return None, run_end  # Ab::Cd is a path in code more often than an address
    if _personal_ip(candidate, ipaddress.IPv6Address):
        return (start, end), run_end
    return None, run_end


def _personal_ip(
    text: str, parse: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> bool:
    """Whether ``text`` is an address and neither loopback nor unspecified."""
    try:
        address = parse(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


_NUMBER_READERS: Final[tuple[tuple[EntityKind, int, Reader], ...]] = (
    # kind, the fewest digits it has, its reader
    ("credit_card", 13, _cards),
    ("phone", 9, _phones),
    ("us_ssn", 9, _ssns),
)

_READERS: Final[dict[str, tuple[EntityKind, Reader]]] = {
    "iban": ("iban", _iban),
    "ipv4": ("ip", _ipv4),
    "phone": ("phone", _international_phone),
    "email": ("email", _email),
}


_HINT_BEFORE_START: Final = 3
"""How far before its entity a hint may be (a phone's "(" before its digits)…"""
_REACHING_HINTS: Final = frozenset({"aws_access_key", "aws_label"})
"""…but for these, whose secret comes after the hint (a label, a key id); and a run of
digits holds its entities anywhere in it."""


def find_entities(
    text: str,
    kinds: Collection[EntityKind],
    start: int = 0,
    severity: Mapping[EntityKind, int] | None = None,
) -> list[Entity]:
    """The entities of ``kinds`` in ``text``: non-overlapping, in text order. With
    ``start``, only those that begin there or later (what comes before is context: a
    stream's text already sent). Of overlapping ones, the most ``severe`` wins (what a
    caller does with each kind), then the kind of higher :data:`PRIORITY`.

    A JSON escape (``\\n``, ``\\"``…) is read as the character it stands for: its letter
    made a value after it look like part of a word (``\\n4111 1111 1111 1111`` in a tool's
    JSON output was no card). So is a character that is another way of writing an ASCII
    one (:func:`ascii_view`). An invisible character is read both ways, as nothing
    (``4111\u200b1111…`` is a card) and where it stands (a zero-width space still ends the
    word before ``\u200b4111 1111…``). The spans found are those of ``text`` all the same."""
    if not kinds:
        return []
    if "\\" in text:
        text = _ESCAPES.sub(_escaped_view, text)
    view = ascii_view(text)
    shorter = len(view) != len(text)  # the view left invisible characters out
    found = _entities_in(view, kinds, len(ascii_view(text[:start])) if shorter else start)
    if shorter:
        if found:
            runs = left_out(text)
            found = [
                (in_text(begin, runs), in_text(end - 1, runs) + 1, kind)
                for begin, end, kind in found
            ]
        found += _entities_in(ascii_view(text, leave_out_invisible=False), kinds, start)
    if len(found) < 2:
        return found
    # In order and without duplicates, in Python: a worker thread screens a big request so
    # that the event loop serves others meanwhile, and sorted(set(found)) was one call that
    # held the GIL (and the loop) 1.2 s for 460,000 addresses. found is nearly in text order
    # (a sort of a few runs, when it is not in order already).
    if any(entity > after for entity, after in itertools.pairwise(found)):
        found.sort()
    unique = [entity for entity, after in itertools.pairwise(found) if entity != after]
    unique.append(found[-1])
    return _without_overlaps(unique, severity or {})


def _entities_in(text: str, kinds: Collection[EntityKind], start: int) -> list[Entity]:
    """The entities of ``kinds`` in a view of a text (:func:`find_entities`), with overlaps,
    in no order."""
    found: list[Entity] = []
    secrets = "secret" in kinds
    ipv6_until = -1
    phone_until = -1  # the end of the last international phone number found
    pem = PemProgress()
    context_end = start - _HINT_BEFORE_START
    for hint in _HINTS.finditer(text):
        assert hint.lastindex is not None
        name, offset = _HINT_NAMES[hint.lastindex - 1]
        in_context = hint.end() if name == "digits" else hint.start()
        if in_context < context_end and name not in _REACHING_HINTS:
            continue  # its entity starts in the context
        if name == "digits":
            digits = _digit_count(hint.group())
            for kind, fewest, reader in _NUMBER_READERS:
                if kind in kinds and digits >= fewest:
                    if kind == "phone" and hint.end() <= phone_until:
                        continue  # the rest of an international number: a shorter one loses
                    for begin, end in reader(text, hint):
                        found.append((begin, end, kind))
            if "iban" in kinds and text[hint.start() - 2 : hint.start()].isalpha():
                for begin, end in _iban(text, hint):
                    found.append((begin, end, "iban"))
        elif name == "ipv6":
            if "ip" in kinds and hint.start() >= ipv6_until:
                span, ipv6_until = _ipv6(text, hint)
                if span is not None:
                    found.append((*span, "ip"))
        elif name in _READERS:
            kind, reader = _READERS[name]
            if kind in kinds:
                for begin, end in reader(text, hint):
                    found.append((begin, end, kind))
                    if name == "phone":
                        phone_until = end
        elif secrets:
            for begin, end, _format in secrets_at(text, name, hint.start() - offset, pem):
                found.append((begin, end, "secret"))
    if start:
        found = [entity for entity in found if entity[0] >= start]
    return found


_ESCAPES: Final = re.compile(r'\\[nrt"\\/bf]')
_ESCAPED_VIEW: Final = {
    "\\n": " \n", "\\r": " \r", "\\t": " \t", '\\"': ' "', "\\/": " /",
    "\\\\": "  ", "\\b": "  ", "\\f": "  ",
}  # fmt: skip
"""Each two-character JSON escape as what it stands for, after a space: the same length, so
that a span found in the view is the span in the text (a PEM block's escaped line breaks
are line breaks)."""


def _escaped_view(match: re.Match[str]) -> str:
    return _ESCAPED_VIEW[match.group()]


def _without_overlaps(found: list[Entity], severity: Mapping[EntityKind, int]) -> list[Entity]:
    """``found`` (sorted, not empty) without overlaps, settled run by run of overlapping
    spans (so that many entities cost a sort, not a comparison of every pair)."""
    kept: list[Entity] = []
    cluster = [found[0]]
    cluster_end = found[0][1]
    for entity in found[1:]:
        if entity[0] < cluster_end:
            cluster.append(entity)
            cluster_end = max(cluster_end, entity[1])
        else:
            kept.extend(_settle(cluster, severity))
            cluster, cluster_end = [entity], entity[1]
    kept.extend(_settle(cluster, severity))
    return kept


def _settle(cluster: list[Entity], severity: Mapping[EntityKind, int]) -> list[Entity]:
    """The spans of one run of overlapping spans to keep: more severe, then higher
    priority, then longer, then earlier first (a ``log`` rule's IP never hides a ``mask``
    rule's phone number in the same digits). Each candidate is compared with the two chosen
    spans around it only (they do not overlap, so they are in order of start and of end): a
    run of thousands of overlapping spans (``a@b.ca@b.ca@b.c…``, each address's local part
    the last one's domain) took time quadratic in their number."""
    if len(cluster) == 1:
        return cluster
    chosen: list[Entity] = []  # in text order
    ranked = sorted(
        cluster, key=lambda e: (-severity.get(e[2], 0), -PRIORITY[e[2]], e[0] - e[1], e[0])
    )
    for candidate in ranked:
        at = bisect.bisect_left(chosen, candidate)
        if (at and chosen[at - 1][1] > candidate[0]) or (
            at < len(chosen) and chosen[at][0] < candidate[1]
        ):
            continue  # it overlaps the span before it or the one after it
        chosen.insert(at, candidate)
    return chosen
