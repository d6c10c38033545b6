"""Masking secrets in text that may reach a heartbeat body or a log line.

Masking takes time linear in the length of the text, whatever the text is, so that a check that
raises with a megabyte of word characters cannot stall a heartbeat: candidates are found with
``str.find`` (a key word, ``://``), and each run of key or URL characters is read once, by an
anchored pattern whose repetitions are bounded.
"""

from __future__ import annotations

import re

_MASK = "***"

#: Longest text that is masked; longer text is cut to this many characters first.
MAX_MASKED_CHARS = 1024 * 1024

# Words that make a key secret: password=..., DB_PASSWORD: ..., access_token=...,
# client_secret=..., api-key=... (libpq DSNs, query strings, dicts, environment dumps).
_KEY_WORDS = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
)
_KEY_CHARS = re.compile(r"[a-z0-9_\-]*")
# After a key: an optional closing quote, "=" or ":", then the value. A quoted value is masked up
# to its closing quote, or to the end of the line when there is none.
_KEY_VALUE = re.compile(
    r"['\"]?[ \t]{0,16}[=:][ \t]{0,16}"
    r"(?P<value>'[^'\n]{0,1024}'?|\"[^\"\n]{0,1024}\"?|[^\s'\"&;,)}]{1,1024})"
)
# scheme://user:password@host: the user part, then the password, which runs to the last "@" of
# the URL (a password may hold "@" or "/").
_URL_USER = re.compile(r"[^\s:/@]{0,256}:")
_NON_SPACE = re.compile(r"\S*")
# Authorization header values: "Bearer <token>", "Basic <credentials>".
_AUTH_WORDS = ("bearer", "basic")
_AUTH_VALUE = re.compile(r"[ \t]{1,16}(?P<value>[A-Za-z0-9._~+/=\-]{1,4096})")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_]")
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def mask_secrets(text: str) -> str:
    """Return ``text`` with passwords and tokens in URLs, DSNs and key=value pairs masked.

    Text longer than :data:`MAX_MASKED_CHARS` is cut to that length first.

    :param text: any text, such as a driver's error message or a connection URL.
    :returns: the text with each secret replaced by ``***``.
    """
    if len(text) > MAX_MASKED_CHARS:
        text = text[:MAX_MASKED_CHARS] + "…"
    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters grow when lowered
        lower = text.translate(_ASCII_LOWER)
    spans = [*_url_passwords(lower), *_key_values(lower), *_auth_values(lower)]
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    position = 0
    for start, end in spans:
        if start < position:  # inside a secret masked already
            start = position
            if start >= end:
                continue
        out.append(text[position:start])
        out.append(_MASK)
        position = end
    out.append(text[position:])
    return "".join(out)


class _Finder:
    """The occurrences of a few words in a text, in order; each word's next is looked up once."""

    def __init__(self, text: str, words: tuple[str, ...]) -> None:
        self._text = text
        self._next = {word: text.find(word) for word in words}

    def first_from(self, start: int) -> tuple[int, str]:
        """Return the first position at or after ``start`` where a word occurs, and the word
        (``-1`` when none does)."""
        best, found = -1, ""
        for word, at in self._next.items():
            if at != -1 and at < start:
                at = self._next[word] = self._text.find(word, start)
            if at != -1 and (best == -1 or at < best):
                best, found = at, word
        return best, found


def _key_values(lower: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = 0
    finder = _Finder(lower, _KEY_WORDS)
    while True:
        at, word = finder.first_from(position)
        if at == -1:
            return spans
        # The rest of the key: read once; any key word later in it ends at the same place.
        key_end = _KEY_CHARS.match(lower, at + len(word)).end()  # type: ignore[union-attr]
        value = _KEY_VALUE.match(lower, key_end)
        if value is None:
            position = max(key_end, at + 1)
            continue
        spans.append(value.span("value"))
        position = value.end()


def _url_passwords(lower: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = 0
    while True:
        at = lower.find("://", position)
        if at == -1:
            return spans
        run_end = _NON_SPACE.match(lower, at).end()  # type: ignore[union-attr]
        user = _URL_USER.match(lower, at + 3, run_end)
        last_at = lower.rfind("@", at + 3, run_end)
        if user is None or last_at <= user.end():
            # No credentials here, nor in another URL of this run when it has no "@" at all.
            position = run_end if last_at == -1 else at + 3
            continue
        spans.append((user.end(), last_at))
        position = last_at


def _auth_values(lower: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = 0
    finder = _Finder(lower, _AUTH_WORDS)
    while True:
        at, word = finder.first_from(position)
        if at == -1:
            return spans
        position = at + len(word)
        if at > 0 and _WORD_CHAR.match(lower, at - 1):
            continue  # part of a longer word
        value = _AUTH_VALUE.match(lower, position)
        if value is not None:
            spans.append(value.span("value"))
            position = value.end()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_error(exc: BaseException, limit: int = 200) -> str:
    """Return ``"<Type>: <first line of message>"``, masked and cut to ``limit`` characters.

    The first line is cut to a few times ``limit`` before it is masked (a secret that straddles
    ``limit`` is still masked whole), then the masked text to ``limit``. Never raises, even for an
    exception whose ``__str__`` does.
    """
    try:
        text = str(exc)
    except Exception:
        text = "<message could not be read>"
    first = text[: 4 * limit + 512].strip().partition("\n")[0]
    summary = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return _cut(mask_secrets(summary), limit)


def masked_repr(obj: object, limit: int = 100) -> str:
    """Return ``repr(obj)`` with secrets masked, cut to ``limit`` characters; never raises."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<unrepresentable {type(obj).__name__}>"
    return _cut(mask_secrets(text[: 4 * limit + 512]), limit)
