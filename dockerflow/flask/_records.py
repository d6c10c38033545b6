"""Writing the ``request.summary`` record quickly, with the caller information of its call site.

``Logger.info()`` looks up the caller's frame for every record (``findCaller``), and
``Logger.makeRecord`` checks each ``extra`` key in a loop. The summary record is written from
one place in the extension, so where it comes from is worked out once, at import, from the
code of the function that writes it: records carry ``pathname``, ``filename``, ``module``,
``lineno`` and ``funcName`` as a ``logger.info()`` call there would give them.
"""

from __future__ import annotations

import dis
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MAKE_RECORD = logging.Logger.makeRecord
# The names a LogRecord gets only later, which makeRecord keeps out of extra too.
_LATER_ATTRIBUTES = ("message", "asctime")


@dataclass(frozen=True)
class CallSite:
    """Where a log call is, as a ``LogRecord`` shows it."""

    pathname: str
    lineno: int
    function: str


def call_site(function: Callable[..., Any], callee: str) -> CallSite:
    """Return where ``function`` calls the global ``callee``: its file, line and name.

    :param function: a plain function (or method) whose code calls ``callee``.
    :param callee: the name of the function it calls, as written in its code.
    :returns: the line of the first such call; that of the ``def`` if none is found.
    """
    code = function.__code__
    offset = next(
        (i.offset for i in dis.get_instructions(code) if i.argval == callee),
        None,
    )
    line = code.co_firstlineno
    if offset is not None:
        for start, end, lineno in code.co_lines():
            if start <= offset < end and lineno is not None:
                line = lineno
                break
    return CallSite(code.co_filename, line, code.co_name)


def log_record(
    logger: logging.Logger, level: int, msg: str, extra: dict[str, Any], site: CallSite
) -> None:
    """Log like ``logger.log(level, msg, extra=extra)`` called at ``site``, without looking
    up the caller's frame.

    Filters, handlers, ``logger.disabled`` and a record factory set with
    ``logging.setLogRecordFactory`` apply as usual; a logger class with a ``makeRecord`` of
    its own has it called.

    :param logger: the logger (a ``LoggerAdapter`` is given the call as is).
    :param level: the level; the caller checked ``logger.isEnabledFor(level)``.
    :param msg: the message, without ``%`` arguments.
    :param extra: the record's extra attributes.
    :param site: the call site the record names.
    :raises KeyError: if a key of ``extra`` is an attribute of the record, as ``makeRecord``.
    """
    if not isinstance(logger, logging.Logger):
        logger.log(level, msg, extra=extra)
        return
    name, pathname, lineno, function = logger.name, site.pathname, site.lineno, site.function
    if type(logger).makeRecord is not _MAKE_RECORD:
        record = logger.makeRecord(name, level, pathname, lineno, msg, (), None, function, extra)
    else:
        factory = logging.getLogRecordFactory()
        record = factory(name, level, pathname, lineno, msg, (), None, function)
        attrs = record.__dict__
        count = len(attrs)
        attrs.update(extra)
        # One dict update instead of makeRecord's loop; a clash shows in the count.
        if len(attrs) != count + len(extra) or "message" in extra or "asctime" in extra:
            fresh = vars(factory(name, level, "", 0, "", (), None))
            clash = next(key for key in extra if key in _LATER_ATTRIBUTES or key in fresh)
            raise KeyError(f"Attempt to overwrite {clash!r} in LogRecord")
    logger.handle(record)
