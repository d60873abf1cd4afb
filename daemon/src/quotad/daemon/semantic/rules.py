"""The semantic cache's match rules: when a question asked in other words may take a cached answer.

Embedding similarity cannot tell "meeting at 3pm" from "meeting at 4pm" (0.92 with the bundled
model), "turn on" from "turn off" (0.95), "reverse a string" from "reverse a list" (0.89), or
"convert celsius to fahrenheit" from "convert fahrenheit to celsius" (1.00: a static model
averages its tokens, so word order is invisible to it). So similarity only *proposes* a
candidate; these rules decide, and they refuse whenever the two texts could mean different
things. A text is read into :class:`Facets`:

1. NFKC-normalized; a letter of any script other than Latin makes the text ineligible
   (``script``): measured with this model, different questions in Cyrillic or CJK text score as
   high as paraphrases, and the rules below only know English function words.
2. Protected spans are lifted out verbatim, in order, as *literals*: fenced and backticked code,
   quoted strings (straight, curly, low-9, guillemet and CJK corner quote marks), URLs, file
   paths, and code identifiers (``snake_case``, ``camelCase``, ``dotted.names``, ``call()``).
   Literals compare exactly, case included.
3. Numbers in any digits become canonical values: ``3pm``, ``3 p.m.`` and ``15:00`` are all
   ``15:00``; ``1,000`` is ``1000``; ``three`` is ``3``, ``twenty-five`` is ``25``; versions,
   dates and ranges (``3.11``, ``2024-03-05``, ``3-5``) stay as written. ``%`` reads as
   ``percent``, ``$5`` as ``5 usd`` (so it equals ``5 dollars``).
4. Words are case-folded, contractions expanded (``isn't`` → ``is not``), plurals of words
   written in lower case reduced (never a name's: "Lucas" is not "Luca"), a few synonyms
   merged (``repair`` → ``fix``) and common request framings folded into one (``how do I`` /
   ``what's the best way to`` / ``how to`` → *how to*; ``explain`` / ``describe`` / ``what
   is`` → *explain*; ``please``, ``can you``, ``hello`` → nothing). A short list of words that
   never change what is asked (articles, present forms of be and do, ``this``/``that``…) is
   dropped; every other word is *significant*, function words such as ``for``, ``of``, ``why``,
   ``was`` or ``and`` included. Punctuation is dropped; any other mark (``#``, ``+``, ``@``,
   an emoji) is a symbol.

Two facets are :func:`compatible` when their framings agree and their significant tokens are the
same words, numbers, negations and literals, in the same order — except that one block of
plain words may have moved past another (``reverse a string in Python`` = ``in Python, reverse a
string``), never past a number, a negation, an opposite-pair word or a literal. What remains
free is what a paraphrase changes: framings, fillers, articles, case, punctuation, plurals and
contractions. Similarity is then measured on :attr:`Facets.embedding_text`, the normalized text
(framings folded, fillers kept), so that a case or contraction change costs nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Final, Literal

from quotad.daemon.semantic.vocabulary import (
    APOSTROPHE,
    CURRENCIES,
    EDGE_FILLERS,
    FRAMING_STARTS,
    FRAMINGS,
    IS_CONTRACTED,
    LONGEST_FRAMING,
    NEGATIONS,
    NOT_PLURAL,
    NUMBER_WORDS,
    POLARITY,
    QUOTES,
    SCALES,
    STOPWORDS,
    SUFFIX_CONTRACTIONS,
    SYNONYMS,
    TIMES_OF_DAY,
    WHOLE_CONTRACTIONS,
)

Kind = Literal["word", "number", "negation", "polarity", "literal", "symbol"]
Token = tuple[Kind, str]
RawToken = tuple[Kind | Literal["name"], str]
"""A token as scanned: ``name`` is a word written with a capital (never made singular)."""
_WORDISH: Final = ("word", "name")
Refusal = Literal[
    "too_long", "script", "empty", "framing", "numbers", "negation", "literals", "polarity",
    "words", "symbols", "order",
]  # fmt: skip
"""Why a text is not eligible (the first three) or why two texts may not share an answer."""

RULES_VERSION: Final = 2
"""Changes when what :func:`read` makes of a text changes (stored vectors of the old
:attr:`Facets.embedding_text` are then re-embedded)."""
MAX_TEXT_CHARS: Final = 1000
"""A last user turn longer than this, as written or as read (NFKC makes ``½`` three
characters, ``⑴`` three, ``…`` three), is not cached semantically: a long text's mean vector is
close to every other long text's, its facts are too many to check, and reading one costs up to
~4 ms (a crafted text of this length, ``-e5`` repeated: 14-19 ms before each run was read
once; ``⑴`` repeated 1,000 times, 12 ms before the length was checked as read; ~1-1.5 ms an
ordinary one)."""
MAX_MOVED_TOKENS: Final = 32
"""Longest stretch of tokens in which one block may have moved past another."""

# One scanner over the text: at each position, the first alternative that matches wins. The
# first, a plain word not followed by what makes it part of an identifier, path or URL, is the
# fast path that most tokens take. The URL and the dotted path alternatives read a whole run of
# their characters before they can fail, from every token that starts inside it (``-e5-e5…``:
# time quadratic in the run); a scanner without them reads each token first, and the token is
# read again with them only where they can match (:func:`_scanner_at`).
_URL: Final = r"""\b(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.)[^\s<>"'`]+"""
_DOTTED_PATH: Final = r"\b[\w.-]+(?:/[\w.-]+)+"
_SCANNER_SOURCE: Final = (
    r"""
    (?P<plain>[^\W\d_]+(?:[-'\u2019][^\W\d_]+)*(?![\w(/\\@:]|[.'\u2019]\w))
  | (?P<fence>```.*?(?:```|\Z))
  | (?P<tick>`[^`\n]+`)
  | (?P<url>URL)
  | (?P<time>(?<![\w.:])(?P<hour>1[0-2]|0?\d)(?::(?P<minute>[0-5]\d))?
             \s?(?P<ampm>[aApP])\.?\s?[mM]\b\.?)
  | (?P<clock>(?<![\w.:])(?P<h24>[01]?\d|2[0-3]):(?P<m24>[0-5]\d)(?![\d:]))
  | (?P<number>\d+(?:[.,:/-]\d+)*)
  | (?P<path>(?<![\w/.~])(?:~|\.{1,2})?(?:/[\w.~-]+)+/?|\b[A-Za-z]:\\[^\s"'`]+|
              DOTTED_PATH)
  | (?P<ident>\b(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|\w*_\w*|[a-z]+[A-Z]\w*|
                 [A-Z]+[a-z]+[A-Z]\w*)(?:\(\))?|\b[A-Za-z_]\w*\(\))
  | (?P<quote>[QUOTES])
  | (?P<squote>(?<!\w)'(?=\S))
  | (?P<money>[$€£¥₹]\s?(?=\d))
  | (?P<word>[^\W\d_]+(?:[-'\u2019][^\W\d_]+)*)
  | (?P<percent>%)
  | (?P<joiner>(?<=[^\W_])[-/](?=[^\W_]))
  | (?P<other>[^\w\s])
    """
).replace("QUOTES", "".join(QUOTES))


def _compiled_scanner(url: bool, dotted_path: bool) -> re.Pattern[str]:
    never = "(?!)"
    source = _SCANNER_SOURCE.replace("URL", _URL if url else never)
    return re.compile(
        source.replace("DOTTED_PATH", _DOTTED_PATH if dotted_path else never),
        re.VERBOSE | re.DOTALL,
    )


_SCANNERS: Final = {
    (url, dotted): _compiled_scanner(url, dotted)
    for url in (True, False)
    for dotted in (True, False)
}
_WITHOUT_LONG_READS: Final = _SCANNERS[False, False]
"""The scanner without the URL and the dotted path alternatives: what it finds at a position
is what the whole one finds there when it is one of :data:`_BEFORE_URL` (the first
alternatives, the same in both), or when neither of those two can match there."""
_BEFORE_URL: Final = frozenset({"plain", "fence", "tick"})
_PATH_RUN: Final = re.compile(r"[\w.-]+")
_URL_RUN: Final = re.compile(r"[a-zA-Z0-9+.-]+")
_URL_END: Final = re.compile(r"://[^\s<>\"'`]")
_PATH_CHARACTER: Final = re.compile(r"[\w.-]")
_CAMEL: Final = re.compile(r"[a-z][A-Z]")
_PUNCTUATION: Final = frozenset(".,;:!?()[]{}'\"\u2026\u2013\u2014\u00a1\u00bf\u00b7")
"""Marks that never change what is asked (full stop, comma…, ellipsis, dashes); any other mark
is a symbol that must match."""
_THOUSANDS: Final = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_RAISED_AND_LOWERED: Final = str.maketrans(
    {**{chr(c): f"^{d}" for d, c in enumerate((0x2070, 0xB9, 0xB2, 0xB3, *range(0x2074, 0x207A)))},
     **{chr(0x2080 + d): f"_{d}" for d in range(10)}}
)  # fmt: skip
"""Superscript and subscript digits as ``^3`` and ``_2``: NFKC makes them plain digits, and
``2³`` read as ``23``."""
_BINDING: Final = frozenset("()[]{}!.\u2013\u2014")
"""Punctuation that is part of arithmetic or of a number when it touches a digit: brackets
(``2*(3+4)``), a factorial (``100!``), a point or an en or em dash before a digit (``.5``, a
minus sign, a range). There it is a symbol that must match; elsewhere, punctuation."""
_LITERAL_GROUPS: Final = frozenset({"fence", "url", "path", "ident"})


@dataclass(frozen=True, slots=True)
class Facets:
    """What the rules compare of one text: its significant tokens in order, its framings,
    and the normalized text whose embedding is compared."""

    tokens: tuple[Token, ...]
    framings: frozenset[str]
    embedding_text: str
    exact_tokens: tuple[Token, ...] = ()
    """The tokens with no word made singular (as written, case folded)."""

    def values(self, *kinds: Kind) -> list[str]:
        """The values of the tokens of these kinds, in order."""
        return [value for kind, value in self.tokens if kind in kinds]


def read(text: str) -> Facets | Refusal:
    """The facets of a last user turn, or why it cannot have a semantic hit."""
    if len(text) > MAX_TEXT_CHARS:
        return "too_long"
    text = unicodedata.normalize("NFKC", text.translate(_RAISED_AND_LOWERED))
    if len(text) > MAX_TEXT_CHARS:
        return "too_long"
    if not _latin_only(text):
        return "script"
    return _fold(_join_number_words(_scan(text)))


def compatible(query: Facets, entry: Facets) -> Refusal | None:
    """None when ``entry``'s answer may answer ``query``; else the first rule that refuses.

    The tokens are compared as read (plurals made singular) and, failing that, as written
    (no word made singular): "Strings" at the start of one text and "strings" in the other
    match as written, "euros" and "EUR" as read.
    """
    if query.framings != entry.framings:
        return "framing"
    refusal = _refusal(query.tokens, entry.tokens)
    if refusal is not None and _refusal(query.exact_tokens, entry.exact_tokens) is None:
        return None
    return refusal


def _refusal(first: tuple[Token, ...], second: tuple[Token, ...]) -> Refusal | None:
    def values(tokens: tuple[Token, ...], kind: Kind) -> list[str]:
        return [value for token_kind, value in tokens if token_kind == kind]

    if values(first, "number") != values(second, "number"):
        return "numbers"
    if values(first, "negation") != values(second, "negation"):
        return "negation"
    if values(first, "literal") != values(second, "literal"):
        return "literals"
    if Counter(values(first, "polarity")) != Counter(values(second, "polarity")):
        return "polarity"
    if Counter(values(first, "word")) != Counter(values(second, "word")):
        return "words"
    if values(first, "symbol") != values(second, "symbol"):
        return "symbols"  # in order: 2*3+4 is not 2+3*4
    if not _one_block_moved(first, second):
        return "order"
    return None


def stated(text: str) -> tuple[frozenset[str], frozenset[str], int]:
    """The numbers and literals a text of any script and length states (as sets: an answer may
    repeat them, in any order) and how many negations it has: what two answers must share to
    agree."""
    tokens = _join_number_words(_scan(unicodedata.normalize("NFKC", text)))
    numbers = frozenset(value for kind, value in tokens if kind == "number")
    literals = frozenset(value for kind, value in tokens if kind == "literal")
    negations = sum(kind in _WORDISH and value in NEGATIONS for kind, value in tokens)
    return numbers, literals, negations


# --------------------------------------------------------------------------- reading


def _latin_only(text: str) -> bool:
    """No letter of a script other than Latin (digits and symbols of any script are fine)."""
    if text.isascii():
        return True
    for char in text:
        if (
            char.isalpha()
            and not char.isascii()
            and not unicodedata.name(char, "").startswith("LATIN")
        ):
            return False
    return True


def _scan(text: str) -> list[RawToken]:
    """The text as literal, number, symbol and (case-folded, contraction-expanded) word
    tokens, in order; punctuation is dropped."""
    tokens: list[RawToken] = []
    currency: str | None = None  # "$" seen: its word goes after the number ("5 usd")
    position = 0
    runs = [0, 0]
    while (match := _WITHOUT_LONG_READS.search(text, position)) is not None:
        if match.lastgroup not in _BEFORE_URL:  # the URL or the dotted path might come first
            scanner = _scanner_at(text, match.start(), runs)
            if scanner is not _WITHOUT_LONG_READS:
                match = scanner.match(text, match.start()) or match
        position = match.end()
        group = match.lastgroup
        value = match.group()
        if group == "plain" and _CAMEL.search(value):
            tokens.append(("literal", value))  # camelCase, JavaScript: an identifier
        elif group == "plain" and _is_label(value, text, match.start()):
            tokens.append(("literal", value))  # "server A", "option B": a name, not "a"
        elif group in ("plain", "word") and _is_cased_unit(value, tokens):
            tokens.append(("literal", value))  # "10 MB" is not "10 Mb": a unit's case counts
        elif group in ("plain", "word"):
            kind: Literal["word", "name"] = "word" if value.islower() else "name"
            tokens.extend((kind, word) for word in _expand(value))
            continue
        if group in _LITERAL_GROUPS:
            if group == "ident" and all(len(part) <= 1 for part in value.split(".")):
                tokens.extend(("word", part.lower()) for part in value.split(".") if part)
            else:
                tokens.append(("literal", value))
        elif group == "tick":
            tokens.append(("literal", value[1:-1]))
        elif group in ("quote", "squote"):
            closing = "'" if group == "squote" else QUOTES[value]
            end = _closing_quote(text, position, closing)
            if end >= 0:  # else a lone mark: read on past it
                tokens.append(("literal", text[position:end]))
                position = end + 1
        elif group in ("time", "clock"):
            tokens.append(("number", _time(match)))
        elif group == "number":
            tokens.append(("number", _number(value)))
            if currency is not None:
                tokens.append(("word", currency))
        elif group == "money":
            currency = CURRENCIES[value.strip()]
            continue
        elif group == "percent":
            tokens.append(("word", "percent"))
        elif group == "other" and (
            value not in _PUNCTUATION or (value in _BINDING and _binds(text, match.start()))
        ):
            tokens.append(("symbol", value))  # "#" in "C#", a minus sign, "/", "@", an emoji…
        currency = None
    return tokens


def _scanner_at(text: str, at: int, runs: list[int]) -> re.Pattern[str]:
    """The scanner to read the token at ``at`` with (not white space): without the URL or the
    dotted path alternative where it cannot match. ``runs`` holds where the last run of a
    URL's and of a path's characters read ends, from one call to the next of a scan (tokens
    start ever further on): a run is read once, not again from each token inside it."""
    char = text[at]
    url = False
    if char.isascii() and char.isalpha():
        if text.startswith("www.", at):
            url = True
        else:
            if at + 1 >= runs[0]:
                runs[0] = _run_end(_URL_RUN, text, at + 1)
            url = _URL_END.match(text, runs[0]) is not None
    dotted = False
    if _PATH_CHARACTER.match(char):
        if at >= runs[1]:
            runs[1] = _run_end(_PATH_RUN, text, at)
        end = runs[1]
        dotted = text.startswith("/", end) and _PATH_CHARACTER.match(text, end + 1) is not None
    return _SCANNERS[url, dotted]


def _run_end(run: re.Pattern[str], text: str, at: int) -> int:
    match = run.match(text, at)
    return at if match is None else match.end()


def _binds(text: str, at: int) -> bool:
    """Whether the mark at ``at`` (one of :data:`_BINDING`) touches a digit as arithmetic or
    a number does: a bracket beside one, ``!`` right after one, a point or dash before one."""
    mark = text[at]
    before = text[at - 1] if at else ""
    after = text[at + 1] if at + 1 < len(text) else ""
    if mark in "()[]{}":
        return before.isdigit() or after.isdigit()
    if mark == "!":
        return before.isdigit()
    return after.isdigit()  # a point or a dash: .5, a minus sign, a range


def _is_cased_unit(word: str, tokens: list[RawToken]) -> bool:
    """A short word with a capital right after a number: a unit whose case is its meaning
    (``MB`` and ``Mb``, ``mW`` and ``MW``); not a currency code (``100 USD`` is ``$100``)."""
    return (
        bool(tokens)
        and tokens[-1][0] == "number"
        and len(word) <= 3
        and not word.islower()
        and not (len(word) == 3 and word.isupper())
        and word.isascii()
    )


def _is_label(word: str, text: str, start: int) -> bool:
    """A capital letter alone, not opening a sentence ("plan B"; not "A cat…", not "I")."""
    if len(word) != 1 or not word.isupper() or word == "I":
        return False
    before = text[:start].rstrip()
    return bool(before) and before[-1] not in ".!?:;\n"


def _closing_quote(text: str, start: int, closing: str) -> int:
    """Where the quote opened before ``start`` closes (-1: never); for ``'``, an apostrophe
    inside a word (``don't``) does not close it."""
    end = text.find(closing, start)
    while closing == "'" and end >= 0 and _inside_word(text, end):
        end = text.find(closing, end + 1)
    return end


def _inside_word(text: str, index: int) -> bool:
    return 0 < index < len(text) - 1 and text[index - 1].isalpha() and text[index + 1].isalpha()


def _expand(word: str) -> list[str]:
    """A run of letters as words: case-folded, hyphens split, contractions expanded, a
    possessive ``'s`` dropped."""
    folded = word.lower()
    if "'" not in folded and "-" not in folded and APOSTROPHE not in folded:
        whole = WHOLE_CONTRACTIONS.get(folded)
        return [folded] if whole is None else whole.split()
    words: list[str] = []
    for part in folded.replace(APOSTROPHE, "'").split("-"):
        whole = WHOLE_CONTRACTIONS.get(part)
        if whole is not None:
            words.extend(whole.split())
            continue
        if part.endswith("'s"):
            stem = part[:-2]
            words.extend([stem, "is"] if stem in IS_CONTRACTED else [stem])
            continue
        for suffix, expansion in SUFFIX_CONTRACTIONS:
            if part.endswith(suffix):
                part = part[: -len(suffix)] + expansion
                break
        words.extend(piece for piece in part.split() if piece and piece != "'")
    return words


def _time(match: re.Match[str]) -> str:
    if match["h24"] is not None:
        return f"{int(match['h24']):02d}:{match['m24']}"
    hour = int(match["hour"]) % 12 + (12 if match["ampm"] in "pP" else 0)
    return f"{hour:02d}:{match['minute'] or '00'}"


def _number(value: str) -> str:
    """A number with digits of any script as ASCII and thousands separators dropped;
    otherwise as written (leading zeros, versions, dates, ranges)."""
    value = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in value)
    if _THOUSANDS.fullmatch(value):
        value = value.replace(",", "")
    return value  # leading zeros kept: 010 is not 10 everywhere (an octal literal, a code)


