"""Turning what a run of a check did into a check result: messages with stable IDs, masked.

Timeouts, exceptions and bad return values become :class:`~dockerflow.health.Error` messages with
IDs from :mod:`dockerflow.health`; the text of every message, a custom check's own included, is
masked (:func:`~dockerflow.masking.mask_secrets`) before it reaches a report or a log line.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from collections.abc import Iterable

from .. import health
from ..health import CheckData, CheckMessage, Error
from ..masking import mask_secrets, masked_repr, short_error
from ._check import Check
from ._report import CheckResult, built
from ._runs import Run

#: python-dockerflow's logger for check messages: one ``"<id>: <msg>"`` record per message.
MESSAGES_LOGGER = "dockerflow.checks.registry"

#: Most values (:class:`~dockerflow.health.CheckData`) kept of one run; later ones are dropped.
MAX_DATA_ITEMS = 32

#: Longest traceback text attached to a log record, in characters.
MAX_TRACEBACK_CHARS = 16_384


def run_result(run: Run) -> CheckResult:
    """Return the result of a finished run; made once per run and kept on it."""
    result = run.result
    if result is None:
        result = run.result = _outcome(run)
    assert isinstance(result, CheckResult)
    return result


def run_key(run: Run, now: float) -> tuple[Run, int]:
    """Return what identifies ``run``'s result at ``now`` for flap damping.

    A run that ended within its timeout is one failing run, however many heartbeats share it.
    A run past its timeout counts as one more failing run for each further timeout it overruns
    (it holds back the new runs that would have failed meanwhile), so that damping cannot hold a
    hung dependency back for ever.
    """
    elapsed = run.duration if run.done else now - run.started
    if run.done and elapsed <= run.timeout and not run.timed_out:
        return (run, 0)
    # The wait for an async run's cancellation is the engine's, not the check's: it does not
    # make another failed run.
    cancel_wait = run.deadline - run.started - run.timeout
    return (run, max(1, int((elapsed - cancel_wait) // run.timeout)))


def _outcome(run: Run) -> CheckResult:
    check = run.check
    # The run has ended, or is ending (its end time is set first).
    duration = (run.finished or time.monotonic()) - run.started
    if run.abandoned:
        message = Error(
            f"Check was cancelled after {duration:.2f}s, before it finished: the event "
            "loop it ran on stopped",
            id=health.ERROR_CHECK_EXCEPTION,
        )
        return CheckResult(check.name, (message,), duration)
    error = run.error
    if run.start_error and error is not None:
        message = Error(
            f"Check could not be started: {short_error(error)}",
            id=health.ERROR_CHECK_EXCEPTION,
        )
        return CheckResult(check.name, (message,), duration, error)
    if run.blocked_for > run.timeout:
        # An async check that blocked the loop past its timeout: its timeout could not fire.
        message = Error(
            f"Check timed out: it blocked the event loop for {run.blocked_for:.1f}s "
            f"(timeout {run.timeout:g}s)",
            id=health.ERROR_CHECK_TIMEOUT,
        )
        return CheckResult(check.name, (message,), duration)
    if run.timed_out:
        return timed_out(check, run.timeout, duration)
    if duration > run.timeout:
        # It finished, but too late: every heartbeat that shared it answered without it.
        message = Error(
            f"Check timed out: it took {duration:.2f}s (timeout {run.timeout:g}s)",
            id=health.ERROR_CHECK_TIMEOUT,
        )
        return CheckResult(check.name, (message,), duration)
    if error is not None:
        message = Error(f"Check raised {short_error(error)}", id=health.ERROR_CHECK_EXCEPTION)
        return CheckResult(check.name, (message,), duration, error)
    if run.value is None:  # the common case: it passed
        return built(
            CheckResult, name=check.name, messages=(), duration=duration, error=None, data=()
        )
    messages, data = _to_messages(check, run.value)
    return CheckResult(check.name, messages, duration, data=data)


def timed_out(check: Check, timeout: float, duration: float, why: str = "") -> CheckResult:
    """Return the result of a check that did not finish within ``timeout`` (``E011``).

    :param why: more about the reason, appended to the message.
    """
    text = f"Check timed out after {timeout:g}s" + (f": {why}" if why else "")
    return CheckResult(check.name, (Error(text, id=health.ERROR_CHECK_TIMEOUT),), duration)


def not_started(check: Check, stuck: int, stuck_for: float, timeout: float) -> CheckResult:
    """Return the result of a check that was not started because ``stuck`` runs of its
    function, the oldest running for ``stuck_for`` seconds, hold every slot (``E016``)."""
    text = (
        f"Check not started: {stuck} runs of it are stuck in this process (the oldest for "
        f"{stuck_for:.1f}s, timeout {timeout:g}s); it starts again when one of them returns. "
        "A check that can hang needs a timeout of its own on its I/O"
    )
    return CheckResult(check.name, (Error(text, id=health.ERROR_CHECK_NOT_STARTED),), 0.0)


def _to_messages(
    check: Check, value: object
) -> tuple[tuple[CheckMessage, ...], tuple[CheckData, ...]]:
    """Split what a check returned into its messages and its data, both masked."""
    if value is None:
        return (), ()
    if isinstance(value, (list, tuple)) and all(
        isinstance(m, (CheckMessage, CheckData)) for m in value
    ):
        messages = tuple(_masked(m) for m in value if isinstance(m, CheckMessage))
        data = [_masked_data(d) for d in value if isinstance(d, CheckData)]
        return messages, tuple(data[:MAX_DATA_ITEMS])
    bad = Error(
        f"Check returned {type(value).__name__} ({masked_repr(value, 80)}), expected a list "
        "of check messages",
        id=health.ERROR_CHECK_BAD_RESULT,
    )
    return (bad,), ()


def _masked_data(item: CheckData) -> CheckData:
    if not isinstance(item.value, str):
        return item
    masked = mask_secrets(item.value)
    return item if masked == item.value else CheckData(item.name, masked, item.unit)


def _masked(message: CheckMessage) -> CheckMessage:
    text = message.msg if isinstance(message.msg, str) else str(message.msg)
    masked = mask_secrets(text)
    if masked == message.msg:
        return message
    # A copy: the check may return the same message objects every time.
    clean = copy.copy(message)
    clean.msg = masked
    return clean


def log_results(results: Iterable[CheckResult]) -> None:
    """Log each message of ``results`` once, as python-dockerflow does: ``"<id>: <msg>"`` on
    the logger ``dockerflow.checks.registry`` at the message's level.

    The record of a check that raised carries the masked exception as the ``error`` and
    ``traceback`` extra fields (shown in ``Fields`` by the mozlog formatter).
    """
    results = [result for result in results if result.messages]
    if not results:
        return  # the common case: every check passed with nothing to say
    # Looked up on each call, not kept from import time: code that reloads or reconfigures
    # logging (python-dockerflow's tests do) must still receive these records.
    messages_logger = logging.getLogger(MESSAGES_LOGGER)
    for result in results:
        for message in result.messages:
            if not messages_logger.isEnabledFor(message.level):
                continue
            extra = {"check": result.name}
            if result.error is not None and message.id == health.ERROR_CHECK_EXCEPTION:
                extra["error"] = masked_repr(result.error, 1000)
                extra["traceback"] = _masked_traceback(result.error)
            messages_logger.log(message.level, "%s: %s", message.id, message.msg, extra=extra)


def _masked_traceback(error: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except Exception:
        text = f"<traceback unavailable for {type(error).__name__}>"
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "…" + text[-MAX_TRACEBACK_CHARS:]
    return mask_secrets(text)
