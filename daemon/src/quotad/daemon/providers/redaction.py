"""Keeping one provider key out of what quotad reports: :class:`KeyRedactor` finds the key in
text (and in every string of a decoded body) in each form a server may echo it, and replaces
the token holding it with ``[redacted]``.

Forms found:

- the key as it is, or any run of :data:`MIN_FRAGMENT` or more of its characters (a key cut
  short, or its middle);
- masked: a prefix of at least :data:`MIN_MASKED_PREFIX` of its characters followed by mask
  characters (``*``, ``.``, ``…``, ``•``, ``x``, ``#``), or mask characters followed by its last
  :data:`MASKED_SUFFIX` characters. OpenAI says "Incorrect API key provided:
  sk-proj-****...abcd"; others echo ``sk-SENTI*****f3a9`` or ``...f3a9``;
- encoded: base64 (standard or URL-safe, at any alignment inside a longer base64 run, as in
  an echoed ``Authorization: Basic`` header) and hex; and whatever the text says once its
  JSON or Python escapes (``\\u0073\\u006b…``), percent-escapes (``sk%2D…``) or HTML character
  references (``&#115;&#107;…``) are decoded. A text that reveals the key only once decoded is
  given back decoded, its key redacted.

Error answers are redacted after they are decoded (a JSON body's strings one by one), so that
what a client is finally shown is what was searched. Keys shorter than :data:`MIN_SECRET_LENGTH`
(``none``, ``EMPTY``: placeholders for local servers) are no secret and are left alone.
"""

from __future__ import annotations

import base64
import html
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any, Final

import msgspec

from quotad.daemon.providers.base import UNDECODABLE

REDACTED: Final = "[redacted]"
MIN_SECRET_LENGTH: Final = 8
MIN_FRAGMENT: Final = 12
"""A run of this many of the key's characters is taken for the key."""
MIN_MASKED_PREFIX: Final = 4
MASKED_SUFFIX: Final = 4
MASK_CHARACTERS: Final = "*.…•xX#"
MAX_DECODE_ROUNDS: Final = 3
"""Escapes inside escapes are decoded this deep."""

