"""Loading the ``version.json`` that CI writes, defensively."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from ._errors import VersionFileError

#: Largest ``version.json`` that is read; a real one is a few hundred bytes.
MAX_VERSION_FILE_SIZE = 1024 * 1024

__all__ = ["MAX_VERSION_FILE_SIZE", "VersionFileError", "get_version"]


def get_version(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the object in ``<root>/version.json``, or ``None`` when there is no such file.

    A symlink is followed, but only to a regular file: a FIFO or device (``/dev/zero``) is refused
    rather than read forever. ``NaN`` and ``Infinity``, which are not JSON, are refused too.

    :param root: the directory that holds ``version.json``.
    :returns: the parsed JSON object, or ``None`` if the file does not exist.
    :raises VersionFileError: if the file is not a regular file, is larger than
        :data:`MAX_VERSION_FILE_SIZE`, is not UTF-8 JSON, or does not hold a JSON object.
    """
    path = os.path.join(os.fspath(root), "version.json")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the
        # opened file, so a file swapped in after a stat() cannot slip through.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VersionFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VersionFileError(f"{path}: not a regular file")
        try:
            data = handle.read(MAX_VERSION_FILE_SIZE + 1)
        except OSError as exc:
            raise VersionFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    if len(data) > MAX_VERSION_FILE_SIZE:
        raise VersionFileError(f"{path}: larger than {MAX_VERSION_FILE_SIZE} bytes")
    try:
        version = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        # Nesting deep enough to parse can still be too deep to encode again: find out here.
        json.dumps(version)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VersionFileError(f"{path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(version, dict):
        raise VersionFileError(f"{path}: holds a JSON {type(version).__name__}, not an object")
    return version


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
