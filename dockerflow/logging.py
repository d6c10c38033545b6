"""Mozlog JSON logging and request IDs, as in python-dockerflow's ``dockerflow.logging``.

:class:`JsonLogFormatter` (also named :data:`MozlogFormatter`) writes each record as one line
of JSON in the mozlog envelope::

    {"Timestamp": 1700000000000000000, "Type": "request.summary", "Logger": "myapp",
     "Hostname": "web-1", "EnvVersion": "2.0", "Severity": 6, "Pid": 42,
     "Fields": {"rid": "...", "path": "/", "msg": "..."}}

Formatting never raises: values JSON cannot hold are written as their ``repr()``, and each
field is bounded (see :data:`dockerflow._logjson.MAX_FIELD_CHARS`).

Use it from ``logging.config.dictConfig``::

    "formatters": {"json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": "myapp"}}
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Set
from contextvars import ContextVar
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TextIO

from ._logjson import (
    MAX_DEPTH,
    MAX_FIELD_CHARS,
    encode_chunks,
    encode_fields,
    encode_str,
    encode_value,
    format_traceback,
    safe_repr,
)

__all__ = [
    "JsonLogFormatter",
    "MozlogFormatter",
    "MozlogHandler",
    "RequestIdLogFilter",
    "get_or_generate_request_id",
    "request_id_context",
    "safer_format_traceback",
    "sanitize_request_id",
]

if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # StreamHandler takes a type argument only from Python 3.11 on
    _StreamHandler = logging.StreamHandler

request_id_context: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The current request's ID, set by the web integration; ``None`` outside a request."""

_DEFAULT_REQUEST_ID_HEADER = "X-Request-ID"

# Cached envelope heads per formatter; past this many the cache starts over.
_MAX_HEADS = 256

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:;+=/-]+")

# The attributes LogRecord.__init__ sets, before any other (taskName came in 3.12).
_STANDARD_ORDER = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_STANDARD_COUNT = len(_STANDARD_ORDER)

# Those, plus the ones logging itself or a handler adds later; all others on a record are
# extras and go into Fields.
_RECORD_ATTRIBUTES = frozenset(_STANDARD_ORDER) | {
    "args",
    "asctime",
    "created",
    "exc_info",
    "exc_text",
    "filename",
    "funcName",
    "levelname",
    "levelno",
    "lineno",
    "logger_name",
    "message",
    "module",
    "msecs",
    "msg",
    "name",
    "pathname",
    "process",
    "processName",
    "relativeCreated",
    "stack_info",
    "taskName",
    "thread",
    "threadName",
}


class _AttributeNames(set[str]):
    """A set of record attribute names that knows whether it holds every standard attribute.

    The formatter asks that of :attr:`JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS` for every
    record with extras, while users may change the set at any time: the answer is worked out
    again on each change, instead of on each record.
    """

    #: Whether every attribute LogRecord.__init__ sets is in the set.
    covers_standard: bool

    def __init__(self, names: Iterable[str] = ()) -> None:
        super().__init__(names)
        self._changed()

    def _changed(self) -> None:
        self.covers_standard = self.issuperset(_STANDARD_ORDER)

    def add(self, name: str) -> None:
        super().add(name)
        self._changed()

    def discard(self, name: object) -> None:
        super().discard(name)
        self._changed()

    def remove(self, name: str) -> None:
        super().remove(name)
        self._changed()

    def pop(self) -> str:
        name = super().pop()
        self._changed()
        return name

    def clear(self) -> None:
        super().clear()
        self._changed()

    def update(self, *others: Iterable[str]) -> None:
        super().update(*others)
        self._changed()

    def difference_update(self, *others: Iterable[Any]) -> None:
        super().difference_update(*others)
        self._changed()

    def intersection_update(self, *others: Iterable[Any]) -> None:
        super().intersection_update(*others)
        self._changed()

    def symmetric_difference_update(self, other: Iterable[str]) -> None:
        super().symmetric_difference_update(other)
        self._changed()

    def __ior__(self, other: Set[str]) -> _AttributeNames:  # type: ignore[override,misc]
        super().__ior__(other)
        self._changed()
        return self

    def __iand__(self, other: Set[object]) -> _AttributeNames:
        super().__iand__(other)
        self._changed()
        return self

    def __isub__(self, other: Set[object]) -> _AttributeNames:
        super().__isub__(other)
        self._changed()
        return self

    def __ixor__(self, other: Set[str]) -> _AttributeNames:  # type: ignore[override,misc]
        super().__ixor__(other)
        self._changed()
        return self


