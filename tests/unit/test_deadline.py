"""appliance/deadline.py: a deadline asks whether its caller is gone at most once per poll interval."""

from __future__ import annotations

import time

import pytest

from appliance.deadline import Cancelled, Deadline, DeadlineExceeded


class _Asked:
    def __init__(self, answer: bool = False) -> None:
        self.calls = 0
        self.answer = answer

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_checks_within_the_poll_interval_do_not_ask_whether_the_caller_is_gone() -> None:
    # Flight's is_cancelled costs ~85 us a call: a batch's several checks must not each pay it
    asked = _Asked()
    deadline = Deadline.after(10, asked, poll=0.2)
    for _ in range(1000):
        deadline.check()
    assert asked.calls == 0


def test_a_hang_up_is_seen_within_the_poll_interval_and_stays_seen() -> None:
    asked = _Asked()
    deadline = Deadline.after(10, asked, poll=0.02)
    deadline.check()
    asked.answer = True
    time.sleep(0.05)
    with pytest.raises(Cancelled):
        deadline.check()
    calls = asked.calls
    asked.answer = False  # a caller seen gone is not asked again
    with pytest.raises(Cancelled):
        deadline.check()
    assert asked.calls == calls == 1


def test_poll_zero_asks_at_every_check() -> None:
    asked = _Asked()
    deadline = Deadline.after(10, asked, poll=0)
    for _ in range(5):
        deadline.check()
    assert asked.calls == 5


def test_the_deadline_itself_is_checked_every_time() -> None:
    deadline = Deadline.after(0, _Asked(), poll=60)
    with pytest.raises(DeadlineExceeded):
        deadline.check()