def _join_number_words(tokens: list[RawToken]) -> list[RawToken]:
    """Number words as numbers: ``three`` → 3, ``twenty five`` → 25, ``two hundred`` → 200,
    ``a dozen`` → 12; times of day (``noon``) as times."""
    out: list[RawToken] = []
    index = 0
    while index < len(tokens):
        kind, value = tokens[index]
        if kind in _WORDISH and value in TIMES_OF_DAY:
            out.append(("number", TIMES_OF_DAY[value]))
            index += 1
            continue
        if kind not in _WORDISH or (value not in NUMBER_WORDS and value not in SCALES):
            out.append(tokens[index])
            index += 1
            continue
        number = NUMBER_WORDS.get(value, 1)
        index += value in NUMBER_WORDS
        following = tokens[index] if index < len(tokens) else None
        if 20 <= number <= 90 and following and 0 < NUMBER_WORDS.get(following[1], 0) < 10:
            number += NUMBER_WORDS[following[1]]
            index += 1
            following = tokens[index] if index < len(tokens) else None
        if following and following[0] in _WORDISH and following[1] in SCALES:
            number *= SCALES[following[1]]
            index += 1
        out.append(("number", str(number)))
    return out


def _singular(word: str) -> str:
    """A word with a plural ending taken off (a heuristic: see :data:`NOT_PLURAL`)."""
    if len(word) > 3 and word not in NOT_PLURAL and not word.endswith(("ss", "us", "is")):
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith(("ches", "shes", "xes", "zes", "sses")):
            word = word[:-2]
        elif word.endswith("s"):
            word = word[:-1]
    return word


