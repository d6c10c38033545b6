"""Prometheus metrics of heartbeats: check levels, durations, timeouts and stuck threads.

Needs the ``prometheus`` extra (``pip install 'dockerflow-async[prometheus]'``);
``prometheus_client`` is imported when a :class:`HeartbeatMetrics` is made, not when this module
is. The Flask extension records into one when given ``metrics=``; other code may call
:meth:`HeartbeatMetrics.observe` with each report. The metrics and the multiprocess set-up are
described in ``docs/metrics.rst``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, MissingDependencyError
from .engine import Report, after_fork_in_child
from .health import ERROR_CHECK_TIMEOUT, STATUSES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: The environment variable that puts ``prometheus_client`` in multiprocess mode.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

CHECK_LEVEL = "dockerflow_check_level"
CHECK_DURATION = "dockerflow_check_duration_seconds"
HEARTBEATS = "dockerflow_heartbeats_total"
GROUP_HEARTBEATS = "dockerflow_group_heartbeats_total"
CHECK_TIMEOUTS = "dockerflow_check_timeouts_total"
CHECK_STUCK_THREADS = "dockerflow_check_stuck_threads"
CHECK_STARTING = "dockerflow_check_starting"

#: Upper bounds of the duration histogram's buckets, in seconds: from in-process checks (1 ms)
#: to the longest usual check timeouts.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Seconds within which a check's level gauge is not written again with the same value.
LEVEL_REFRESH = 1.0


class HeartbeatMetrics:
    """The Prometheus metrics of heartbeats, registered in one registry.

    Make one per registry and process (at import time, as ``prometheus_client`` metrics
    usually are), and share it between extensions: registering the same names twice in one
    registry is refused. Works in a single process and in ``prometheus_client``'s multiprocess
    mode (:envvar:`PROMETHEUS_MULTIPROC_DIR` set, e.g. several gunicorn workers).

    :param registry: where the metrics are registered; default ``prometheus_client.REGISTRY``,
        the registry ``prometheus_client``'s own exporters serve.
    :raises MissingDependencyError: if ``prometheus_client`` is not installed.
    :raises ConfigurationError: if the registry already holds metrics of these names.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise MissingDependencyError.from_import_error(
                exc, "prometheus_client", "prometheus", "recording Prometheus metrics"
            ) from exc
        if registry is None:
            registry = prometheus_client.REGISTRY
        #: The registry the metrics are registered in.
        self.registry = registry
        self._registered: list[Any] = []
        try:
            # In multiprocess mode a gauge's samples come from every worker's file and are
            # merged by its mode. A check's level is the state of a dependency now: the value
            # set most recently in any live worker ("livemostrecent") is the latest word on it,
            # whereas "max" would keep the failure a worker saw minutes ago until that worker is
            # probed again. Stuck threads are each held by one worker and freed when it exits:
            # the sum over live workers ("livesum") is what the service holds now. Counters and
            # histograms are summed over all workers, exited ones too, so rates stay continuous.
            self.check_level = self._add(
                prometheus_client.Gauge(
                    CHECK_LEVEL,
                    "Level of the check in the latest heartbeat: 0 ok, 10 debug, 20 info, "
                    "30 warning, 40 error, 50 critical.",
                    ["check"],
                    registry=registry,
                    multiprocess_mode="livemostrecent",
                )
            )
            self.check_duration = self._add(
                prometheus_client.Histogram(
                    CHECK_DURATION,
                    "Seconds each run of the check took (up to its timeout).",
                    ["check"],
                    registry=registry,
                    buckets=DURATION_BUCKETS,
                )
            )
            self.heartbeats = self._add(
                prometheus_client.Counter(
                    HEARTBEATS,
                    "Heartbeats, by overall status (ok, warning, error...).",
                    ["status"],
                    registry=registry,
                )
            )
            self.group_heartbeats = self._add(
                prometheus_client.Counter(
                    GROUP_HEARTBEATS,
                    "Heartbeats of a named group of checks (/__heartbeat__/<group>), by group "
                    "and status; they are counted in dockerflow_heartbeats_total too.",
                    ["group", "status"],
                    registry=registry,
                )
            )
            self.check_timeouts = self._add(
                prometheus_client.Counter(
                    CHECK_TIMEOUTS,
                    "Heartbeats in which the check did not finish within its timeout "
                    f"({ERROR_CHECK_TIMEOUT}).",
                    ["check"],
                    registry=registry,
                )
            )
            self.check_stuck_threads = self._add(
                prometheus_client.Gauge(
                    CHECK_STUCK_THREADS,
                    "Worker threads held by runs of a sync check still going past its timeout.",
                    ["check"],
                    registry=registry,
                    multiprocess_mode="livesum",
                )
            )
            self.check_starting = self._add(
                prometheus_client.Gauge(
                    CHECK_STARTING,
                    "1 when the check failed in the latest heartbeat but counted as a warning, "
                    "because it has not passed since the app started (startup grace), else 0.",
                    ["check"],
                    registry=registry,
                    multiprocess_mode="livemostrecent",
                )
            )
        except ValueError as exc:
            self.unregister()
            raise ConfigurationError(
                f"the registry already holds Dockerflow's metrics ({exc}); make one "
                "HeartbeatMetrics per registry and share it, e.g. Dockerflow(app, "
                "metrics=metrics) with metrics = HeartbeatMetrics() at module level"
            ) from None
        # Every status starts at 0, so that rate() sees the first failure of a worker: made at
        # the first heartbeat, not here, so that a process that never records (the CLI) writes
        # nothing into PROMETHEUS_MULTIPROC_DIR.
        self._status: dict[str, Any] = {}
        # Labelled children looked up once per check name: labels() takes a lock and builds a
        # tuple on each call, which adds up to most of the cost of a heartbeat's metrics.
        self._checks: dict[str, tuple[Any, Any, Any]] = {}
        # Check name -> ((level, starting), monotonic time) last written to its gauges by this
        # process: a worker forked after a heartbeat (gunicorn --preload) forgets them and
        # writes its own.
        self._levels: dict[str, tuple[tuple[int, bool], float]] = {}
        after_fork_in_child(self, HeartbeatMetrics._forget_levels)
        self._stuck: frozenset[str] = frozenset()
        # Reports served again from the heartbeat cache are the same objects: their durations
        # and timeouts were counted when they were made. Held by identity (a report compares by
        # value) and weakly (an entry goes when the cache lets its report go).
        self._seen: weakref.WeakValueDictionary[int, Report] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def _forget_levels(self) -> None:
        self._levels = {}
        # A lock held by another thread of the parent at fork time would block the child.
        self._lock = threading.Lock()

    def _add(self, metric: Any) -> Any:
        self._registered.append(metric)
        return metric

    def _children(self, name: str) -> tuple[Any, Any, Any]:
        children = self._checks.get(name)
        if children is None:
            # Two threads may both get here: labels() returns the same child to both.
            children = self._checks[name] = (
                self.check_level.labels(name),
                self.check_duration.labels(name),
                self.check_timeouts.labels(name),
            )
        return children

    def observe(
        self,
        report: Report,
        stuck_threads: Mapping[str, int] | None = None,
        *,
        group: str | None = None,
    ) -> None:
        """Record one heartbeat.

        The heartbeat counter and the level gauges are updated for every call; durations and
        timeouts only the first time a report object is seen (a cached report is served again
        as the same object). Checks that are not in ``stuck_threads`` but were in the previous
        call's have their stuck-threads gauge set back to 0.

        :param report: the heartbeat's report.
        :param stuck_threads: check name → worker threads held by its stuck runs, for the
            checks that hold any (from :meth:`dockerflow.engine.Engine.stuck_runs`, sync
            checks only).
        :param group: the named group of checks the heartbeat ran, if it ran one: counted in
            ``dockerflow_group_heartbeats_total`` too.
        """
        if not self._status:
            self._status = {text: self.heartbeats.labels(text) for text in STATUSES.values()}
        if group is not None:
            self.group_heartbeats.labels(group, report.status).inc()
        status = self._status.get(report.status)
        if status is None:  # a level between the named ones: counted under its own text
            status = self.heartbeats.labels(report.status)
        status.inc()
        with self._lock:
            fresh = self._seen.get(id(report)) is not report
            if fresh:
                self._seen[id(report)] = report
        now = time.monotonic()
        for name, detail in report.results.items():
            level, duration, timeouts = self._children(name)
            # The level the check really had: a failing non-critical or starting check
            # (reported at warning level so the heartbeat passes) shows here as failing.
            raw = detail.raw_level
            state = (raw, detail.starting)
            last = self._levels.get(name)
            # Written when it changes, and again once a second while it does not: in
            # multiprocess mode each write is an mmap write and the timestamp that
            # "livemostrecent" merges by, so under a probe storm the merged value is at most
            # LEVEL_REFRESH seconds behind a worker's, and a heartbeat costs 10 writes fewer.
            if last is None or last[0] != state or now - last[1] >= LEVEL_REFRESH:
                level.set(raw)
                # Only checks that were starting have this series (made here, on first use):
                # written while the check is starting, and once more with 0 when it stops.
                if detail.starting or (last is not None and last[0][1]):
                    self.check_starting.labels(name).set(1 if detail.starting else 0)
                self._levels[name] = (state, now)
            if fresh:
                timed_out = ERROR_CHECK_TIMEOUT in detail.messages
                # A timeout with no duration is a run still going from an earlier heartbeat
                # (the engine reports 0 s for it): nothing ran, so no duration to observe.
                if not (timed_out and detail.duration == 0.0):
                    duration.observe(detail.duration)
                if timed_out:
                    timeouts.inc()
        if stuck_threads or self._stuck:
            self._set_stuck(stuck_threads or {})

    def _set_stuck(self, stuck_threads: Mapping[str, int]) -> None:
        with self._lock:
            previous, self._stuck = self._stuck, frozenset(stuck_threads)
        for name in previous - self._stuck:
            self.check_stuck_threads.labels(name).set(0)
        for name, threads in stuck_threads.items():
            self.check_stuck_threads.labels(name).set(threads)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return every metric of the registry in the text format ``accept`` asks for.

        In multiprocess mode (:envvar:`PROMETHEUS_MULTIPROC_DIR` set) the metrics of every
        worker are collected from that directory instead, through ``MultiProcessCollector``:
        the worker answering has only its own in memory.

        :param accept: the request's ``Accept`` header; OpenMetrics when it asks for it, else
            the Prometheus text format.
        :returns: the body and its content type.
        """
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self.registry
        # The test prometheus_client makes when it is imported: the variable being set at all
        # (also under its old lower-case name) puts it in multiprocess mode.
        if MULTIPROC_DIR_ENV in os.environ or MULTIPROC_DIR_ENV.lower() in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def unregister(self) -> None:
        """Remove the metrics from the registry (for tests, or before making new ones)."""
        while self._registered:
            metric = self._registered.pop()
            with contextlib.suppress(KeyError):  # already taken out by other code
                self.registry.unregister(metric)


__all__ = [
    "CHECK_DURATION",
    "CHECK_LEVEL",
    "CHECK_STARTING",
    "CHECK_STUCK_THREADS",
    "CHECK_TIMEOUTS",
    "DURATION_BUCKETS",
    "GROUP_HEARTBEATS",
    "HEARTBEATS",
    "MULTIPROC_DIR_ENV",
    "HeartbeatMetrics",
]
