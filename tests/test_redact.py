from __future__ import annotations

import pytest

from dockerflow.masking import mask_secrets, short_error


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://bob:hunter2@db.internal/app", "hunter2"),
        ("postgresql://bob:pa/ss@host/db", "pa/ss"),
        ("postgresql://bob:p@ss@host:5432/db", "p@ss"),
        ("redis://:t0ken@localhost:6379/0", "t0ken"),
        ("host=db password=hunter2 user=bob", "hunter2"),
        ("password='my secret' host=h", "my secret"),
        ('{"password": "hunter2"}', "hunter2"),
        ("access_token=abc123&x=1", "abc123"),
        ("client_secret=s3cr3t", "s3cr3t"),
        ("DB_PASSWORD=hunter2", "hunter2"),
        ("aws_secret_access_key=AKIAXYZ", "AKIAXYZ"),
        ("api-key: k-123", "k-123"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "connection refused: 127.0.0.1:5432",
        'password authentication failed for user "bob"',
        "ping failed after 3 attempts",
    ],
)
def test_text_without_secrets_is_kept(text: str) -> None:
    assert mask_secrets(text) == text


def test_short_error_never_raises_and_is_bounded() -> None:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert short_error(Nasty()) == "Nasty: <message could not be read>"
    assert short_error(ValueError("x" * 1000), limit=50).endswith("…")
    assert len(short_error(ValueError("x" * 1000), limit=50)) == 50
    assert short_error(ValueError("first\nsecond password=abc")) == "ValueError: first"