def _classified(value: str) -> Token:
    """A significant word as a token: a negation, an opposite-pair word, or a plain word."""
    if value in NEGATIONS:
        return ("negation", "not")
    if value in POLARITY:
        return ("polarity", value)
    return ("word", value)


def _fold(tokens: list[RawToken]) -> Facets | Refusal:
    """Framings folded, stopwords set aside, words classified: the facets. A framing that
    folds to nothing ("please", "hello", "thank you") and an edge filler ("well", "just") are
    dropped only before the first significant token or after the last; inside, their words
    count ("how do you say hello in French", "well water")."""
    pieces: list[tuple[str | None, int, int]] = []  # (its framing or None, start, length)
    index = 0
    while index < len(tokens):
        framing, length = _framing_at(tokens, index)
        pieces.append((framing, index, length) if length else (None, index, 1))
        index += length or 1
    first, last = 0, len(pieces)
    while first < last and _dropped_at_an_edge(pieces[first], tokens):
        first += 1
    while last > first and _dropped_at_an_edge(pieces[last - 1], tokens):
        last -= 1
    significant: list[Token] = []
    exact: list[Token] = []  # the same, no word made singular
    framings: set[str] = set()
    shown: list[str] = []  # the embedding text: every token's canonical form, in order
    for position, (folded, start, length) in enumerate(pieces):
        if first <= position < last and folded == "":
            folded = None  # inside what is asked: its words count
        if folded is not None:
            if folded:
                framings.add(folded)
                shown.append(folded)
            continue
        for kind, value in tokens[start : start + length]:
            if kind == "word" or kind == "name":
                if value in STOPWORDS or (value in EDGE_FILLERS and not first <= position < last):
                    shown.append(value)
                    continue
                as_written = _classified(SYNONYMS.get(value, value))
                singular = _singular(value) if kind == "word" else value  # "Lucas" stays
                token = _classified(SYNONYMS.get(singular, singular))
            else:
                token = as_written = (kind, value)
            significant.append(token)
            exact.append(as_written)
            shown.append(token[1])
    if not significant:
        return "empty"
    return Facets(tuple(significant), frozenset(framings), " ".join(shown), tuple(exact))


