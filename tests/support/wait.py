"""Waiting for a condition in tests: one helper instead of fixed sleeps and private wait loops.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere else (a
slow one); :func:`eventually` returns as soon as the condition holds and fails with what it last saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
    what: str = "the condition",
    retry_on: tuple[type[BaseException], ...] = (),
    step: Callable[[], object] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    Between calls it sleeps ``interval`` seconds, or calls ``step`` instead when given (a step that
    waits by itself, such as polling a consumer, makes the loop drive the system it waits for).
    Exceptions of the ``retry_on`` types count as "not yet"; any other exception propagates at once, so
    a check can fail fast (a worker that died). After ``timeout`` seconds it raises AssertionError
    naming ``what``, the last value or exception, and ``details()`` (a log tail, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        error: BaseException | None = None
        try:
            value = check()
        except retry_on as exc:
            error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            last = f"exception: {error!r}" if error is not None else f"value: {value!r}"
            message = f"timed out after {timeout:g}s waiting for {what}; last {last}"
            if details is not None:
                message += f"\n{details()}"
            raise AssertionError(message) from error
        if step is not None:
            step()
        else:
            time.sleep(interval)
