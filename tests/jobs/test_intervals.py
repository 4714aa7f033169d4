"""Timeline: data intervals with implicit None gaps, split/overwrite/merge on every update."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gristmill.errors import GristmillError
from gristmill.jobs import DataInterval, DataStatus, IntervalError, Timeline

N, P, INC, C = DataStatus.NONE, DataStatus.PENDING, DataStatus.INCOMPLETE, DataStatus.COMPLETE


def d(day: int, hour: int = 0) -> datetime:
    """A naive UTC time in April 2025."""
    return datetime(2025, 4, day, hour)


def timeline(*spans: tuple[int, int, DataStatus]) -> Timeline:
    """A timeline from (start day, end day, status) spans, applied in order with ``set``."""
    result = Timeline()
    for start, end, status in spans:
        result = result.set(d(start), d(end), status)
    return result


def spans(intervals: list[DataInterval] | Timeline) -> list[tuple[int, int, DataStatus]]:
    return [(i.start.day, i.end.day, i.status) for i in intervals]


# -- set: (starting spans, update, expected stored spans) -------------------------------------------
SET_CASES = [
    ([], (1, 3, C), [(1, 3, C)]),
    ([], (1, 3, N), []),                                             # None is never stored
    ([(1, 5, C)], (2, 3, P), [(1, 2, C), (2, 3, P), (3, 5, C)]),     # split in the middle
    ([(1, 5, C)], (1, 5, INC), [(1, 5, INC)]),                       # exact overwrite
    ([(2, 5, C)], (1, 9, P), [(1, 9, P)]),                           # covers it entirely
    ([(1, 5, C)], (3, 8, P), [(1, 3, C), (3, 8, P)]),                # cuts the tail
    ([(3, 8, C)], (1, 5, P), [(1, 5, P), (5, 8, C)]),                # cuts the head
    ([(1, 3, C)], (3, 5, C), [(1, 5, C)]),                           # adjacent equal statuses merge
    ([(3, 5, C)], (1, 3, C), [(1, 5, C)]),                           # ... on either side
    ([(1, 3, C), (5, 7, C)], (3, 5, C), [(1, 7, C)]),                # bridging a gap merges three
    ([(1, 3, C)], (4, 6, C), [(1, 3, C), (4, 6, C)]),                # a gap keeps them apart
    ([(1, 3, C)], (3, 5, INC), [(1, 3, C), (3, 5, INC)]),            # adjacent different statuses stay
    ([(1, 5, C)], (2, 3, N), [(1, 2, C), (3, 5, C)]),                # None clears a hole
    ([(1, 3, C), (3, 5, INC), (5, 7, C)], (3, 5, C), [(1, 7, C)]),   # healing an Incomplete middle
    ([(2, 3, C), (3, 4, INC), (4, 5, P)], (1, 9, N), []),            # clearing everything
    ([(1, 9, P)], (4, 5, P), [(1, 9, P)]),                           # same status inside: unchanged
]


@pytest.mark.parametrize(("start", "update", "expected"), SET_CASES)
def test_set(start: list[tuple[int, int, DataStatus]], update: tuple[int, int, DataStatus],
             expected: list[tuple[int, int, DataStatus]]) -> None:
    before = timeline(*start)
    after = before.set(d(update[0]), d(update[1]), update[2])
    assert spans(after) == expected
    assert spans(before) == spans(timeline(*start))  # immutable: the original is unchanged


# -- intervals(start, end): (stored spans, window, include_none, expected) ---------------------------
INTERVAL_CASES = [
    ([], (None, None), True, []),
    ([], (1, 4), True, [(1, 4, N)]),
    ([], (1, 4), False, []),
    ([(2, 3, C), (5, 6, INC)], (None, None), True, [(2, 3, C), (3, 5, N), (5, 6, INC)]),   # stored extent only
    ([(2, 3, C), (5, 6, INC)], (None, None), False, [(2, 3, C), (5, 6, INC)]),
    ([(2, 3, C), (5, 6, INC)], (1, 8), True, [(1, 2, N), (2, 3, C), (3, 5, N), (5, 6, INC), (6, 8, N)]),
    ([(2, 6, C)], (3, 4), True, [(3, 4, C)]),                                              # clipped both sides
    ([(2, 6, C)], (1, 3), True, [(1, 2, N), (2, 3, C)]),
    ([(2, 3, C), (5, 6, INC)], (4, None), True, [(4, 5, N), (5, 6, INC)]),                 # end: last stored end
    ([(2, 3, C), (5, 6, INC)], (None, 4), True, [(2, 3, C), (3, 4, N)]),                   # start: first stored
    ([(2, 3, C)], (5, 7), True, [(5, 7, N)]),                                              # outside: all None
    ([(2, 3, C)], (5, None), True, []),                                                    # past the stored end
]


@pytest.mark.parametrize(("stored", "window", "include_none", "expected"), INTERVAL_CASES)
def test_intervals(stored: list[tuple[int, int, DataStatus]], window: tuple[int | None, int | None],
                   include_none: bool, expected: list[tuple[int, int, DataStatus]]) -> None:
    start, end = (d(day) if day is not None else None for day in window)
    assert spans(timeline(*stored).intervals(start, end, include_none=include_none)) == expected


STATUS_AT_CASES = [
    (d(1), N), (d(2), C), (d(2, 23), C), (d(3), INC), (d(4), N), (d(5), P), (d(6), N), (d(30), N),
]


@pytest.mark.parametrize(("time", "expected"), STATUS_AT_CASES)
def test_status_at(time: datetime, expected: DataStatus) -> None:
    assert timeline((2, 3, C), (3, 4, INC), (5, 6, P)).status_at(time) == expected


COVERED_CASES = [
    ((2, 4), C, True), ((2, 5), C, False), ((3, 4), "complete", True), ((1, 2), N, True),
    ((1, 3), C, False), ((4, 5), N, False), ((5, 6), INC, True), ((6, 9), N, True),
]


@pytest.mark.parametrize(("window", "status", "expected"), COVERED_CASES)
def test_covered(window: tuple[int, int], status: DataStatus | str, expected: bool) -> None:
    assert timeline((2, 4, C), (4, 6, INC)).covered(d(window[0]), d(window[1]), status) is expected


STATUS_NAMES = [("None", N), ("none", N), ("PENDING", P), (" Incomplete ", INC), ("complete", C), (C, C)]


@pytest.mark.parametrize(("text", "expected"), STATUS_NAMES)
def test_status_names_are_case_insensitive(text: str, expected: DataStatus) -> None:
    assert DataStatus(text) is expected
    assert str(expected) == expected.value  # prints as the SPEC spells it


def test_value_object_behaviour() -> None:
    assert timeline((1, 2, C), (2, 3, C)) == timeline((1, 3, C))
    assert hash(timeline((1, 3, C))) == hash(Timeline([DataInterval(d(1), d(3), C)]))
    assert not Timeline() and len(Timeline()) == 0 and Timeline().start is None
    built = Timeline([DataInterval(d(5), d(6), INC), DataInterval(d(1), d(2), N), DataInterval(d(2), d(5), INC)])
    assert spans(built) == [(2, 6, INC)]  # sorted, None dropped, touching equal statuses merged
    assert (built.start, built.end) == (d(2), d(6))
    assert "Incomplete" in repr(built)


def test_aware_times_are_converted_to_naive_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    interval = DataInterval(datetime(2025, 4, 1, 2, tzinfo=plus_two), datetime(2025, 4, 2, tzinfo=UTC), "complete")
    assert (interval.start, interval.end, interval.status) == (d(1), d(2), C)
    assert timeline((1, 3, C)).status_at(datetime(2025, 4, 3, 1, tzinfo=plus_two)) is C


BAD_INPUT = [
    (lambda: DataInterval(d(2), d(2), C), "empty"),
    (lambda: DataInterval(d(3), d(2), C), "empty"),
    (lambda: DataInterval(d(1), d(2), "Done"), "'Done' is not one of None, Pending, Incomplete, Complete"),
    (lambda: Timeline().set(d(3), d(1), C), "start must be before end"),
    (lambda: Timeline([DataInterval(d(1), d(3), C), DataInterval(d(2), d(4), INC)]), "overlap"),
    (lambda: Timeline().intervals(d(3), d(3)), "start must be before end"),
    (lambda: DataInterval("2025-04-01", d(2), C), "start must be a datetime"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("action", "message"), BAD_INPUT)
def test_bad_input_is_a_clear_error(action: object, message: str) -> None:
    with pytest.raises(IntervalError, match=message) as raised:
        action()  # type: ignore[operator]
    assert isinstance(raised.value, GristmillError) and isinstance(raised.value, ValueError)