_MASKS: Final = frozenset(MASK_CHARACTERS)
_TOKEN_END: Final = frozenset(" \t\r\n\"'`<>()[]{},;|")
"""What ends the token a found key is replaced with."""
_JSON_DECODER: Final = msgspec.json.Decoder()
_JSON_ENCODER: Final = msgspec.json.Encoder()
_MASK_RUN: Final = re.compile("[" + re.escape(MASK_CHARACTERS) + "]{2}|…")
_TOKEN: Final = re.compile(r"\S*")
_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|\\/")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _json_unescape(text: str) -> str:
    """``text`` with its JSON (and ``\\x``) escapes decoded: a surrogate pair to its
    character, a lone surrogate to U+FFFD, so that what is decoded is still text UTF-8 can
    carry (a reply, an error's message, a frame)."""

    def character(match: re.Match[str]) -> str:
        code = match.group(1) or match.group(2)
        return chr(int(code, 16)) if code else "/"

    decoded = _ESCAPE.sub(character, text)
    if _SURROGATE.search(decoded) is None:
        return decoded
    return decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that ``secret`` alone determines, at each of the three byte
    alignments it may have inside a longer encoded run, in both alphabets."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret + b"\0\0").decode("ascii")
        first = -(-offset * 8 // 6)  # the first character holding none of the padding bytes
        last = (offset + len(secret)) * 8 // 6  # past the last holding only the secret's bits
        core = encoded[first:last]
        cores.add(core)
        cores.add(core.translate(str.maketrans("+/", "-_")))
    return cores


class KeyRedactor:
    """Finds one key in text in each form (see the module docstring)."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret if secret and len(secret) >= MIN_SECRET_LENGTH else None
        self.secret_bytes = self.secret.encode() if self.secret else b""
        if self.secret is None:
            return
        key = self.secret
        fragment = min(MIN_FRAGMENT, len(key))
        windows = {key[i : i + fragment] for i in range(len(key) - fragment + 1)}
        encoded = _base64_cores(self.secret_bytes)
        encoded |= {self.secret_bytes.hex(), self.secret_bytes.hex().upper()}
        self._found = re.compile("|".join(re.escape(form) for form in windows | encoded))
        self._prefix = key
        self._suffix = key[-MASKED_SUFFIX:]

    # ------------------------------------------------------------------ finding

    def _hits(self, text: str) -> Iterator[tuple[int, int]]:
        """Spans of ``text`` where the key shows, in any form but an escaped one."""
        for match in self._found.finditer(text):
            yield match.span()
        yield from self._masked_prefix_hits(text)
        yield from self._masked_suffix_hits(text)

    def _masked_prefix_hits(self, text: str) -> Iterator[tuple[int, int]]:
        """The key's first characters (at least :data:`MIN_MASKED_PREFIX`), a mask right where
        they stop, and a run of two masks or an ellipsis before the token ends (looked for
        within twice the key's length: each look is bounded, so a text of the prefix again
        and again costs linear time)."""
        key = self._prefix
        start = text.find(key[:MIN_MASKED_PREFIX])
        while start >= 0:
            matched = MIN_MASKED_PREFIX  # how far the key itself goes before the mask
            while (
                start + matched < len(text)
                and matched < len(key)
                and text[start + matched] == key[matched]
            ):
                matched += 1
            after = start + matched
            if after < len(text) and text[after] in _MASKS:
                window = _TOKEN.match(text, start + MIN_MASKED_PREFIX, after + 2 * len(key))
                if window is not None and _MASK_RUN.search(window[0]):
                    yield start, window.end()
            start = text.find(key[:MIN_MASKED_PREFIX], start + 1)

    def _masked_suffix_hits(self, text: str) -> Iterator[tuple[int, int]]:
        """The key's last :data:`MASKED_SUFFIX` characters right after a run of two masks or
        an ellipsis (found where the suffix is, not by a pattern starting with the masks,
        which took quadratic time on a long run of them)."""
        suffix = self._suffix
        at = text.find(suffix)
        while at >= 0:
            if at >= 1 and text[at - 1] == "…":
                yield at - 1, at + len(suffix)
            elif at >= 2 and text[at - 1] in _MASKS and text[at - 2] in _MASKS:
                yield at - 2, at + len(suffix)
            at = text.find(suffix, at + 1)

    def reveals(self, text: str) -> bool:
        """Whether ``text`` shows the key (in any form but an escaped one)."""
        return next(self._hits(text), None) is not None

    def _views(self, text: str) -> Iterator[str]:
        """``text`` with its escapes of each kind decoded, those that change it."""
        for decode in (_json_unescape, urllib.parse.unquote, html.unescape):
            view = decode(text)
            if view != text:
                yield view

    # ------------------------------------------------------------------ redacting

    def _redact_found(self, text: str) -> str:
        """``text`` with each token holding a form of the key replaced."""
        spans = sorted(self._hits(text))
        if not spans:
            return text
        pieces = []
        position = 0
        for start, end in spans:
            if end <= position:
                continue  # inside a token already replaced
            start = max(start, position)
            while start > position and text[start - 1] not in _TOKEN_END:
                start -= 1
            while end < len(text) and text[end] not in _TOKEN_END:
                end += 1
            pieces += [text[position:start], REDACTED]
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def text(self, text: str) -> str:
        """``text`` without the key in any form (decoded, where only decoding shows it)."""
        if self.secret is None or not text:
            return text
        text = self._redact_found(text)
        for _ in range(MAX_DECODE_ROUNDS):
            revealing = self._revealing_view(text)
            if revealing is None:
                break
            text = self._redact_found(revealing)
        return text

    def _revealing_view(self, text: str) -> str | None:
        """``text`` decoded by one kind of escape after another (up to
        :data:`MAX_DECODE_ROUNDS` deep): the first decoding that shows the key, if any."""
        layer = [text]
        for _ in range(MAX_DECODE_ROUNDS):
            deeper = []
            for candidate in layer:
                for view in self._views(candidate):
                    if self.reveals(view):
                        return view
                    deeper.append(view)
            layer = deeper
        return None

    def value(self, value: Any) -> Any:
        """A decoded JSON value with every string in it (keys too) redacted."""
        if self.secret is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(key)): self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def answer(self, content: bytes) -> bytes:
        """A successful answer's body (or one event of a stream) as it is, unless the key is
        in it, as it is or JSON-escaped: then its JSON with every string redacted (its text
        redacted, if it is not JSON). The common case costs one exact search (two when the
        body has ``\\u`` escapes); other forms are looked for in error answers only."""
        if self.secret is None:
            return content
        if self.secret_bytes not in content and not (
            b"\\u" in content and self.secret in _json_unescape(content.decode("utf-8", "replace"))
        ):
            return content
        try:
            return _JSON_ENCODER.encode(self.value(_JSON_DECODER.decode(content)))
        except UNDECODABLE:  # not JSON, too deep to walk, not UTF-8: its text
            return self.text(content.decode("utf-8", "replace")).encode()

    def body(self, content: bytes, limit: int) -> Any:
        """An error answer's body for :attr:`ProviderError.body`: its JSON with every string
        redacted, or else its :meth:`start`."""
        try:
            return self.value(_JSON_DECODER.decode(content))
        except UNDECODABLE:  # not JSON, too deep to walk, not UTF-8: its text
            return self.start(content, limit)

    def start(self, content: bytes, limit: int) -> str:
        """The first ``limit`` characters of ``content`` as text, redacted before the cut (so
        that a cut cannot leave a piece of the key too short to be found)."""
        margin = 8 * len(self.secret or "")  # room for a key at the cut, escaped
        text = content[: 4 * limit + margin].decode("utf-8", "replace")
        return self.text(text)[:limit]
