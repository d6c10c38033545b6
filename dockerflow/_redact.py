"""Masking secrets in text that may reach a heartbeat body or a log line."""

from __future__ import annotations

import re

_MASK = "***"

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s@/]*(?=@)")
# password=..., pwd: ..., token=..., secret=..., api_key=... (libpq DSNs, query strings, dicts)
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)"
    r"['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s'\"&;,)}]+)",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """Return ``text`` with passwords and tokens in URLs, DSNs and key=value pairs masked.

    :param text: any text, such as a driver's error message or a connection URL.
    :returns: the text with each secret replaced by ``***``.
    """
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + _MASK, text)
    return _KEY_VALUE.sub(lambda m: m.group("head") + _MASK, text)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """Return ``"<Type>: <first line of message>"``, masked and cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    summary = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    summary = mask_secrets(summary)
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"