def _dropped_at_an_edge(piece: tuple[str | None, int, int], tokens: list[RawToken]) -> bool:
    """Whether a piece before or after what is asked says nothing: a framing that folds to
    nothing, a stopword or an edge filler."""
    framing, start, _ = piece
    if framing is not None:
        return framing == ""
    kind, value = tokens[start]
    return kind in _WORDISH and (value in STOPWORDS or value in EDGE_FILLERS)


def _framing_at(tokens: list[RawToken], index: int) -> tuple[str, int]:
    """The framing phrase starting at ``index`` (the longest), and its length in tokens."""
    if tokens[index][1] not in FRAMING_STARTS:
        return "", 0
    words: list[str] = []
    for kind, value in tokens[index : index + LONGEST_FRAMING]:
        if kind not in _WORDISH:
            break
        words.append(value)
    for length in range(len(words), 0, -1):
        framing = FRAMINGS.get(tuple(words[:length]))
        if framing is not None:
            return framing, length
    return "", 0


def _one_block_moved(first: tuple[Token, ...], second: tuple[Token, ...]) -> bool:
    """Whether ``second`` is ``first``, or ``first`` with two adjacent blocks of plain words
    swapped (no number, negation, opposite-pair word, literal or symbol in either, and not
    the unit right after a number)."""
    if first == second:
        return True
    if len(first) != len(second):
        return False
    start = 0
    while first[start] == second[start]:
        start += 1
    end = len(first)
    while first[end - 1] == second[end - 1]:
        end -= 1
    middle, other = first[start:end], second[start:end]
    if len(middle) > MAX_MOVED_TOKENS or any(kind != "word" for kind, _ in middle):
        return False
    if start and first[start - 1][0] == "number":
        return False  # the word after a number is its unit ("5 km"): it stays
    return any(  # each block two tokens at least: "milk chocolate" is not "chocolate milk"
        middle[cut:] + middle[:cut] == other for cut in range(2, len(middle) - 1)
    )
