"""aggregate() is a pure function: plain check results in, a report out."""

from __future__ import annotations

import dataclasses

import pytest

from dockerflow.checks import CRITICAL, ERROR, INFO, WARNING, Critical, Error, Info, Warning
from dockerflow.engine import Check, CheckDetail, CheckResult, Report, aggregate
from dockerflow.engine._results import run_result
from dockerflow.engine._runs import Run


def test_empty_input_is_ok() -> None:
    report = aggregate([])
    assert report.level == 0
    assert report.status == "ok"
    assert report.as_dict() == {"status": "ok", "checks": {}, "details": {}}
    assert not report.is_failure(ERROR)


def test_overall_level_is_the_highest_check_level() -> None:
    report = aggregate(
        [
            CheckResult("a", (Info("fyi", id="a.I1"),)),
            CheckResult("b", (Warning("hmm", id="b.W1"), Critical("down", id="b.C1"))),
            CheckResult("c", (Error("bad", id="c.E1"),)),
            CheckResult("d"),
        ]
    )
    assert report.level == CRITICAL
    assert report.status == "critical"
    assert report.is_failure(ERROR)
    assert report.results["b"].level == CRITICAL
    assert report.results["c"].level == ERROR
    assert report.results["d"].level == 0


def test_warnings_only_is_not_a_failure_at_error_level() -> None:
    report = aggregate([CheckResult("a", (Warning("hmm", id="a.W1"),)), CheckResult("b")])
    assert report.level == WARNING
    assert report.status == "warning"
    assert not report.is_failure(ERROR)
    assert report.is_failure(WARNING)


def test_checks_lists_every_check_with_its_status() -> None:
    report = aggregate(
        [
            CheckResult("ok_one"),
            CheckResult("info_one", (Info("fyi", id="x.I1"),)),
            CheckResult("broken", (Error("bad", id="x.E1"),)),
        ]
    )
    assert report.checks == {"ok_one": "ok", "info_one": "info", "broken": "error"}
    assert list(report.checks) == ["ok_one", "info_one", "broken"]


def test_details_only_for_checks_above_level_zero() -> None:
    report = aggregate(
        [
            CheckResult("fine"),
            CheckResult("noisy", (Info("fyi", id="n.I1"),)),
            CheckResult("broken", (Error("bad", id="b.E1"), Warning("meh", id="b.W1"))),
        ]
    )
    assert report.details == {
        "noisy": {"status": "info", "level": INFO, "messages": {"n.I1": "fyi"}},
        "broken": {
            "status": "error",
            "level": ERROR,
            "messages": {"b.E1": "bad", "b.W1": "meh"},
        },
    }


def test_silenced_ids_are_dropped_before_levels_are_computed() -> None:
    report = aggregate(
        [
            CheckResult("db", (Error("down", id="db.E1"),)),
            CheckResult("cache", (Error("gone", id="cache.E1"), Warning("slow", id="cache.W1"))),
        ],
        silenced_ids={"db.E1", "cache.E1"},
    )
    # db's only message is silenced: it is ok and absent from the details.
    assert report.checks == {"db": "ok", "cache": "warning"}
    assert "db" not in report.details
    assert report.details["cache"] == {
        "status": "warning",
        "level": WARNING,
        "messages": {"cache.W1": "slow"},
    }
    assert report.level == WARNING


def test_silencing_every_error_makes_the_report_ok() -> None:
    report = aggregate([CheckResult("db", (Error("down", id="db.E1"),))], silenced_ids=["db.E1"])
    assert report.level == 0
    assert report.as_dict() == {"status": "ok", "checks": {"db": "ok"}, "details": {}}


def test_messages_without_id_are_keyed_by_check_and_index() -> None:
    report = aggregate(
        [CheckResult("svc", (Error("first"), Warning("second", id="svc.W1"), Error("third")))]
    )
    assert report.details["svc"]["messages"] == {
        "svc.0": "first",
        "svc.W1": "second",
        "svc.2": "third",
    }


def test_index_keys_count_after_silencing() -> None:
    # The key is the position among the messages that were kept.
    report = aggregate(
        [CheckResult("svc", (Error("hidden", id="svc.E1"), Error("shown")))],
        silenced_ids={"svc.E1"},
    )
    assert report.details["svc"]["messages"] == {"svc.0": "shown"}


def test_durations_are_kept() -> None:
    report = aggregate(
        [
            CheckResult("fast", (), 0.001),
            CheckResult("slow", (Error("late", id="s.E1"),), 2.5),
        ]
    )
    assert report.durations == {"fast": 0.001, "slow": 2.5}
    assert report.results["slow"].duration == 2.5


def test_as_dict_without_details_keeps_statuses() -> None:
    report = aggregate([CheckResult("a", (Error("bad", id="a.E1"),)), CheckResult("b")])
    assert report.as_dict(details=False) == {
        "status": "error",
        "checks": {"a": "error", "b": "ok"},
        "details": {},
    }
    assert report.as_dict()["details"] == {
        "a": {"status": "error", "level": ERROR, "messages": {"a.E1": "bad"}}
    }


def test_a_later_result_of_the_same_name_replaces_an_earlier_one() -> None:
    report = aggregate([CheckResult("a", (Error("old", id="a.E1"),)), CheckResult("a")])
    assert report.checks == {"a": "ok"}
    assert report.level == 0


def test_aggregate_accepts_any_iterable_and_does_not_mutate_inputs() -> None:
    message = Error("bad", id="a.E1")
    results = (r for r in [CheckResult("a", (message,))])
    report = aggregate(results, silenced_ids=frozenset())
    assert isinstance(report, Report)
    assert report.details["a"]["messages"] == {"a.E1": "bad"}
    assert message.id == "a.E1"
    assert message.level == ERROR


def _same(fast: object, made: object) -> None:
    # Equal, with the same repr, holding exactly the dataclass's fields.
    assert fast == made
    assert repr(fast) == repr(made)
    assert vars(fast).keys() == {f.name for f in dataclasses.fields(made)}  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.level = 1  # type: ignore[attr-defined]


def test_a_passing_check_detail_is_the_one_its_constructor_makes() -> None:
    # aggregate() builds the common detail without CheckDetail's __init__ (see built()).
    report = aggregate([CheckResult("a", (), 0.25), CheckResult("b", (), 0.5)], (), ("b",))
    _same(report.results["a"], CheckDetail(0, {}, 0.25))
    _same(report.results["b"], CheckDetail(0, {}, 0.5, critical=False))


def test_a_passing_run_s_result_is_the_one_its_constructor_makes() -> None:
    # A run that returned None gets a CheckResult built without its __init__ (see built()).
    check = Check("ok", lambda: None)
    run = Run(check, 1.0, None, object())
    run.finished = run.started + 0.125
    result = run_result(run)
    made = CheckResult("ok", (), result.duration)
    assert result == made
    assert repr(result) == repr(made)
    assert result.error is None
    assert vars(result).keys() == {f.name for f in dataclasses.fields(made)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.name = "other"  # type: ignore[misc]
