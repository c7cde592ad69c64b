"""tests.support.wait.eventually: returns the first truthy value, fails with what it last saw."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.support.wait import eventually


def test_returns_the_first_truthy_value_without_waiting_longer() -> None:
    values = iter([0, None, "", 7, 8])
    started = time.monotonic()
    assert eventually(lambda: next(values), timeout=60, interval=0.01) == 7
    assert time.monotonic() - started < 60  # returned on the value, not at the deadline
    assert next(values) == 8  # not called again once it held


def test_times_out_with_the_last_value_and_the_details() -> None:
    calls = itertools.count()
    started = time.monotonic()
    with pytest.raises(AssertionError) as raised:
        eventually(
            lambda: [next(calls)][:0], timeout=0.2, interval=0.01, what="a list", details=lambda: "tail"
        )
    elapsed = time.monotonic() - started
    assert elapsed >= 0.2
    text = str(raised.value)
    assert "waiting for a list; last value: []" in text
    assert text.endswith("\ntail")
    assert next(calls) > 2  # it kept checking until the deadline


def test_listed_exceptions_mean_not_yet_and_others_propagate_at_once() -> None:
    attempts = itertools.count(1)

    def flaky() -> int:
        n = next(attempts)
        if n < 3:
            raise ConnectionError(f"attempt {n}")
        return n

    assert eventually(flaky, retry_on=(ConnectionError,), interval=0.01) == 3

    def broken() -> bool:
        raise ValueError("dead worker")

    started = time.monotonic()
    with pytest.raises(ValueError, match="dead worker"):
        eventually(broken, timeout=60, retry_on=(ConnectionError,))
    assert time.monotonic() - started < 60  # raised at once, not at the deadline

    def refused() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"last exception: ConnectionError\('refused'\)") as raised:
        eventually(refused, timeout=0.05, interval=0.01, retry_on=(ConnectionError,))
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_a_step_replaces_the_sleep() -> None:
    state = {"polled": 0}

    def poll() -> None:
        state["polled"] += 1

    assert eventually(lambda: state["polled"] >= 5, step=poll, timeout=5) is True
    assert state["polled"] == 5
