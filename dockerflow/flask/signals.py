"""Signals sent after each ``/__heartbeat__`` (and ``flask dockerflow heartbeat``).

Every signal is sent with the Flask application as sender, so ``connect_via(app)`` works.

``heartbeat_passed`` and ``heartbeat_failed`` are python-dockerflow's signals and carry exactly
its keyword argument, ``level`` (the overall level, an int), so receivers written for it keep
working::

    from dockerflow.flask.signals import heartbeat_failed

    @heartbeat_failed.connect_via(app)
    def count_failure(sender, level):
        statsd.incr("heartbeat.fail")

The full :class:`dockerflow.engine.Report` comes with the two signals added here,
``heartbeat_checked`` (after every heartbeat) and ``heartbeat_status_changed``::

    from dockerflow.flask.signals import heartbeat_checked

    @heartbeat_checked.connect_via(app)
    def record(sender, level, report, passed, **extra):
        for name, seconds in report.durations.items():
            statsd.timing(f"heartbeat.{name}", seconds * 1000)

A receiver that raises is logged (logger ``dockerflow.flask``, with the traceback) and does not
change the heartbeat's response; the other receivers still run.

.. data:: heartbeat_passed

   Sent when the overall level is below ``DOCKERFLOW_HEARTBEAT_FAIL_LEVEL``. Keyword: ``level``.

.. data:: heartbeat_failed

   Sent when the overall level is at or above ``DOCKERFLOW_HEARTBEAT_FAIL_LEVEL``. Keyword:
   ``level``.

.. data:: heartbeat_checked

   Sent after every heartbeat, after one of the two above. Keywords: ``level``, ``report``
   (the :class:`~dockerflow.engine.Report`) and ``passed`` (``bool``).

.. data:: heartbeat_status_changed

   Sent only when the overall status text differs from that of the previous heartbeat of the
   same app in the same process; a process's first heartbeat is not a change. Never sent for
   heartbeats that ran only some checks (``?check=``, ``?exclude=``). Keywords: ``level``,
   ``report`` and ``previous_status`` (``str``).
"""

from __future__ import annotations

from blinker import Namespace

dockerflow_signals = Namespace()

heartbeat_passed = dockerflow_signals.signal("heartbeat-passed")
heartbeat_failed = dockerflow_signals.signal("heartbeat-failed")
heartbeat_checked = dockerflow_signals.signal("heartbeat-checked")
heartbeat_status_changed = dockerflow_signals.signal("heartbeat-status-changed")

__all__ = ["heartbeat_checked", "heartbeat_failed", "heartbeat_passed", "heartbeat_status_changed"]
