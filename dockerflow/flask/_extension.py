"""The Flask extension: registers the Dockerflow views, request logging and the CLI."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import flask
from flask import Flask

from ..checks._registry import registered_checks
from ..engine import (
    AlreadyInitializedError,
    Check,
    CheckRegistry,
    Engine,
    LoopThread,
    NotInitializedError,
    Report,
    UnknownCheckError,
)
from ..engine._check import callable_name
from ..integrations import follow_timeout
from ..logging import request_id_context, sanitize_request_id
from ..version import get_version
from ._config import Settings, load_settings
from .signals import heartbeat_failed, heartbeat_passed, heartbeat_status_changed

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
VersionCallback = Callable[[str], "dict[str, Any] | None"]

#: Query parameter of ``/__heartbeat__`` naming checks to leave out, comma-separated.
EXCLUDE_PARAM = "exclude"
#: Query parameter of ``/__heartbeat__`` naming the only checks to run, comma-separated.
ONLY_PARAM = "check"


@dataclass
class _AppState:
    """What the extension keeps per application."""

    settings: Settings
    engine: Engine
    version_path: str
    status_lock: threading.Lock = field(default_factory=threading.Lock)
    last_status: str | None = None


class Dockerflow:
    """The Dockerflow Flask extension.

    ::

        app = Flask(__name__)
        dockerflow = Dockerflow(app, db=db, redis=redis_client)

        @dockerflow.check(timeout=1.0)
        async def payments_api():
            ...

    or, with an application factory, ``dockerflow = Dockerflow()`` and later
    ``dockerflow.init_app(app)``. One instance can serve several apps.

    :param app: the app to set up now, or ``None`` to call :meth:`init_app` later.
    :param db: a Flask-SQLAlchemy ``SQLAlchemy``, SQLAlchemy ``Engine`` or ``AsyncEngine``; adds
        the ``check_database_connected`` check.
    :param redis: a ``redis.Redis``, ``redis.asyncio.Redis`` or Flask-Redis store; adds
        ``check_redis_connected``.
    :param migrate: a Flask-Migrate ``Migrate``; adds ``check_migrations_applied``.
    :param silenced_checks: message IDs to ignore in every heartbeat.
    :param version_path: directory holding ``version.json``; defaults to the parent directory
        of ``app.root_path``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: Any = None,
        redis: Any = None,
        migrate: Any = None,
        silenced_checks: Iterable[str] | None = None,
        version_path: str | os.PathLike[str] | None = None,
    ) -> None:
        #: Logger for the extension's own messages.
        self.logger = logging.getLogger("dockerflow.flask")
        #: Logger that receives one ``request.summary`` record per request.
        self.summary_logger = logging.getLogger("request.summary")
        self.silenced_checks = list(silenced_checks or ())
        self.version_path = os.fspath(version_path) if version_path is not None else None
        #: The checks this extension runs, besides those registered with
        #: :func:`dockerflow.checks.register`.
        self.registry = CheckRegistry()
        # One loop thread per extension, shared by the engines of all its apps.
        self._bridge = LoopThread()
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._version_callback: VersionCallback = get_version
        self._blueprint = self._make_blueprint()
        if db is not None or redis is not None or migrate is not None:
            from ..integrations import builtin_checks

            for name, func in builtin_checks(db=db, redis=redis, migrate=migrate):
                self.registry.add(Check(name, func))
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Set the extension up on ``app``: read and validate its ``DOCKERFLOW_*`` settings,
        register the views, request hooks and the ``flask dockerflow`` CLI group.

        :raises AlreadyInitializedError: if a Dockerflow extension is already set up on ``app``.
        :raises ConfigurationError: naming the key and value, if a setting is invalid.
        """
        if "dockerflow" in app.extensions:
            raise AlreadyInitializedError(
                f"a Dockerflow extension is already initialised on app {app.name!r}; "
                "call init_app() once per app"
            )
        settings = load_settings(app.config)
        engine = Engine(
            timeout=settings.check_timeout,
            silenced_ids=(*self.silenced_checks, *settings.silenced_checks),
            cache_ttl=settings.cache_ttl,
            cache_failed_ttl=settings.cache_failed_ttl,
            fail_level=settings.fail_level,
            bridge=self._bridge,
        )
        version_path = self.version_path or os.path.dirname(app.root_path)
        self._apps[app] = _AppState(settings, engine, version_path)
        app.register_blueprint(self._blueprint)
        state = self._apps[app]

        # Per-app hooks that know their app's state: no lookup of it on every request.
        def before_request() -> None:
            self._before_request(state)

        def after_request(response: flask.Response) -> flask.Response:
            return self._after_request(state, response)

        app.before_request(before_request)
        app.after_request(after_request)
        flask.got_request_exception.connect(self._got_request_exception, app)
        from ._cli import dockerflow_cli

        app.cli.add_command(dockerflow_cli)
        app.extensions["dockerflow"] = self

    def _make_blueprint(self) -> flask.Blueprint:
        # Routes are added once here; views find their app's state through current_app.
        bp = flask.Blueprint("dockerflow", __name__)
        bp.add_url_rule("/__version__", "version", self._version_view)
        bp.add_url_rule("/__heartbeat__", "heartbeat", self._heartbeat_view)
        bp.add_url_rule("/__lbheartbeat__", "lbheartbeat", self._lbheartbeat_view)
        bp.add_url_rule("/__error__", "error", self._error_view)
        return bp

    def _state(self, app: Flask | None = None) -> _AppState:
        if app is None:
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._apps[app]
        except KeyError:
            raise NotInitializedError(
                f"Dockerflow is not initialised on app {app.name!r}; call init_app(app) first"
            ) from None

    # -- registering checks ---------------------------------------------------------------------

    @overload
    def check(self, func: F, name: str | None = None, **options: Any) -> F: ...
    @overload
    def check(
        self, func: None = None, name: str | None = None, **options: Any
    ) -> Callable[[F], F]: ...
    def check(
        self, func: F | None = None, name: str | None = None, **options: Any
    ) -> F | Callable[[F], F]:
        """Register a check; use as ``@dockerflow.check`` or ``@dockerflow.check(name=, ...)``.

        :param func: a ``def`` or ``async def`` without arguments returning check messages.
        :param name: the check's key in the report; defaults to the function's ``__name__``.
        :param options: keyword options of :class:`~dockerflow.engine.Check`: ``timeout``
            (seconds; default ``DOCKERFLOW_CHECK_TIMEOUT``), ``interval`` and ``max_age``
            (background refresh), ``failure_threshold`` and ``failure_grace`` (flap damping).
        :returns: ``func`` itself.
        :raises CheckRegistrationError: if ``func`` is not callable or an option is invalid.
        :raises TypeError: if an option is unknown.
        """
        if func is None:
            return functools.partial(self.check, name=name, **options)
        self.registry.add(Check(name or callable_name(func), func, **options))
        return func

    def init_check(
        self, check: Callable[..., Any], obj: Any, *, name: str | None = None
    ) -> Callable[[], Any]:
        """Register ``check(obj)`` as a check (python-dockerflow's partial registration).

        :returns: the partial that was registered.
        """
        partial = functools.partial(check, obj)
        functools.update_wrapper(partial, check)
        self.check(partial, name=name)
        return partial

    @property
    def checks(self) -> dict[str, Callable[..., Any]]:
        """Every check this extension runs, by name (its own and the module-level ones)."""
        return {check.name: check.func for check in self._all_checks()}

    def version_callback(self, func: VersionCallback) -> VersionCallback:
        """Replace the ``version.json`` loader; ``func(version_path)`` returns a dict or ``None``.

        :returns: ``func`` itself.
        """
        self._version_callback = func
        return func

    def _all_checks(self) -> list[Check]:
        checks = list(self.registry)
        checks.extend(c for c in registered_checks() if c.name not in self.registry)
        return checks

    def call_in_loop(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the loop the async checks run on; return its result.

        For setting up or closing async clients that the checks use (``redis.asyncio``,
        asyncpg pools): they must be used on that loop only. Blocks the calling thread.
        """
        return self._bridge.call(func, *args)

    def close(self) -> None:
        """Close the connections the built-in checks opened and stop the loop thread.

        Call it when the app shuts down (tests, or a worker exit hook). The extension stays
        usable: the next heartbeat starts the loop again and reconnects.
        """
        checks = list(self.registry)
        if checks:
            from ..integrations import release

            for check in checks:
                self._bridge.call(release, check.func)
        self._bridge.stop()

    # -- running --------------------------------------------------------------------------------

    def run_checks(
        self,
        app: Flask | None = None,
        *,
        exclude: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> Report:
        """Run the checks of ``app`` (default: the current app) and send the heartbeat signals.

        :param exclude: names of checks to leave out.
        :param only: if given, the names of the only checks to run.
        :returns: the report.
        :raises UnknownCheckError: if ``only`` or ``exclude`` names a check that is not
            registered (the message lists them).
        :raises ValueError: if ``only`` and ``exclude`` leave no check to run.
        """
        if app is None:
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        assert app is not None
        return self._run(app, self._state(app), exclude, only)

    def _run(
        self, app: Flask, state: _AppState, exclude: Iterable[str], only: Iterable[str] | None
    ) -> Report:
        checks = self._all_checks()
        excluded = set(exclude)
        if only is not None or excluded:
            wanted = set(only) if only is not None else None
            known = {check.name for check in checks}
            unknown = ((wanted or set()) | excluded) - known
            if unknown:
                # A typo in a probe's ?check= or ?exclude= must not go unnoticed.
                raise UnknownCheckError(", ".join(sorted(unknown)))
            checks = [
                check
                for check in checks
                if (wanted is None or check.name in wanted) and check.name not in excluded
            ]
            if not checks:
                raise ValueError("the selection leaves no check to run")
        for check in checks:
            # Built-in checks bound their driver calls by the timeout they run under: the
            # check's own, else DOCKERFLOW_CHECK_TIMEOUT (the smallest, for several apps).
            follow_timeout(check.func, check.timeout or state.settings.check_timeout)
        report = state.engine.run_sync(checks)
        whole = only is None and not excluded
        self._send_signals(app, state, report, whole)
        return report

    def _send_signals(self, app: Flask, state: _AppState, report: Report, whole: bool) -> None:
        signal = heartbeat_failed if report.level >= state.settings.fail_level else heartbeat_passed
        signal.send(app, level=report.level, report=report)
        if not whole:  # a subset's status says nothing about the service's status
            return
        with state.status_lock:
            previous, state.last_status = state.last_status, report.status
        # A worker's first status is no change: there was none before it in this process.
        if previous is not None and previous != report.status:
            heartbeat_status_changed.send(
                app, level=report.level, report=report, previous_status=previous
            )

    # -- views ----------------------------------------------------------------------------------

    def _heartbeat_view(self) -> flask.Response:
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._state(app)
        args = flask.request.args
        # Repeated parameters are merged: ?check=a&check=b is ?check=a,b.
        only = _split_names(args.getlist(ONLY_PARAM)) if ONLY_PARAM in args else None
        if only == []:
            return _json_response({"error": f"?{ONLY_PARAM}= names no check"}, 400)
        try:
            report = self._run(app, state, _split_names(args.getlist(EXCLUDE_PARAM)), only)
        except UnknownCheckError as exc:
            return _json_response({"error": f"unknown check: {exc}"}, 400)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        settings = state.settings
        show = settings.details == "always" or (settings.details == "debug" and app.debug)
        failed = report.level >= settings.fail_level
        status = settings.failed_status_code if failed else 200
        return _json_response(report.as_dict(details=show), status)

    def _lbheartbeat_view(self) -> flask.Response:
        return _json_response({}, 200)

    def _version_view(self) -> flask.Response:
        state = self._state()
        try:
            version = self._version_callback(state.version_path)
            if version is None:
                return _json_response({"error": "version.json not found"}, 404)
            # Encoded here, inside the try: a callback may return what JSON cannot encode.
            return _json_response(version, 200)
        except Exception:
            self.logger.exception("version.json in %s could not be served", state.version_path)
            return _json_response({"error": "version.json could not be read"}, 500)

    def _error_view(self) -> flask.Response:
        if not self._state().settings.error_endpoint:
            flask.abort(404)
        self.logger.error("The /__error__ endpoint was called")
        raise RuntimeError("Test exception raised by the /__error__ endpoint")

    # -- request logging ------------------------------------------------------------------------
    # These hooks run on every request of the app: each resolves a context proxy at most once
    # and finds the app's state once, in _before_request, for the rest of the request.

    def _before_request(self, state: _AppState) -> None:
        g = flask.g._get_current_object()
        environ = flask.request.environ
        rid = sanitize_request_id(environ.get(state.settings.request_id_environ_key))
        if rid is None:
            rid = _new_request_id()
        g._dockerflow_rid_token = request_id_context.set(rid)
        g._request_id = rid
        if "request_id" not in g.__dict__:
            g.request_id = rid
        g._dockerflow = (time.monotonic_ns(), state)

    def _after_request(self, state: _AppState, response: flask.Response) -> flask.Response:
        g = flask.g._get_current_object()
        if "_dockerflow" not in g.__dict__:
            # A before_request hook that ran ahead of ours returned a response.
            return response
        settings = state.settings
        response.headers[settings.request_id_header] = g._request_id
        if (
            self.summary_logger.isEnabledFor(logging.INFO)
            and "_dockerflow_failed" not in g.__dict__
            and (settings.summary_log_dockerflow_endpoints or not _is_own_endpoint())
        ):
            extra = self.summary_extra()
            extra["code"] = response.status_code
            _log_fast(self.summary_logger, logging.INFO, "", extra)
        _forget_request_id(g)
        return response

    def _got_request_exception(self, sender: Flask, exception: BaseException, **_: Any) -> None:
        flask.g._dockerflow_failed = True
        if "_dockerflow" in flask.g and self.summary_logger.isEnabledFor(logging.ERROR):
            extra = self.summary_extra()
            extra["errno"] = 500
            extra["code"] = 500
            self.summary_logger.error(str(exception), extra=extra)
        # The request id is forgotten later, in _after_request: Flask logs the exception
        # after this signal, and that record should carry it too.

    def summary_extra(self) -> dict[str, Any]:
        """Return the fields of the current request's ``request.summary`` record.

        Override to add fields. ``code`` is added by the caller.

        :returns: ``errno``, ``agent``, ``lang``, ``method``, ``path``, ``uid``, ``rid``, ``t``
            and, with ``DOCKERFLOW_SUMMARY_LOG_QUERYSTRING``, ``querystring``.
        """
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        environ = request.environ
        started, state = flask.g._dockerflow
        out: dict[str, Any] = {
            "errno": 0,
            "agent": environ.get("HTTP_USER_AGENT", ""),
            "lang": environ.get("HTTP_ACCEPT_LANGUAGE", ""),
            "method": request.method,
            "path": request.path,
            "uid": self.user_id() or "",
            "rid": request_id_context.get(),
            "t": (time.monotonic_ns() - started) // 1_000_000,
        }
        if state.settings.summary_log_querystring:
            out["querystring"] = request.query_string.decode("utf-8", "backslashreplace")
        return out

    def user_id(self) -> str | None:
        """Return the id of the Flask-Login user of this request, or ``None``.

        ``None`` when Flask-Login is not installed or not set up, the user is anonymous, or
        loading the user fails (that error is logged at DEBUG, never raised).
        """
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if getattr(app, "login_manager", None) is None:
            return None
        try:
            from flask_login import current_user

            authenticated = current_user.is_authenticated
            if callable(authenticated):
                authenticated = authenticated()
            if not authenticated:
                return None
            user_id = current_user.get_id()
        except Exception:
            self.logger.debug("could not load the user id for request.summary", exc_info=True)
            return None
        return None if user_id is None else str(user_id)


def _log_fast(logger: logging.Logger, level: int, msg: str, extra: dict[str, Any]) -> None:
    """Log like ``logger.log(level, msg, extra=extra)``, without looking up the caller's frame.

    The record's ``pathname``, ``lineno`` and ``funcName`` stay empty; the mozlog formatter
    does not show them. Filters, handlers and ``logger.disabled`` apply as usual.
    """
    if not isinstance(logger, logging.Logger):  # e.g. a LoggerAdapter set by a subclass
        logger.log(level, msg, extra=extra)
        return
    logger.handle(logger.makeRecord(logger.name, level, "", 0, msg, (), None, None, extra))


def _forget_request_id(g: Any) -> None:
    # Worker threads serve many requests: do not leave this request's id behind for log lines
    # written between requests. (With PROPAGATE_EXCEPTIONS, a failed request skips the
    # after_request hooks; the next request's id then replaces it.)
    token = g.__dict__.pop("_dockerflow_rid_token", None)
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context (an async view's)
            request_id_context.reset(token)


def _new_request_id() -> str:
    """Return a random (version 4) UUID string; a quicker ``str(uuid.uuid4())``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _split_names(values: Iterable[str]) -> list[str]:
    """Return the names in comma-separated ``values``, blanks dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _is_own_endpoint() -> bool:
    endpoint = flask.request.endpoint
    return endpoint is not None and endpoint.startswith("dockerflow.")


def _json_response(body: Any, status: int) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


__all__ = ["Dockerflow"]
