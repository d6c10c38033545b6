"""gunicorn settings for the metrics tests, as docs/metrics.rst tells services to write them."""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    """Drop an exited worker's live gauges ("livesum", "livemostrecent") from the totals."""
    multiprocess.mark_process_dead(worker.pid)
