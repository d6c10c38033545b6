"""The Flask extension: registers the Dockerflow views, request logging and the CLI."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import flask
from flask import Flask

from .._errors import (
    AlreadyInitializedError,
    MissingDependencyError,
    NotInitializedError,
    UnknownGroupError,
)
from ..checks.registry import checks_for, owned_checks, register_owned
from ..engine import (
    Check,
    CheckRegistry,
    CheckResult,
    ConfigurationError,
    Engine,
    History,
    LoopThread,
    Report,
    StartupGrace,
    UnknownCheckError,
    after_fork_in_child,
    aggregate,
    callable_name,
)
from ..health import ERROR, ERROR_DRAINING, CheckMessage, level_to_text
from ..health_json import MEDIA_TYPE as HEALTH_JSON
from ..health_json import health_json
from ..integrations import UnboundMigrationsCheck, follow_timeout
from ..logging import request_id_context, sanitize_request_id
from ..metrics import HeartbeatMetrics
from ..version import get_version
from ._bodies import PassingBodies
from ._cli import CliExtension, dockerflow_cli
from ._config import SUMMARY_DEBUG, Settings, load_settings
from ._drain import Drain
from ._health_json import ReportTimes, health_json_response, wants_media_type
from ._live import HeartbeatSettings, LiveSettings, RequestSettings
from ._page import asset_response, history_body, icon_response, page_response, wants_html
from ._query import BadQueryError, echo_names, read_selection
from ._records import call_site, log_record
from ._request_ids import RequestIds
from .signals import (
    heartbeat_checked,
    heartbeat_failed,
    heartbeat_passed,
    heartbeat_status_changed,
)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
VersionCallback = Callable[[str], "dict[str, Any] | None"]

#: Unknown names in ``?exclude=`` logged once per process, at most (the rest are not logged).
MAX_LOGGED_EXCLUDES = 100
#: Selections of checks (see Dockerflow._run) kept per app before they are worked out again.
MAX_SELECTIONS = 64
#: What a heartbeat selects: its group, ``?check=`` and ``?exclude=``.
_SelectionKey = tuple["str | None", "tuple[str, ...] | None", "tuple[str, ...]"]
#: HTTP status of ``/__heartbeat__`` while the process drains.
DRAINING_STATUS_CODE = 503
#: The last segment of ``/__heartbeat__/history``, the recent results (when no group has it).
HISTORY_PATH = "history"
#: The name the drain is reported under in ``/__heartbeat__``, in place of the checks.
DRAINING_CHECK = "draining"


@dataclass
class _AppState:
    """What the extension keeps per application."""

    #: The settings as parsed in init_app; the engine's are used from here.
    settings: Settings
    #: The settings read again on use (see dockerflow.flask._live).
    live: LiveSettings
    engine: Engine
    #: The version.json directory of this app when the extension was given none.
    version_path: str
    status_lock: threading.Lock = field(default_factory=threading.Lock)
    #: The level of the app's last whole heartbeat (its status is that level's), under
    #: status_lock; ``None`` before the first.
    last_level: int | None = None
    #: Whether DOCKERFLOW_NONCRITICAL_CHECKS was compared with the registered checks yet.
    noncritical_checked: bool = False
    #: The checks already told the timeout they run under in this app (weakly: a check that
    #: is replaced goes away).
    followed: weakref.WeakSet[Check] = field(default_factory=weakref.WeakSet)
    #: When each recent report was made, for health+json's "time".
    report_times: ReportTimes = field(default_factory=ReportTimes)
    #: DOCKERFLOW_STARTUP_GRACE_SECONDS, counted from init_app.
    startup: StartupGrace = field(default_factory=lambda: StartupGrace(0.0))
    #: The recent results of each check in this process, for the status page.
    history: History = field(default_factory=History)
    #: Unknown names of ?exclude= already logged in this process.
    ignored_excludes: set[str] = field(default_factory=set)
    #: The encoded responses of passing reports (see dockerflow.flask._bodies).
    passing_bodies: PassingBodies = field(default_factory=PassingBodies)
    #: The checks registered when the selections were worked out, and (group, ?check=,
    #: ?exclude=) -> the checks a heartbeat of that selection runs (see Dockerflow._run).
    selections: tuple[tuple[Check, ...], dict[_SelectionKey, tuple[Check, ...]]] = field(
        default_factory=lambda: ((), {})
    )
    #: What the engine's silenced IDs were last made from: the extension's silenced_checks
    #: (a copy), DOCKERFLOW_SILENCED_CHECKS as parsed, and the set given to the engine. Made
    #: again when either source changes, or someone else gave the engine another set.
    silenced_from: tuple[list[str], tuple[str, ...], frozenset[str]] | None = None

    def __post_init__(self) -> None:
        # A thread of the parent may hold the lock at fork time: the child gets a new one.
        after_fork_in_child(self, _AppState._new_lock)

    def _new_lock(self) -> None:
        self.status_lock = threading.Lock()


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
    :param migrate: a Flask-Migrate ``Migrate``; adds ``check_migrations_applied``. A
        ``Migrate()`` whose database is given later (``migrate.init_app(app, db)`` in an
        application factory) is bound to it in :meth:`init_app`, or at the check's first run.
    :param silenced_checks: message IDs to ignore in every heartbeat.
    :param version_path: directory holding ``version.json``; defaults to the parent directory
        of ``app.root_path``.
    :param metrics: record Prometheus metrics of every heartbeat: ``True`` for a new
        :class:`~dockerflow.metrics.HeartbeatMetrics` in ``prometheus_client.REGISTRY``, or a
        :class:`~dockerflow.metrics.HeartbeatMetrics` of your own (another registry, or one
        shared by several extensions). Needs the ``prometheus`` extra.
    :raises MissingDependencyError: if the driver of ``db``, ``redis`` or ``migrate`` cannot be
        imported, or ``metrics`` is given and ``prometheus_client`` is not installed; the
        message names the argument, the module and the extra to install.
    :raises TypeError: naming the argument, if ``db``, ``redis`` or ``migrate`` is of a type no
        check takes.
    :raises ConfigurationError: if ``metrics=True`` and the default registry already holds
        Dockerflow's metrics.
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
        metrics: bool | HeartbeatMetrics = False,
    ) -> None:
        #: Logger for the extension's own messages.
        self.logger = logging.getLogger("dockerflow.flask")
        #: Logger that receives one ``request.summary`` record per request.
        self.summary_logger = logging.getLogger("request.summary")
        #: Message IDs to ignore in every heartbeat. A list: IDs appended later are honoured
        #: from the next heartbeat on.
        self.silenced_checks = list(silenced_checks or ())
        self._version_path = os.fspath(version_path) if version_path is not None else None
        self._last_version_path: str | None = None
        #: The checks this extension runs, besides those in :func:`dockerflow.checks.get_checks`.
        self.registry = CheckRegistry()
        # One loop thread per extension, shared by the engines of all its apps.
        self._bridge = LoopThread()
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._last_state: tuple[weakref.ref[Flask], weakref.ref[_AppState]] | None = None
        self._version_callback: VersionCallback = get_version
        self._request_ids = RequestIds()
        self._blueprint = self._make_blueprint()
        # Draining: on SIGTERM or start_draining(), for every app of the extension.
        self._drain = Drain()
        #: The Prometheus metrics every heartbeat is recorded in, or ``None``.
        self.metrics: HeartbeatMetrics | None = None
        if isinstance(metrics, HeartbeatMetrics):
            self.metrics = metrics
        elif metrics is True:
            try:
                self.metrics = HeartbeatMetrics()
            except MissingDependencyError as exc:
                raise MissingDependencyError.from_import_error(
                    exc, exc.package, exc.extra, "Dockerflow(metrics=True)"
                ) from exc
        elif metrics is not False:
            raise TypeError(
                f"metrics must be True, False or a HeartbeatMetrics, not {type(metrics).__name__}"
            )
        if db is not None or redis is not None or migrate is not None:
            from ..integrations import builtin_checks

            # Listed in dockerflow.checks.get_checks() as in python-dockerflow, where code
            # looks for them and may remove them; run by this extension only.
            for name, func in builtin_checks(db=db, redis=redis, migrate=migrate):
                register_owned(self, Check(name, func))
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Set the extension up on ``app``: read and validate its ``DOCKERFLOW_*`` settings,
        register the views, request hooks and the ``flask dockerflow`` CLI group.

        Calling it again with the same app does nothing (logged at DEBUG): services call
        ``Dockerflow(app)`` and then ``init_app(app)`` in their app factory.

        :param app: the Flask application.
        :raises AlreadyInitializedError: if a different Dockerflow extension is already set up
            on ``app`` (also an :class:`AssertionError`, as code written for python-dockerflow
            expects).
        :raises ConfigurationError: naming the key and value, if a setting is invalid.
        """
        current = app.extensions.get("dockerflow")
        if current is self:
            self.logger.debug("Dockerflow is already initialised on app %r: skipped", app.name)
            return
        if current is not None:
            raise AlreadyInitializedError(
                f"another Dockerflow extension is already initialised on app {app.name!r}; "
                "use that one, or one extension per app"
            )
        settings = load_settings(app.config)
        if settings.metrics_endpoint and self.metrics is None:
            raise ConfigurationError(
                "DOCKERFLOW_METRICS_ENDPOINT is on but metrics are off: pass "
                "Dockerflow(app, metrics=True) to record them"
            )
        self._check_group_settings(settings)
        engine = Engine(
            timeout=settings.check_timeout,
            restart_after=settings.check_restart_after,
            silenced_ids=(*self.silenced_checks, *settings.silenced_checks),
            noncritical=settings.noncritical_checks,
            cache_ttl=settings.cache_ttl,
            cache_failed_ttl=settings.cache_failed_ttl,
            fail_level=settings.fail_level,
            bridge=self._bridge,
            # Each run of a check gets a fresh app context of its own, pushed where it runs.
            context=app.app_context,
        )
        version_path = os.path.dirname(app.root_path)
        self._last_version_path = version_path
        state = _AppState(
            settings,
            LiveSettings(app.config, settings),
            engine,
            version_path,
            startup=StartupGrace(settings.startup_grace_seconds),
        )
        self._apps[app] = state
        self._last_state = None  # it may be of this app, set up again
        app.register_blueprint(self._blueprint)
        self._bind_migrations()

        # Per-app hooks that know their app and its state: no lookup of either per request.
        def before_request() -> None:
            self._before_request(state)

        def after_request(response: flask.Response) -> flask.Response:
            return self._after_request(app, state, response)

        # First of the app's before_request hooks, even of those registered earlier: a hook
        # that answers the request itself (a rate limiter's 429, a CSRF 400, a maintenance
        # page) leaves it with a request id and a start time for its request.summary line.
        app.before_request_funcs.setdefault(None, []).insert(0, before_request)
        app.after_request(after_request)
        flask.got_request_exception.connect(self._got_request_exception, app)
        app.cli.add_command(dockerflow_cli)
        app.extensions["dockerflow"] = self
        if settings.drain_seconds > 0:
            self._drain.configure(settings.drain_seconds)

    def _check_group_settings(self, settings: Settings) -> None:
        # A probe of a group must not find out at its first run that the group names a check
        # that is not there: checks named by the setting must be registered by now.
        known = {check.name for check in self._all_checks()}
        for group, names in settings.groups:
            unknown = [name for name in names if name not in known]
            if unknown:
                raise ConfigurationError(
                    f"DOCKERFLOW_HEARTBEAT_GROUPS: group {group!r} names "
                    f"{', '.join(repr(name) for name in unknown)}, not a registered check "
                    f"(registered: {', '.join(sorted(known)) or 'none'}). Register checks "
                    "before init_app, or give the group where the check is registered: "
                    "@dockerflow.check(groups=[...])"
                )

    def groups(self, app: Flask | None = None) -> dict[str, list[str]]:
        """Return the heartbeat groups of ``app`` (default: the current app) and their checks.

        A group is made by ``groups=`` of the checks registered (:meth:`check`,
        :func:`dockerflow.checks.register`) and by :confval:`DOCKERFLOW_HEARTBEAT_GROUPS`.

        :returns: group name → names of its checks, in registration order (a group the setting
            declares empty has none); groups in alphabetical order.
        :raises NotInitializedError: if the extension is not set up on ``app``.
        """
        if app is None:
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        assert app is not None
        checks = self._all_checks()
        members = _group_members(self._state(app), checks)
        return {
            group: [check.name for check in checks if check.name in members[group]]
            for group in sorted(members)
        }

    def _bind_migrations(self) -> None:
        # A Migrate() of an app factory gets its database from migrate.init_app(app, db),
        # usually called before this init_app; if not, the check's first run binds it.
        for check in owned_checks(self):
            if isinstance(check.func, UnboundMigrationsCheck):
                try:
                    check.func.bind()
                except TypeError as exc:
                    raise TypeError(f"Dockerflow(migrate=...): {exc}") from exc

    def _make_blueprint(self) -> flask.Blueprint:
        # Routes are added once here; views find their app's state through current_app.
        bp = flask.Blueprint("dockerflow", __name__)
        bp.add_url_rule("/__version__", "version", self._version_view)
        bp.add_url_rule("/__heartbeat__", "heartbeat", self._heartbeat_view)
        bp.add_url_rule("/__heartbeat__/<group>", "heartbeat_group", self._heartbeat_view)
        bp.add_url_rule("/__lbheartbeat__", "lbheartbeat", self._lbheartbeat_view)
        bp.add_url_rule("/__error__", "error", self._error_view)
        bp.add_url_rule("/__metrics__", "metrics", self._metrics_view)
        bp.add_url_rule("/__heartbeat__/assets/<name>", "heartbeat_asset", self._page_asset_view)
        bp.add_url_rule("/__heartbeat__/icon/<status>.svg", "heartbeat_icon", self._page_icon_view)
        return bp

    @property
    def version_path(self) -> str | None:
        """The directory ``version.json`` is read from.

        The path given to the constructor (or assigned here), else the current app's default,
        the parent directory of its ``root_path`` (outside an app context: that of the app set
        up last); ``None`` before any app is set up. Assigning a path makes every app of the
        extension use it from the next request on.
        """
        if self._version_path is not None:
            return self._version_path
        if flask.has_app_context():
            state = self._apps.get(flask.current_app._get_current_object())  # type: ignore[attr-defined]
            if state is not None:
                return state.version_path
        return self._last_version_path

    @version_path.setter
    def version_path(self, value: str | os.PathLike[str] | None) -> None:
        self._version_path = os.fspath(value) if value is not None else None

    def _state(self, app: Flask | None = None) -> _AppState:
        if app is None:
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        # The app asked for last and its state, both held weakly: most processes serve one
        # app, found without making a weak reference to look it up by.
        last = self._last_state
        if last is not None:
            state = last[1]()
            if state is not None and last[0]() is app:
                return state
        assert app is not None
        try:
            state = self._apps[app]
        except KeyError:
            raise NotInitializedError(
                f"Dockerflow is not initialised on app {app.name!r}; call init_app(app) first"
            ) from None
        # One tuple, replaced whole, for every thread.
        self._last_state = (weakref.ref(app), weakref.ref(state))
        return state

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
            (background refresh), ``failure_threshold`` and ``failure_delay`` (flap damping),
            ``restart_after`` (seconds before a stuck run is started again; default
            ``DOCKERFLOW_CHECK_RESTART_AFTER``).
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
        """Every check this extension runs, by name: a new dict, built on each access.

        Its own checks, then those of :func:`dockerflow.checks.get_checks` it runs. To remove
        a check, edit ``get_checks()`` (module-level and built-in checks) or
        :attr:`registry` (checks registered with :meth:`check`).
        """
        return {check.name: check.func for check in self._all_checks()}

    def version_callback(self, func: VersionCallback) -> VersionCallback:
        """Replace the ``version.json`` loader; ``func(version_path)`` returns a dict or ``None``.

        :returns: ``func`` itself.
        """
        self._version_callback = func
        return func

    def _all_checks(self) -> tuple[Check, ...]:
        registry = self.registry
        module_checks = checks_for(self)
        if not module_checks:
            return tuple(registry)
        return (*registry, *(c for c in module_checks if c.name not in registry))

    def call_in_loop(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the loop the async checks run on; return its result.

        For setting up or closing async clients that the checks use (``redis.asyncio``,
        asyncpg pools): they must be used on that loop only. Blocks the calling thread.
        """
        return self._bridge.call(func, *args)

    def close(self, timeout: float = 5.0) -> None:
        """Stop retrying failing checks in the background, close the connections the built-in
        checks opened and stop the loop thread.

        Call it when the app shuts down (tests, or a worker exit hook). The extension stays
        usable: the next heartbeat starts the loop again and reconnects.

        :param timeout: seconds it may take at most. A check that blocks the loop (or a
            connection that does not close) is left behind when they are up, with a warning:
            a worker's exit hook must not hang on it.
        """
        deadline = time.monotonic() + timeout
        for state in list(self._apps.values()):
            state.engine.close()  # no more background retries; the loop is ours to stop
        checks = [*self.registry, *owned_checks(self)]
        if checks:
            from ..integrations import release

            for check in checks:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    self._bridge.call(release, check.func, timeout=left)
                except TimeoutError:
                    self.logger.warning(
                        "Dockerflow.close(): connections of check %r not closed within %gs; "
                        "left behind",
                        check.name,
                        timeout,
                    )
                    break
        self._bridge.stop(timeout=max(0.0, deadline - time.monotonic()))

    # -- draining -------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether the process drains: SIGTERM came (see :meth:`drain_on_sigterm`) or
        :meth:`start_draining` was called. It never stops draining."""
        return self._drain.active

    def start_draining(self) -> None:
        """Start draining now, in every app of this extension.

        ``/__heartbeat__`` answers ``503`` from then on, at once and without running the
        checks, with the message ``dockerflow.health.E015`` under the name ``draining``, so
        that load balancers and readiness probes send new requests elsewhere; every other
        route, ``/__lbheartbeat__`` included, is served as before. For servers whose SIGTERM
        the extension does not see (uWSGI), call it from the server's own shutdown hook.
        Calling it again does nothing; a drain cannot be undone.
        """
        self._drain.start("start_draining() was called")

    def drain_on_sigterm(self, seconds: float | None = None) -> None:
        """Make SIGTERM start draining, and reach the handler it had only ``seconds`` later.

        The server keeps serving during the drain (new connections too, except on a Unix
        socket whose path gunicorn's arbiter removes: see the probes guide), then its own
        handler gets the signal and stops it as usual: gunicorn finishes the requests in
        progress within its ``graceful_timeout``, which must therefore exceed the drain plus
        the longest request. A repeated SIGTERM during the drain changes nothing (a process
        group signalled by dumb-init or ``tini -g`` gets two); SIGINT and SIGQUIT still stop
        at once. The handler in place is always called afterwards, never dropped: a server's
        handler is called, ``SIG_DFL`` is restored and the signal raised again (the process
        ends as it would have), ``SIG_IGN`` stays ignored. SIGTERM restarts the system calls
        it interrupts, as gunicorn sets it to. Works with threads and with gevent.

        :meth:`init_app` does this by itself when :confval:`DOCKERFLOW_DRAIN_SECONDS` is set
        and a server's handler written in Python is in place, as in gunicorn's workers that
        load the app themselves. Call it yourself, from the main thread (or, under gevent, any
        greenlet), once the server has installed its handler where that is not so: in
        gunicorn's ``post_worker_init`` hook with ``--preload``, or with a server that leaves
        SIGTERM to its default action. Calling it again adds nothing.

        :param seconds: how long the drain lasts; by default the largest
            :confval:`DOCKERFLOW_DRAIN_SECONDS` of the apps set up.
        :raises ConfigurationError: if ``seconds`` is not a positive number of seconds, or
            is not given and no app sets :confval:`DOCKERFLOW_DRAIN_SECONDS`.
        :raises DrainError: if called outside the main thread, under eventlet, or if SIGTERM's
            handler was installed by C code (uWSGI's), which could not be called afterwards.
        """
        self._drain.on_sigterm(seconds)

    def _drain_report(self, state: _AppState) -> Report:
        message = CheckMessage(
            self._drain.message(),
            # Failing whatever the fail level, as the 503 says (and health+json's "fail").
            level=max(ERROR, state.settings.fail_level),
            id=ERROR_DRAINING,
        )
        return aggregate([CheckResult(DRAINING_CHECK, (message,))])

    # -- running --------------------------------------------------------------------------------

    def run_checks(
        self,
        app: Flask | None = None,
        *,
        exclude: Iterable[str] = (),
        only: Iterable[str] | None = None,
        group: str | None = None,
    ) -> Report:
        """Run the checks of ``app`` (default: the current app), send the heartbeat signals
        and record the metrics.

        :param exclude: names of checks to leave out; a name that is not registered is ignored
            (logged once per process), so that a release that renames or removes a check does
            not fail a probe that leaves it out.
        :param only: if given, the names of the only checks to run.
        :param group: if given, run only the checks of this group (see :meth:`groups`);
            ``only`` and ``exclude`` then choose among them.
        :returns: the report.
        :raises UnknownCheckError: if ``only`` names a check that is not registered (the
            message lists those that are).
        :raises UnknownGroupError: if ``group`` is no group of the app.
        :raises ValueError: if ``only`` and ``exclude`` leave no check to run.
        """
        if app is None:
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        assert app is not None
        return self._run(app, self._state(app), exclude, only, group=group)

    def _run(
        self,
        app: Flask,
        state: _AppState,
        exclude: Iterable[str],
        only: Iterable[str] | None,
        *,
        grace: bool = False,
        group: str | None = None,
        record_metrics: bool = True,
        settings: HeartbeatSettings | None = None,
        shown: bool | None = None,
    ) -> Report:
        """Run a heartbeat's checks, record them and send the signals (see :meth:`run_checks`).

        :param settings: the heartbeat's settings, if the caller has read them already.
        :param shown: whether the heartbeat shows its details, if the caller knows already.
        """
        if settings is None:
            settings = state.live.for_heartbeat()
        if shown is None:
            shown = settings.details_shown(app)
        every_check = self._all_checks()
        if not state.noncritical_checked:
            state.noncritical_checked = True
            self._warn_unknown_noncritical(state, every_check)
        excluded = tuple(exclude)
        wanted = None if only is None else tuple(only)
        registered, selections = state.selections
        if registered != every_check:
            # Checks were registered or removed: what was worked out for the old ones goes
            # (and holds none of them). One tuple, replaced whole, for every thread.
            selections = {}
            state.selections = (every_check, selections)
        key = (group, wanted, excluded)
        checks = selections.get(key)
        if checks is None:
            checks = self._select(state, every_check, group, wanted, excluded)
            if len(selections) >= MAX_SELECTIONS:
                selections.clear()  # many distinct queries: start again rather than grow
            selections[key] = checks
        self._follow_silenced(state, settings)
        report = state.engine.run_sync(checks)
        if grace and not state.startup.over:
            names = [check.name for check in every_check]
            report = state.startup.apply(report, state.settings.fail_level, names)
        if shown and settings.heartbeat_page:
            state.history.record(report)
        whole = wanted is None and not excluded and group is None
        self._send_signals(app, state, report, whole)
        if record_metrics and self.metrics is not None:
            try:
                self._record_metrics(state, report, group)
            except Exception:
                self.logger.exception(
                    "The heartbeat's metrics could not be recorded; the heartbeat is not affected"
                )
        return report

    def _follow_silenced(self, state: _AppState, settings: HeartbeatSettings) -> None:
        # IDs added to silenced_checks or DOCKERFLOW_SILENCED_CHECKS after init_app. The set
        # is made again only when one of them (or the engine's own set) is not what it was.
        own = self.silenced_checks
        from_config = settings.silenced_checks
        engine = state.engine
        last = state.silenced_from
        if (
            last is not None
            and last[1] is from_config
            and last[2] is engine.silenced_ids
            and last[0] == own
        ):
            return
        silenced = frozenset((*own, *from_config))
        if silenced != engine.silenced_ids:
            engine.silenced_ids = silenced
        # One tuple, replaced whole, for every thread.
        state.silenced_from = (list(own), from_config, engine.silenced_ids)

    def _select(
        self,
        state: _AppState,
        every_check: tuple[Check, ...],
        group: str | None,
        only: tuple[str, ...] | None,
        exclude: tuple[str, ...],
    ) -> tuple[Check, ...]:
        """Return the checks a heartbeat of ``group`` with ``?check=only&exclude=exclude``
        runs, and tell each the timeout it runs under. Worked out once per registered checks
        and query (see :meth:`_run`), not per heartbeat.

        :raises UnknownGroupError: if ``group`` is no group of the app.
        :raises UnknownCheckError: if ``only`` names a check that is not registered.
        :raises ValueError: if ``only`` and ``exclude`` leave no check.
        """
        checks = every_check
        if group is not None:
            members = _group_members(state, every_check).get(group)
            if members is None:
                raise UnknownGroupError(group)
            checks = tuple(check for check in checks if check.name in members)
        if only is not None or exclude:
            wanted = set(only) if only is not None else None
            excluded = set(exclude)
            known = {check.name for check in every_check}
            unknown = (wanted or set()) - known
            if unknown:
                # A typo in a probe's ?check= must not go unnoticed.
                raise UnknownCheckError(
                    f"{echo_names(unknown)} (the checks are: {', '.join(sorted(known)) or 'none'})"
                )
            self._log_unknown_excludes(state, excluded - known)
            checks = tuple(
                check
                for check in checks
                if (wanted is None or check.name in wanted) and check.name not in excluded
            )
            if not checks:
                raise ValueError("the selection leaves no check to run")
        for check in checks:
            if check not in state.followed:
                # Built-in checks bound their driver calls by the timeout they run under: the
                # check's own, else DOCKERFLOW_CHECK_TIMEOUT (the smallest, for several apps).
                # Once per check object and app: a check registered again is a new object.
                follow_timeout(check.func, check.timeout or state.settings.check_timeout)
                state.followed.add(check)
        return checks

    def _log_unknown_excludes(self, state: _AppState, unknown: set[str]) -> None:
        # A release may rename or drop a check that a probe leaves out: the probe goes on
        # passing, and whoever reads the logs learns the name is stale.
        fresh = sorted(unknown - state.ignored_excludes)
        room = MAX_LOGGED_EXCLUDES - len(state.ignored_excludes)
        for name in fresh[: max(room, 0)]:
            state.ignored_excludes.add(name)
            self.logger.warning(
                "?exclude= names %r, which is not a registered check: ignored (logged once "
                "per process)",
                echo_names([name]),
            )

    def _warn_unknown_noncritical(self, state: _AppState, checks: Iterable[Check]) -> None:
        # Checks are often registered after init_app, so the names are compared at the first
        # heartbeat: a typo would leave a non-essential check able to fail every heartbeat.
        unknown = set(state.engine.noncritical) - {check.name for check in checks}
        if unknown:
            self.logger.warning(
                "DOCKERFLOW_NONCRITICAL_CHECKS names no registered check: %s",
                ", ".join(sorted(unknown)),
            )

    def _send_signals(self, app: Flask, state: _AppState, report: Report, whole: bool) -> None:
        level = report.level
        failed = level >= state.settings.fail_level
        # python-dockerflow's two signals take exactly its keyword arguments, so receivers
        # written for it (``def count(sender, level)``) keep working; the report goes out on
        # heartbeat_checked and heartbeat_status_changed. Nobody listens, the usual case:
        # nothing is sent (blinker keeps no other state).
        outcome = heartbeat_failed if failed else heartbeat_passed
        if outcome.receivers:
            self._send(outcome, app, level=level)
        if heartbeat_checked.receivers:
            self._send(heartbeat_checked, app, level=level, report=report, passed=not failed)
        if not whole:  # a subset's status says nothing about the service's status
            return
        if state.last_level == level:
            # The same level is the same status: swapping it would change nothing, no lock.
            return
        with state.status_lock:
            previous, state.last_level = state.last_level, level
        # A worker's first status is no change: there was none before it in this process.
        if previous is not None and level_to_text(previous) != report.status:
            self._send(
                heartbeat_status_changed,
                app,
                level=level,
                report=report,
                previous_status=level_to_text(previous),
            )

    def _record_metrics(self, state: _AppState, report: Report, group: str | None) -> None:
        assert self.metrics is not None
        stuck = state.engine.stuck_runs()
        if stuck:
            # Only a stuck run of a sync check holds a thread; an async one holds a task.
            sync = {check.name for check in self._all_checks() if not check.is_async}
            stuck = {name: runs for name, runs in stuck.items() if name in sync}
        self.metrics.observe(report, stuck, group=group)

    def _send(self, signal: Any, sender: Flask, **kwargs: Any) -> None:
        # Nobody listens, the usual case: nothing to send (blinker keeps no other state).
        if not signal.receivers:
            return
        # Each receiver called on its own: one that raises is logged, the others still run
        # and the heartbeat's response stays what the checks made it.
        for receiver in list(signal.receivers_for(sender)):
            try:
                receiver(sender, **kwargs)
            except Exception:
                self.logger.exception(
                    "A receiver of the %s signal raised; the heartbeat is not affected",
                    signal.name,
                )

    # -- the flask dockerflow commands (see _cli.CliExtension) ----------------------------------

    def _cli_heartbeat(
        self,
        *,
        exclude: Iterable[str],
        only: Iterable[str] | None,
        health_json: bool,
        group: str | None = None,
        record_metrics: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Run a heartbeat of the current app; return its body, details shown, and whether
        it failed. Metrics are recorded only when ``record_metrics`` is true.
        """
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._state(app)
        report = self._run(app, state, exclude, only, group=group, record_metrics=record_metrics)
        failed = report.level >= state.settings.fail_level
        return self._body(state, report, health_json, True, group), failed

    def _cli_version(self) -> tuple[str, dict[str, Any] | None]:
        """Return the directory ``version.json`` is read from and what the loader made of it.

        :raises VersionFileError: if the file cannot be served.
        """
        directory = self._version_path or self._state().version_path
        return directory, self._version_callback(directory)

    # -- views ----------------------------------------------------------------------------------

    def _heartbeat_view(self, group: str | None = None) -> flask.Response:
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._state(app)
        if group == HISTORY_PATH and group not in _group_members(state, self._all_checks()):
            # /__heartbeat__/history is the recent results, unless the app has a group of that
            # name: a probe's URL is the contract that must not change under it.
            return self._history_view()
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        # Read once per heartbeat, at its start: the run and the response agree on them.
        settings = state.live.for_heartbeat()
        shown = settings.details_shown(app)
        drain = self._drain
        drain.check()
        if drain.active:
            report = self._drain_report(state)
            return self._heartbeat_response(
                app, state, request, settings, shown, report, DRAINING_STATUS_CODE
            )
        try:
            selection = read_selection(request)
            report = self._run(
                app,
                state,
                selection.exclude,
                selection.only,
                grace=True,
                group=group,
                settings=settings,
                shown=shown,
            )
        except BadQueryError as exc:
            return _json_response({"error": str(exc)}, 400)
        except UnknownGroupError:
            # The group's name is not echoed: the known ones are listed instead.
            known = sorted(_group_members(state, self._all_checks()))
            return _json_response({"error": "unknown heartbeat group", "groups": known}, 404)
        except UnknownCheckError as exc:
            return _json_response({"error": f"unknown check: {exc}"}, 400)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        failed = report.level >= state.settings.fail_level
        status = settings.failed_status_code if failed else 200
        return self._heartbeat_response(app, state, request, settings, shown, report, status, group)

    def _heartbeat_response(
        self,
        app: Flask,
        state: _AppState,
        request: flask.Request,
        settings: HeartbeatSettings,
        show: bool,
        report: Report,
        status: int,
        group: str | None = None,
    ) -> flask.Response:
        accept = request.environ.get("HTTP_ACCEPT")
        if (
            show
            and accept
            and "html" in accept.lower()  # the usual */* and JSON never parse the header
            and settings.heartbeat_page
            and wants_html(request.accept_mimetypes)
        ):
            response = self._page(app, state, report, status)
            response.vary.add("Accept")
        elif wants_media_type(accept, HEALTH_JSON):
            response = health_json_response(self._body(state, report, True, show, group), status)
            response.vary.add("Accept")
        else:
            response = self._json_heartbeat(app, state, report, status, show)
        return response

    def _json_heartbeat(
        self, app: Flask, state: _AppState, report: Report, status: int, show: bool
    ) -> flask.Response:
        """The Dockerflow JSON response of ``report``; that of a passing report is made from
        the body and headers kept from the first one (see :mod:`._bodies`)."""
        key = state.passing_bodies.key(app, report.level, tuple(report.results))
        if key is not None:
            response = state.passing_bodies.response(app, key, status)
            if response is not None:
                if state.engine.cache.enabled:
                    # The report may be served again, as health+json too: remember its time.
                    state.report_times.time_of(report, remember=True)
                return response
        response = _json_response(self._body(state, report, False, show), status)
        response.vary.add("Accept")
        if key is not None:
            state.passing_bodies.keep(key, response)
        return response

    def _page_on(self, app: Flask, state: _AppState) -> bool:
        """Whether the status page is served: it is on, and the details are shown."""
        settings = state.live.for_heartbeat()
        return settings.heartbeat_page and settings.details_shown(app)

    def _page(self, app: Flask, state: _AppState, report: Report, status: int) -> flask.Response:
        made_at = state.report_times.time_of(report, remember=state.engine.cache.enabled)
        return page_response(
            report,
            status=status,
            checks=self._all_checks(),
            default_timeout=state.settings.check_timeout,
            history=state.history.snapshot(),
            history_size=state.history.size,
            version=self._health_json_version(state),
            checked_at=made_at,
        )

    def _history_view(self) -> flask.Response:
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._state(app)
        if not self._page_on(app, state):
            flask.abort(404)
        return _json_response(history_body(state.history.snapshot(), state.history.size), 200)

    def _page_asset_view(self, name: str) -> flask.Response:
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if not self._page_on(app, self._state(app)):
            flask.abort(404)
        return asset_response(name)

    def _page_icon_view(self, status: str) -> flask.Response:
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if not self._page_on(app, self._state(app)):
            flask.abort(404)
        return icon_response(status)

    def _body(
        self,
        state: _AppState,
        report: Report,
        as_health_json: bool,
        details: bool,
        group: str | None = None,
    ) -> dict[str, Any]:
        """Return the heartbeat body of ``report``: Dockerflow's, or health+json."""
        # Every heartbeat stamps its report, so that one served again from the cache keeps
        # the time it was made at in a later health+json body.
        made_at = state.report_times.time_of(report, remember=state.engine.cache.enabled)
        if not as_health_json:
            return report.as_dict(details=details)
        return health_json(
            report,
            checked_at=made_at,
            fail_level=state.settings.fail_level,
            details=details,
            version=self._health_json_version(state),
            group=group,
        )

    def _health_json_version(self, state: _AppState) -> dict[str, Any] | None:
        # A broken version.json must not fail the heartbeat: its fields are left out.
        path = self._version_path or state.version_path
        try:
            version = self._version_callback(path)
        except Exception as exc:
            self.logger.warning("version.json in %s left out of the heartbeat: %s", path, exc)
            return None
        return version if isinstance(version, dict) else None

    def _lbheartbeat_view(self) -> flask.Response:
        # An empty body, as python-dockerflow's view returns "": Flask's default text/html
        # response. Services' own tests assert `not response.data`.
        response: flask.Response = flask.current_app.response_class(b"", 200)
        response.headers["Cache-Control"] = "no-store"
        return response

    def _version_view(self) -> flask.Response:
        state = self._state()
        path = self._version_path or state.version_path
        try:
            version = self._version_callback(path)
            if version is None:
                return _json_response({"error": "version.json not found"}, 404)
            # Encoded here, inside the try: a callback may return what JSON cannot encode.
            return _json_response(version, 200)
        except Exception:
            self.logger.exception("version.json in %s could not be served", path)
            return _json_response({"error": "version.json could not be read"}, 500)

    def _metrics_view(self) -> flask.Response:
        if self.metrics is None or not self._state().settings.metrics_endpoint:
            flask.abort(404)
        body, content_type = self.metrics.exposition(flask.request.headers.get("Accept"))
        response = flask.Response(body, 200, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    def _error_view(self) -> flask.Response:
        if not self._state().live.get("error_endpoint"):
            flask.abort(404)
        self.logger.error("The /__error__ endpoint was called")
        raise RuntimeError("Test exception raised by the /__error__ endpoint")

    # -- request logging ------------------------------------------------------------------------
    # These hooks run on every request of the app: each resolves a context proxy at most once
    # and finds the app's state once, in _before_request, for the rest of the request.

    def _before_request(self, state: _AppState) -> None:
        values = flask.g._get_current_object().__dict__
        settings = state.live.for_request()
        environ = flask.request._get_current_object().environ  # type: ignore[attr-defined]
        rid = environ.get(settings.request_id_environ_key)
        if rid is not None:
            rid = sanitize_request_id(rid)
        if rid is None:
            rid = self._request_ids.new()
        values["_dockerflow_rid_token"] = request_id_context.set(rid)
        values["_request_id"] = rid
        if "request_id" not in values:
            values["request_id"] = rid
        # python-dockerflow's wall-clock start, kept for code that reads it; "t" is measured
        # on the monotonic clock, and left out if g._start_timestamp was removed.
        values["_start_timestamp"] = time.time()
        values["_dockerflow"] = (time.monotonic_ns(), state, settings)

    def _after_request(
        self, app: Flask, state: _AppState, response: flask.Response
    ) -> flask.Response:
        values = flask.g._get_current_object().__dict__
        rid = values.get("_request_id") or request_id_context.get()
        started = values.get("_dockerflow")
        # Resolved where it is needed: most responses of a service with the summary off never do.
        request: flask.Request | None = None
        if started is None or rid is None:
            # Our before_request hook did not run: a hook placed ahead of it answered, or the
            # response was made without dispatching (app.process_response). Still give the
            # request an id and its summary line, without a duration.
            settings = state.live.for_request()
            request = flask.request._get_current_object()  # type: ignore[attr-defined]
            rid = rid or sanitize_request_id(request.environ.get(settings.request_id_environ_key))
            rid = rid or self._request_ids.new()
            values["_dockerflow_rid_token"] = request_id_context.set(rid)
            values["_request_id"] = rid
            if "request_id" not in values:
                values["request_id"] = rid
        else:
            settings = started[2]
        response.headers.set(settings.request_id_header, rid)
        level = logging.INFO
        code = response.status_code
        if code < 400:
            # Probes that pass may be quieter; an error status (a failing heartbeat) is not.
            mode = settings.summary_log_dockerflow_endpoints
            if mode is not True and _is_own_endpoint():
                level = logging.DEBUG if mode == SUMMARY_DEBUG else 0
        logger = self.summary_logger
        if level and logger.isEnabledFor(level) and "_dockerflow_failed" not in values:
            if type(self).summary_extra is Dockerflow.summary_extra:
                if request is None:
                    request = flask.request._get_current_object()  # type: ignore[attr-defined]
                extra = self._summary_fields(app, request, values, settings)
            else:
                extra = self.summary_extra()
            extra["code"] = code
            log_record(logger, level, "", extra, _SUMMARY_SITE)
        _forget_request_id(values)
        return response

    def _got_request_exception(self, sender: Flask, exception: BaseException, **_: Any) -> None:
        flask.g._dockerflow_failed = True
        if self.summary_logger.isEnabledFor(logging.ERROR):
            extra = self.summary_extra()
            extra["errno"] = 500
            extra["code"] = 500
            self.summary_logger.error(str(exception), extra=extra)
        # The request id is forgotten later, in _after_request: Flask logs the exception
        # after this signal, and that record should carry it too.

    def summary_extra(self) -> dict[str, Any]:
        """Return the fields of the current request's ``request.summary`` record.

        Override to add fields. ``code`` is added by the caller.

        :returns: ``errno``, ``agent``, ``lang``, ``method``, ``path``, ``uid``, ``rid``,
            ``t`` (left out when the request's start time is unknown) and, with
            ``DOCKERFLOW_SUMMARY_LOG_QUERYSTRING``, ``querystring``.
        """
        return self._summary_fields(
            flask.current_app._get_current_object(),  # type: ignore[attr-defined]
            flask.request._get_current_object(),  # type: ignore[attr-defined]
            flask.g._get_current_object().__dict__,
            None,
        )

    def _summary_fields(
        self,
        app: Flask,
        request: flask.Request,
        values: dict[str, Any],
        settings: RequestSettings | None,
    ) -> dict[str, Any]:
        """What :meth:`summary_extra` returns, from the request's objects already at hand.

        :param values: ``flask.g.__dict__``.
        :param settings: the request's settings, or ``None`` to find them.
        """
        environ = request.environ
        entry: tuple[int, _AppState, RequestSettings] | None = values.get("_dockerflow")
        if entry is None:
            started = None
            if settings is None:
                settings = self._state(app).live.for_request()
        else:
            started, _, settings = entry
        if type(self).user_id is Dockerflow.user_id and getattr(app, "login_manager", None) is None:
            user_id = None  # what user_id() returns here, without the call
        else:
            user_id = self.user_id()
        out: dict[str, Any] = {
            "errno": 0,
            "agent": environ.get("HTTP_USER_AGENT", ""),
            "lang": environ.get("HTTP_ACCEPT_LANGUAGE", ""),
            "method": request.method,
            "path": request.path,
            # What get_id() returned, as python-dockerflow logs it (an int stays an int).
            "uid": "" if user_id is None else user_id,
            "rid": request_id_context.get(),
        }
        if started is not None and "_start_timestamp" in values:
            out["t"] = (time.monotonic_ns() - started) // 1_000_000
        if settings.summary_log_querystring:
            out["querystring"] = request.query_string.decode("utf-8", "backslashreplace")
        return out

    def user_id(self) -> Any:
        """Return what the Flask-Login user's ``get_id()`` returns, or ``None``.

        ``None`` when Flask-Login is not installed or not set up (or
        ``dockerflow.flask.app.has_flask_login`` is false), the user is anonymous, or loading
        the user fails (that error is logged at DEBUG, never raised).

        :returns: the user id, as ``get_id()`` returned it (not converted to ``str``).
        """
        app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if getattr(app, "login_manager", None) is None or not _has_flask_login():
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
        return user_id


def _has_flask_login() -> bool:
    # Code written for python-dockerflow turns user ids off by setting
    # dockerflow.flask.app.has_flask_login = False; that module imports this one, so it is
    # looked up rather than imported.
    return bool(getattr(sys.modules.get(f"{__package__}.app"), "has_flask_login", True))


def _forget_request_id(values: dict[str, Any]) -> None:
    # Worker threads serve many requests: do not leave this request's id behind for log lines
    # written between requests. (With PROPAGATE_EXCEPTIONS, a failed request skips the
    # after_request hooks; the next request's id then replaces it.) ``values`` is g's __dict__.
    token = values.pop("_dockerflow_rid_token", None)
    if token is not None:
        # try/except rather than contextlib.suppress: this runs on every request.
        try:  # noqa: SIM105
            request_id_context.reset(token)
        except ValueError:  # set in another context (an async view's)
            pass


def _group_members(state: _AppState, checks: Iterable[Check]) -> dict[str, set[str]]:
    """Return each group of the app and the names of its checks: ``groups=`` of the checks,
    and DOCKERFLOW_HEARTBEAT_GROUPS (whose groups exist even when empty)."""
    members: dict[str, set[str]] = {group: set(names) for group, names in state.settings.groups}
    for check in checks:
        for group in check.groups:
            members.setdefault(group, set()).add(check.name)
    return members


def _is_own_endpoint() -> bool:
    endpoint = flask.request.endpoint
    return endpoint is not None and endpoint.startswith("dockerflow.")


def _json_response(body: Any, status: int) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


#: Where the request.summary record is written: python-dockerflow's records name the line of
#: its hook that logs them, and so do ours.
_SUMMARY_SITE = call_site(Dockerflow._after_request, log_record.__name__)

if TYPE_CHECKING:

    def _implements_cli_extension(ext: Dockerflow) -> CliExtension:
        return ext  # mypy checks that the extension has what the commands use


__all__ = ["Dockerflow"]