def _covers_standard(excluded: set[str]) -> bool:
    """Return whether ``excluded`` holds every attribute LogRecord.__init__ sets.

    Asked per record: the default set keeps the answer; a set a user put in its place is
    looked through.
    """
    if type(excluded) is _AttributeNames:
        return excluded.covers_standard
    return excluded.issuperset(_STANDARD_ORDER)


class JsonLogFormatter(logging.Formatter):
    """Format log records as one-line JSON in the mozlog envelope.

    ``Fields`` holds every extra attribute of the record (``extra=`` values, and attributes
    that filters such as :class:`RequestIdLogFilter` set), then ``msg``, the formatted message,
    unless it is empty or already looks like a JSON object. A record with an exception adds
    ``error``, the exception's ``repr()``, and ``traceback`` (see
    :func:`safer_format_traceback`).

    Formatting never raises: a value JSON cannot hold is written as its ``repr()``, a
    structure that contains itself is cut where it recurs, NaN and infinities become strings,
    text longer than 64 KiB characters in one field is truncated with a marker, and a message
    whose ``%`` arguments do not fit is written unformatted with ``args`` and
    ``format_error`` beside it. The line holds no raw control character: JSON escapes them,
    and everything outside ASCII is written as ``\\uXXXX``.

    Subclasses may override :meth:`convert_record` or :meth:`is_value_jsonlike` as with
    python-dockerflow; the output is then encoded from the result, field by field, which is
    slower.
    """

    LOGGING_FORMAT_VERSION: ClassVar[str] = "2.0"
    #: Python logging level to syslog severity.
    SYSLOG_LEVEL_MAP: ClassVar[Mapping[int, int]] = {50: 2, 40: 3, 30: 4, 20: 6, 10: 7}
    #: Syslog severity of a level not in :attr:`SYSLOG_LEVEL_MAP`.
    DEFAULT_SYSLOG_LEVEL: ClassVar[int] = 7
    #: Record attributes that are not extras and so stay out of ``Fields``. A mutable set, as
    #: in python-dockerflow: ``JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS.add("secret")`` keeps
    #: an attribute out of every formatter's output from the next record on, including
    #: formatters already created.
    EXCLUDED_LOGRECORD_ATTRS: ClassVar[set[str]] = _AttributeNames(_RECORD_ATTRIBUTES)

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        logger_name: str = "Dockerflow",
    ) -> None:
        """Create the formatter.

        :param fmt: accepted for ``logging.config`` compatibility; not used.
        :param datefmt: accepted for ``logging.config`` compatibility; not used.
        :param style: accepted for ``logging.config`` compatibility; not used.
        :param logger_name: the ``Logger`` of records that carry no ``logger_name`` attribute.
        """
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)
        self.logger_name = logger_name
        cls = type(self)
        self._converts_itself = cls.convert_record is not JsonLogFormatter.convert_record
        # An overridden is_value_jsonlike is called for each message, on the careful path.
        self._plain = (
            not self._converts_itself
            and cls.is_value_jsonlike is JsonLogFormatter.is_value_jsonlike
        )
        self.hostname = socket.gethostname()

    @property
    def hostname(self) -> str:
        """The ``Hostname`` written in every record; looked up once, when created."""
        return self._hostname

    @hostname.setter
    def hostname(self, value: str) -> None:
        self._hostname = value
        # The envelope from Type to Fields, by (Type, Logger, level, Pid): a service logs
        # under few of those, and this skips most of the envelope's encoding.
        self._heads: dict[tuple[object, object, int, object], str] = {}

    def is_value_jsonlike(self, value: str) -> bool:
        """Return whether ``value`` looks like a JSON object (python-dockerflow's test).

        A message that does is left out of ``Fields``: it is taken to be a payload already
        written elsewhere.

        :param value: a formatted log message.
        :returns: ``True`` if it starts with ``{`` and ends with ``}``.
        """
        return value.startswith("{") and value.endswith("}")

    def format(self, record: logging.LogRecord, logger_name: str | None = None) -> str:
        """Format ``record`` as one line of mozlog JSON; never raise.

        :param record: the log record; it is not changed.
        :param logger_name: the ``Logger`` to write; when ``None``, the record's
            ``logger_name`` attribute if it has one, else the formatter's ``logger_name``.
            :class:`MozlogHandler` passes its name here.
        :returns: the JSON text, without a trailing newline.
        """
        try:
            attrs = record.__dict__
            if logger_name is None:
                logger_name = attrs.get("logger_name", self.logger_name)
            if not self._plain or record.exc_info:
                return self._format_carefully(record, logger_name)
            # The usual record, on a path where each step saved shows in the cost. Anything
            # unusual raises on the way (a message that is not a str, a value the encoder
            # refuses, an unhashable name) and the record is done again carefully.
            message = record.msg
            # getMessage() of a plain record without arguments returns its str msg as is.
            if record.args or type(message) is not str or type(record) is not logging.LogRecord:
                message = record.getMessage()
            keep_message = message and not (message[0] == "{" and message[-1] == "}")
            # Read per record: users add to (or take from) this set at any time.
            excluded = self.EXCLUDED_LOGRECORD_ATTRS
            if len(attrs) == _STANDARD_COUNT and excluded.issuperset(attrs):  # no extras
                if not keep_message:
                    fields_json = "{}"
                elif len(message) <= MAX_FIELD_CHARS:
                    fields_json = f'{{"msg": {encode_str(message)}}}'
                else:
                    return self._format_carefully(record, logger_name)
            else:
                # What _extras() does, inline.
                # _covers_standard(), inline.
                if type(excluded) is _AttributeNames:
                    covers = excluded.covers_standard
                else:
                    covers = excluded.issuperset(_STANDARD_ORDER)
                fields = dict(islice(attrs.items(), _STANDARD_COUNT if covers else 0, None))
                if not excluded.isdisjoint(fields):
                    fields = {key: value for key, value in attrs.items() if key not in excluded}
                if keep_message:
                    fields["msg"] = message
                fields_json = "".join(encode_chunks(fields, 0))
                if len(fields_json) > MAX_FIELD_CHARS or (
                    # may_nest_too_deep(), inline, skipped quickly for flat fields: one may be
                    # over the depth bound.
                    ("[" in fields_json or fields_json.find("{", 1) != -1)
                    and fields_json.count("[") + fields_json.count("{") > MAX_DEPTH
                ):
                    return self._format_carefully(record, logger_name)
            key = (record.name, logger_name, record.levelno, record.process)
            head = self._heads.get(key) or self._new_head(key)
            return f'{{"Timestamp": {int(record.created * 1e9)}, {head}{fields_json}}}'
        except Exception:
            return self._format_carefully(record, logger_name)

    def convert_record(self, record: logging.LogRecord) -> dict[str, object]:
        """Return the mozlog envelope of ``record`` as a dict, before JSON encoding.

        ``Fields`` values are the record's own objects, not yet made safe for JSON.

        :param record: the log record.
        :returns: a dict with the envelope keys and ``Fields``.
        """
        return {
            "Timestamp": int(record.created * 1e9),
            "Type": record.name,
            "Logger": record.__dict__.get("logger_name", self.logger_name),
            "Hostname": self.hostname,
            "EnvVersion": self.LOGGING_FORMAT_VERSION,
            "Severity": self.SYSLOG_LEVEL_MAP.get(record.levelno, self.DEFAULT_SYSLOG_LEVEL),
            "Pid": record.process,
            "Fields": self._fields(record),
        }

    def _format_carefully(self, record: logging.LogRecord, logger_name: object) -> str:
        """Format ``record`` taking nothing for granted; never raise."""
        try:
            if self._converts_itself:
                return self._format_converted(record)
            fields_json = encode_fields(self._fields(record))
            key = (record.name, logger_name, record.levelno, record.process)
            try:
                head = self._heads.get(key) or self._new_head(key)
            except TypeError:  # an unhashable name or process: not cached
                head = self._head(*key)
            return f'{{"Timestamp": {int(record.created * 1e9)}, {head}{fields_json}}}'
        except Exception as exc:  # a record broken beyond what the steps above expect
            return self._format_broken(record, logger_name, exc)

    def _new_head(self, key: tuple[object, object, int, object]) -> str:
        """Return the envelope head for ``key`` and cache it."""
        head = self._head(*key)
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        self._heads[key] = head
        return head

    def _head(self, name: object, logger_name: object, levelno: int, process: object) -> str:
        """Return the envelope from ``Type`` to the ``Fields`` key, as JSON text."""
        severity = self.SYSLOG_LEVEL_MAP.get(levelno, self.DEFAULT_SYSLOG_LEVEL)
        return (
            f'"Type": {encode_value(name)}, "Logger": {encode_value(logger_name)}, '
            f'"Hostname": {encode_value(self.hostname)}, '
            f'"EnvVersion": {encode_value(self.LOGGING_FORMAT_VERSION)}, '
            f'"Severity": {encode_value(severity)}, "Pid": {encode_value(process)}, "Fields": '
        )

    def _extras(self, attrs: dict[str, object]) -> dict[str, object]:
        """Return the extra attributes among a record's ``attrs``, in the order they were set.

        LogRecord.__init__ sets the standard attributes first, and extras come after them, so
        only what follows the standard ones needs a look. If one of those is not standard (a
        formatter added ``message``, or a LogRecord subclass set an attribute before calling
        ``__init__``, so that a standard one came later), every attribute is looked at.
        """
        excluded = self.EXCLUDED_LOGRECORD_ATTRS
        skip = _STANDARD_COUNT if _covers_standard(excluded) else 0
        extras = dict(islice(attrs.items(), skip, None))
        if excluded.isdisjoint(extras):
            return extras
        return {key: value for key, value in attrs.items() if key not in excluded}

    def _fields(self, record: logging.LogRecord) -> dict[str, object]:
        """Return the ``Fields`` of ``record``, every case handled (the slower way)."""
        fields = self._extras(record.__dict__)
        try:
            message = record.getMessage()
        except Exception as exc:  # "%d" with a str argument, too few arguments, a bad __str__
            fields["msg"] = _safe_str(record.msg)
            fields["args"] = safe_repr(record.args)
            fields["format_error"] = safe_repr(exc)
        else:
            if not isinstance(message, str) or (message and not self.is_value_jsonlike(message)):
                fields["msg"] = message
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            fields["error"] = safe_repr(exc_info[1])
            try:
                fields["traceback"] = format_traceback(*exc_info)
            except Exception as exc:
                fields["traceback"] = f"<traceback unavailable: {safe_repr(exc)}>"
        return fields

    def _format_converted(self, record: logging.LogRecord) -> str:
        """Encode what a subclass's :meth:`convert_record` returns, member by member."""
        members = []
        for key, value in self.convert_record(record).items():
            encoded = encode_fields(value) if isinstance(value, dict) else encode_value(value)
            members.append(f"{encode_value(key)}: {encoded}")
        return "{" + ", ".join(members) + "}"

    def _format_broken(self, record: logging.LogRecord, logger_name: object, exc: Exception) -> str:
        """Return a line for a record that could not be formatted, built from safe parts."""
        fields: dict[str, object] = {
            "msg": "log record could not be formatted",
            "error": safe_repr(exc),
            "record": safe_repr(record),
        }
        try:
            name = record.name
        except Exception:
            name = None
        head = self._head(name, logger_name, logging.ERROR, os.getpid())
        return f'{{"Timestamp": {time.time_ns()}, {head}{encode_fields(fields)}}}'


