"""Give the demo's static files content-hashed names, as a build step (like ``collectstatic``).

    python -m examples.demo.static_build

For each file in :data:`SOURCES`, writes a copy named after its content,
``static/demo.<12 hex digits of its SHA-256>.css``, and removes copies with an older hash. The app
links to the hashed name (:func:`hashed_name`), and WhiteNoise serves names of that form with
far-future cache headers (``max-age`` of ten years, ``immutable``): a name changes whenever its
content does, so a browser or CDN may keep a copy for ever. The unhashed file is still served, with
a short ``max-age``. The hashed copies are committed; a test fails while one is stale.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: The static files that get a hashed copy, relative to :data:`STATIC`.
SOURCES = ("demo.css",)
#: What WhiteNoise treats as immutable: a URL whose file name has a 12-hex-digit hash before
#: its extension.
HASHED = re.compile(r"\.[0-9a-f]{12}\.[A-Za-z0-9]+$")


def hashed_name(source: str, static: str = STATIC) -> str:
    """Return the hashed name of ``source``: ``demo.css`` -> ``demo.3f2a...c9.css``.

    :param source: a file name relative to ``static``.
    :param static: the static folder.
    :returns: the name, relative to ``static``.
    """
    with open(os.path.join(static, source), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    stem, ext = os.path.splitext(source)
    return f"{stem}.{digest}{ext}"


def _stale_copies(source: str, static: str, keep: str) -> list[str]:
    stem, ext = os.path.splitext(source)
    pattern = re.compile(re.escape(stem) + r"\.[0-9a-f]{12}" + re.escape(ext) + "$")
    directory = os.path.dirname(os.path.join(static, source))
    return [
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if pattern.fullmatch(name) and name != os.path.basename(keep)
    ]


def build(static: str = STATIC) -> list[str]:
    """Write the hashed copy of each source in ``static`` and remove stale ones.

    :param static: the static folder.
    :returns: the hashed names, in the order of :data:`SOURCES`.
    """
    names = []
    for source in SOURCES:
        name = hashed_name(source, static)
        with open(os.path.join(static, source), "rb") as handle:
            content = handle.read()
        with open(os.path.join(static, name), "wb") as handle:
            handle.write(content)
        for stale in _stale_copies(source, static, name):
            os.remove(stale)
        names.append(name)
    return names


if __name__ == "__main__":
    for built in build():
        print(built, file=sys.stderr)
