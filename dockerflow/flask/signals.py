"""Signals sent after each ``/__heartbeat__`` (and ``flask dockerflow heartbeat``).

Every signal is sent with the Flask application as sender, so ``connect_via(app)`` works, and
with the keyword arguments ``level`` (the overall level, an int) and ``report``
(a :class:`dockerflow.engine.Report`)::

    from dockerflow.flask.signals import heartbeat_failed

    @heartbeat_failed.connect_via(app)
    def count_failure(sender, level, report, **extra):
        statsd.incr("heartbeat.fail")

.. data:: heartbeat_passed

   Sent when the overall level is below ``DOCKERFLOW_HEARTBEAT_FAIL_LEVEL``.

.. data:: heartbeat_failed

   Sent when the overall level is at or above ``DOCKERFLOW_HEARTBEAT_FAIL_LEVEL``.

.. data:: heartbeat_status_changed

   Sent only when the overall status text differs from that of the previous heartbeat of the
   same app in the same process; a process's first heartbeat is not a change. Never sent for
   subset heartbeats (``?check=``, ``?exclude=``). Extra keyword: ``previous_status`` (``str``).
"""

from __future__ import annotations

from blinker import Namespace

dockerflow_signals = Namespace()

heartbeat_passed = dockerflow_signals.signal("heartbeat-passed")
heartbeat_failed = dockerflow_signals.signal("heartbeat-failed")
heartbeat_status_changed = dockerflow_signals.signal("heartbeat-status-changed")

__all__ = ["heartbeat_failed", "heartbeat_passed", "heartbeat_status_changed"]
