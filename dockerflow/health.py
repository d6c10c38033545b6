"""Stable IDs of the messages that dockerflow's own checks and engine produce.

The IDs up to ``E010``, ``W001`` and ``I001`` carry the same meaning as in python-dockerflow, so
silencing lists and alerting rules written for it keep working. Later IDs are ours.
"""

from __future__ import annotations

# Migrations (python-dockerflow).
INFO_CANT_CHECK_MIGRATIONS = "dockerflow.health.I001"
WARNING_UNAPPLIED_MIGRATION = "dockerflow.health.W001"

#: A failing run of a check with flap damping that is not reported as a failure yet.
INFO_FAILURE_DAMPED = "dockerflow.health.I002"

# Databases and Redis (python-dockerflow).
ERROR_CANNOT_CONNECT_DATABASE = "dockerflow.health.E001"
ERROR_UNUSABLE_DATABASE = "dockerflow.health.E002"
ERROR_MISCONFIGURED_DATABASE = "dockerflow.health.E003"
ERROR_CANNOT_CONNECT_REDIS = "dockerflow.health.E004"
ERROR_MISSING_REDIS_CLIENT = "dockerflow.health.E005"
ERROR_MISCONFIGURED_REDIS = "dockerflow.health.E006"
ERROR_REDIS_PING_FAILED = "dockerflow.health.E007"
ERROR_DB_API_EXCEPTION = "dockerflow.health.E008"
ERROR_SQLALCHEMY_EXCEPTION = "dockerflow.health.E009"
ERROR_REDIS_EXCEPTION = "dockerflow.health.E010"

# The engine (new in this library).
#: The check did not finish within its timeout, or an earlier run of this sync check is still
#: stuck in its thread (it is not started again until that thread returns).
ERROR_CHECK_TIMEOUT = "dockerflow.health.E011"
#: The check raised an exception.
ERROR_CHECK_EXCEPTION = "dockerflow.health.E012"
#: The check returned something other than a list of check messages (or ``None``).
ERROR_CHECK_BAD_RESULT = "dockerflow.health.E013"
#: A background-refreshed check's latest result is older than its ``max_age``.
ERROR_CHECK_RESULT_STALE = "dockerflow.health.E014"

__all__ = [name for name in dir() if name.isupper()]
