"""Masking secrets in text that may reach a heartbeat body or a log line."""

from __future__ import annotations

import re

_MASK = "***"

# scheme://user:password@host -> scheme://user:***@host; the password runs to the last "@"
# before the host, so one holding "@" or "/" is masked whole.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s]*(?=@[^\s@]*)")
# password=..., DB_PASSWORD: ..., access_token=..., client_secret=..., api-key=... (libpq DSNs,
# query strings, dicts, environment dumps); a quoted value is masked up to its closing quote.
_KEY_VALUE = re.compile(
    r"(?P<head>[a-z0-9_\-]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)"
    r"[a-z0-9_\-]*['\"]?\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s'\"&;,)}]+)",
    re.IGNORECASE,
)
# Authorization header values: "Bearer <token>", "Basic <credentials>".
_AUTH_SCHEME = re.compile(r"(?P<head>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Return ``text`` with passwords and tokens in URLs, DSNs and key=value pairs masked.

    :param text: any text, such as a driver's error message or a connection URL.
    :returns: the text with each secret replaced by ``***``.
    """
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + _MASK, text)
    text = _KEY_VALUE.sub(lambda m: m.group("head") + _MASK, text)
    return _AUTH_SCHEME.sub(lambda m: m.group("head") + _MASK, text)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """Return ``"<Type>: <first line of message>"``, masked and cut to ``limit`` characters.

    Never raises, even for an exception whose ``__str__`` does.
    """
    try:
        text = str(exc).strip().splitlines()
    except Exception:
        text = ["<message could not be read>"]
    first = text[0] if text else ""
    summary = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    summary = mask_secrets(summary)
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"


def masked_repr(obj: object, limit: int = 100) -> str:
    """Return ``repr(obj)`` with secrets masked, cut to ``limit`` characters; never raises."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<unrepresentable {type(obj).__name__}>"
    text = mask_secrets(text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"
