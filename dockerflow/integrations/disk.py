"""A disk-space check: is there enough free space on the file system of a path?

Message IDs:

* :data:`~dockerflow.health.WARNING_DISK_SPACE_LOW` (``W002``), free space below a warning
  threshold;
* :data:`~dockerflow.health.ERROR_DISK_SPACE_LOW` (``E026``), free space below an error
  threshold;
* :data:`~dockerflow.health.ERROR_DISK_UNREADABLE` (``E027``), the path's file system could not
  be read (the path is missing, or not readable).

Free space is what an unprivileged process may still write (``statvfs``'s ``f_bavail``, as
``shutil.disk_usage`` and ``df`` report it): the blocks reserved for root are not counted.
"""

from __future__ import annotations

import os
import shutil

from .. import health
from ..health import CheckData, CheckMessage, Error, Warning
from ._support import failure

#: The default thresholds, as fractions of the file system's size: a warning below 10 % free,
#: an error below 5 %.
DEFAULT_WARNING_BELOW = 0.10
DEFAULT_ERROR_BELOW = 0.05


class DiskSpaceCheck:
    """A blocking check of the free space on the file system that holds ``path``.

    Each threshold is either a fraction of the file system's size (a ``float`` from 0 to 1,
    ``0.05`` for 5 %) or a number of bytes (an ``int``); ``None`` turns it off. The check
    reports the values ``free_bytes``, ``total_bytes`` and ``free_percent`` on every run.

    :param path: a file or directory on the file system to watch (default: the working
        directory when the check runs).
    :param warning_below: free space under which the check warns (``W002``); default 10 %.
    :param error_below: free space under which the check fails (``E026``); default 5 %.
    :raises ValueError: if a threshold is negative, a fraction above 1, or the error threshold
        is above the warning one when both are of one kind.
    :raises TypeError: if a threshold is neither a float, an int nor ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".",
        *,
        warning_below: float | int | None = DEFAULT_WARNING_BELOW,
        error_below: float | int | None = DEFAULT_ERROR_BELOW,
    ) -> None:
        self.path = os.fspath(path)
        self.warning_below = _threshold(warning_below, "warning_below")
        self.error_below = _threshold(error_below, "error_below")
        if (
            self.warning_below is not None
            and self.error_below is not None
            and type(self.warning_below) is type(self.error_below)
            and self.error_below > self.warning_below
        ):
            raise ValueError(
                f"DiskSpaceCheck: error_below ({error_below!r}) is above warning_below "
                f"({warning_below!r}): the warning would never be seen"
            )

    def __call__(self) -> list[CheckMessage | CheckData]:
        """Read the free space; return it as values, with a message below a threshold."""
        try:
            usage = shutil.disk_usage(self.path)
        except OSError as exc:
            return [
                failure(
                    f"Cannot read the disk space of {self.path}", exc, health.ERROR_DISK_UNREADABLE
                )
            ]
        fraction = usage.free / usage.total if usage.total else 0.0
        out: list[CheckMessage | CheckData] = [
            CheckData("free_bytes", usage.free, unit="bytes"),
            CheckData("total_bytes", usage.total, unit="bytes"),
            CheckData("free_percent", round(100 * fraction, 2), unit="%"),
        ]
        for threshold, cls, msg_id in (
            (self.error_below, Error, health.ERROR_DISK_SPACE_LOW),
            (self.warning_below, Warning, health.WARNING_DISK_SPACE_LOW),
        ):
            if threshold is not None and _below(usage.free, fraction, threshold):
                text = (
                    f"Free space on {self.path}: {_size(usage.free)} ({100 * fraction:.1f}%) of "
                    f"{_size(usage.total)}, below {_shown(threshold)}"
                )
                out.append(cls(text, id=msg_id))
                break
        return out

    def __repr__(self) -> str:
        return (
            f"DiskSpaceCheck({self.path!r}, warning_below={self.warning_below!r}, "
            f"error_below={self.error_below!r})"
        )


def disk_space_check(
    path: str | os.PathLike[str] = ".",
    *,
    warning_below: float | int | None = DEFAULT_WARNING_BELOW,
    error_below: float | int | None = DEFAULT_ERROR_BELOW,
) -> DiskSpaceCheck:
    """Return the disk-space check of ``path`` (see :class:`DiskSpaceCheck`).

    ::

        dockerflow.check(disk_space_check("/var/lib/uploads", error_below=2 * 1024**3),
                         name="uploads_disk")

    :returns: a blocking check function.
    """
    return DiskSpaceCheck(path, warning_below=warning_below, error_below=error_below)


def _threshold(value: object, name: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"DiskSpaceCheck: {name} must be a fraction (float), bytes (int) or None, got {value!r}"
        )
    if value < 0 or (isinstance(value, float) and value > 1):
        raise ValueError(
            f"DiskSpaceCheck: {name} must be a fraction from 0 to 1 or a number of bytes, "
            f"got {value!r}"
        )
    return value


def _below(free: int, fraction: float, threshold: float | int) -> bool:
    return fraction < threshold if isinstance(threshold, float) else free < threshold


def _shown(threshold: float | int) -> str:
    return f"{100 * threshold:g}%" if isinstance(threshold, float) else _size(threshold)


def _size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