MozlogFormatter = JsonLogFormatter
"""The same class as :class:`JsonLogFormatter`, by its other python-dockerflow name."""


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def safer_format_traceback(
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> str:
    """Format an exception so that text from the exception itself cannot forge log lines.

    Frames are laid out as :func:`traceback.format_tb` does (without the ``^^^^`` column
    markers); the exception type and value follow as their ``repr()``, which escapes line
    breaks and terminal control sequences in the message.

    :param exc_type: the exception class, as in ``sys.exc_info()``.
    :param exc_value: the exception.
    :param tb: its traceback.
    :returns: the formatted traceback.
    """
    return format_traceback(exc_type, exc_value, tb)


class MozlogHandler(_StreamHandler):
    """A stream handler that writes mozlog JSON with its own name as ``Logger``.

    As python-dockerflow's handler does, it sets ``logger_name`` on each record it emits, so
    its name takes precedence over the ``logger_name`` of the formatter, whichever formatter
    is set; handlers that see the record later see that attribute too.
    """

    def __init__(self, stream: TextIO | None = None, name: str = "Dockerflow") -> None:
        """Create the handler.

        :param stream: where to write; ``sys.stdout`` (as it is now) when ``None``.
        :param name: the ``Logger`` value of every record this handler writes.
        """
        super().__init__(sys.stdout if stream is None else stream)
        self.logger_name = name
        self.setFormatter(JsonLogFormatter(logger_name=name))

    def emit(self, record: logging.LogRecord) -> None:
        """Set ``record.logger_name`` to this handler's name and write the record.

        :param record: the log record.
        """
        record.logger_name = self.logger_name
        super().emit(record)


class RequestIdLogFilter(logging.Filter):
    """Set ``rid`` on each record to the current request's ID (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the request ID from :data:`request_id_context` to ``record``.

        :param record: the log record.
        :returns: ``True``: no record is dropped.
        """
        record.rid = request_id_context.get()
        return True


def sanitize_request_id(value: str | bytes | None, max_length: int = 128) -> str | None:
    """Return ``value`` if it is a safe request ID, else ``None``.

    A safe ID is 1 to ``max_length`` characters, each an ASCII letter or digit or one of
    ``- _ . : ; + = /``. That takes UUIDs, hex and base64 tokens, W3C ``traceparent`` values,
    and AWS (``Root=1-5759e988-bd862e3fe1be46a994272793;Parent=...``) and Google Cloud trace
    IDs, while keeping out spaces, quotes, control characters and anything outside ASCII.

    :param value: a header value, as text or bytes (bytes must be ASCII).
    :param max_length: the longest ID accepted.
    :returns: the ID as a ``str``, or ``None`` if it is missing or not safe.
    :raises ValueError: if ``max_length`` is less than 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    if type(value) is str:  # a header value from the WSGI environ: the usual case
        return value if len(value) <= max_length and _REQUEST_ID.fullmatch(value) else None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return None
    if _REQUEST_ID.fullmatch(value) is None:
        return None
    return str(value)


def get_or_generate_request_id(headers: Mapping[str, str], header_name: str | None = None) -> str:
    """Return the request ID from ``headers`` if it is safe, else a new random one.

    :param headers: request headers. A plain ``dict`` is searched without regard to case;
        other mappings (such as Werkzeug's ``Headers``) are asked with ``get``, and do that
        themselves.
    :param header_name: the header to read; ``X-Request-ID`` when ``None``.
    :returns: the header's value if :func:`sanitize_request_id` accepts it, else
        ``str(uuid.uuid4())``.
    """
    name = header_name or _DEFAULT_REQUEST_ID_HEADER
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        wanted = name.lower()
        value = next(
            (v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted),
            None,
        )
    return sanitize_request_id(value) or str(uuid.uuid4())
