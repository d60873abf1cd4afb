"""The words the semantic cache's match rules know (:mod:`.rules`): words that never change what
is asked, negations, words with an opposite, synonyms, request framings, number words,
contractions, currency signs and quote marks. English only: a word of another language is
never dropped or merged, so it must match as written.
"""

from __future__ import annotations

from typing import Final


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


STOPWORDS: Final = _wordset("a an the is are am be do does at there this that these those")
"""Words that never change what is asked. Everything else, function words included, counts."""

EDGE_FILLERS: Final = _wordset("please kindly just really actually basically ok okay so well")
"""Words dropped before what is asked or after it ("Well, …", "…, please"), as the framings
that fold to nothing are; inside it they count ("well water", "say please in French")."""

NEGATIONS: Final = _wordset("not no never none nothing nobody nowhere neither nor without cannot")

POLARITY: Final = _wordset(
    """on off out up down yes true false and or with before after above below over under
    more less most least max min maximum minimum first last all any some every each only
    enable disable enabled disabled show hide open close start stop add delete include
    exclude increase decrease allow deny block unblock lock unlock install uninstall accept
    reject encrypt decrypt encode decode import export push pull read write input output
    left right upper lower higher ascending descending asc desc positive negative plus minus
    public private sync async inside outside from to into than buy sell win lose pass fail
    good bad best worst big small fast slow old new early late"""
)
"""Words with an opposite ("on"/"off", "enable"/"disable", "to"/"from"): never dropped, never
merged, never moved past other words."""

SYNONYMS: Final = {
    "repair": "fix",
    "large": "big",
    "automobile": "car",
    "erase": "delete",
    "remove": "delete",
    "utilize": "use",
    "begin": "start",
    "dollar": "usd",
    "euro": "eur",
    "percentage": "percent",
}

FRAMINGS: Final[dict[tuple[str, ...], str]] = {}
"""Phrases (after contractions are expanded) → the framing they stand for; "" drops them."""


def _framings(canonical: str, phrases: str) -> None:
    for phrase in phrases.split("|"):
        FRAMINGS[tuple(phrase.split())] = canonical


_framings(
    "how to",
    "how do i|how can i|how could i|how should i|how would i|how do you|how can you|"
    "how does one|how can one|how do we|how can we|how to|is there a way to|"
    "what is the best way to|what is the easiest way to|what is the simplest way to|"
    "what is the right way to|what is the proper way to|what is the correct way to|"
    "what is the recommended way to|what is the standard way to|what is the way to|"
    "what is a good way to|what is a simple way to|what is an easy way to|best way to|"
    "tell me how to|show me how to|explain how to|i want to know how to|"
    "i would like to know how to|i need to know how to",
)
_framings(
    "explain",
    "explain|describe|explain to me|tell me about|what is|what are|what do you know about|"
    "give me an overview of|give me an explanation of|define",
)
_framings(
    "",
    "please|kindly|can you|could you|would you|will you|can you please|could you please|"
    "would you please|i need you to|i want you to|i would like you to|help me|hi|hello|hey|"
    "thanks|thank you",
)
LONGEST_FRAMING: Final = max(len(phrase) for phrase in FRAMINGS)
FRAMING_STARTS: Final = frozenset(phrase[0] for phrase in FRAMINGS)

NUMBER_WORDS: Final = {
    word: value
    for value, word in enumerate(
        (
            *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
            *("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"),
            *("seventeen", "eighteen", "nineteen", "twenty"),
        )
    )
} | {
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "dozen": 12,
}
SCALES: Final = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}

IS_CONTRACTED: Final = _wordset("what that it there here who where how when why he she")
"""``X's`` reads as ``X is`` for these; any other ``'s`` is a possessive and is dropped."""
WHOLE_CONTRACTIONS: Final = {
    "won't": "will not",
    "can't": "can not",
    "shan't": "shall not",
    "ain't": "is not",
    "cannot": "can not",
    "let's": "let us",
}
SUFFIX_CONTRACTIONS: Final = (
    ("n't", " not"),
    ("'re", " are"),
    ("'m", " am"),
    ("'ll", " will"),
    ("'ve", " have"),
    ("'d", " would"),
)
TIMES_OF_DAY: Final = {"noon": "12:00", "midday": "12:00", "midnight": "00:00"}
NOT_PLURAL: Final = _wordset(
    """news means series species physics mathematics economics politics always perhaps
    whereas towards afterwards sometimes besides bias alias canvas atlas gas yes its his
    thus plus minus status corpus virus campus bonus chaos ethos lens was has does"""
)

CURRENCIES: Final = {"$": "usd", "€": "eur", "£": "gbp", "¥": "¥", "₹": "inr"}
QUOTES: Final = {
    '"': '"',
    "\u201c": "\u201d",  # left and right double
    "\u201d": "\u201d",  # right double twice (Swedish, Finnish)
    "\u201e": "\u201c",  # low-9 double, left double (German)
    "\u2018": "\u2019",  # left and right single
    "\u201a": "\u2018",  # low-9 single, left single
    "\u00ab": "\u00bb",  # guillemets
    "\u00bb": "\u00ab",  # guillemets reversed (Danish)
    "\u2039": "\u203a",  # single guillemets
    "\u300c": "\u300d",  # CJK corner brackets
    "\u300e": "\u300f",  # CJK white corner brackets
    "\u300a": "\u300b",  # CJK double angle brackets
    "\u3008": "\u3009",  # CJK angle brackets
}
"""Opening quote marks and the mark that closes each."""
APOSTROPHE: Final = "\u2019"  # right single quote, as in "don't" typeset
