"""Retries, halts and dead letters around :class:`~esflow.readmodel.store.ProjectionStore`, Faust-free.

The Faust runtime calls :meth:`BatchApplier.process` for every batch it takes. An exception escaping a
``stream.take()`` agent makes Faust ack and skip the whole batch, so nothing may escape here but a
request to stop: outages are retried with exponential back-off until Postgres answers, and a batch that
fails for a reason retrying cannot fix (a constraint violation, a bug in a projection) is re-applied
partition by partition, so the healthy partitions commit and only the failing one halts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import psycopg
import sqlalchemy.exc as sa_exc
import tenacity

from esflow.readmodel.projection import TP, Decoder, Item, Projection, RawEvent, prepare
from esflow.readmodel.store import BatchResult, ProjectionStore
from esflow.settings import ProjectionSettings

log = logging.getLogger("esflow.projections")


class Observer(Protocol):
    """Where the applier reports what it does (Prometheus metrics in the runtime)."""

    def batch_applied(self, projection: str, result: BatchResult, seconds: float) -> None:
        """A batch committed."""
        ...

    def retried(self, projection: str, error: BaseException) -> None:
        """A batch failed for a reason that may pass and will be tried again."""
        ...

    def halted(self, projection: str, tp: TP, reason: str) -> None:
        """A partition stopped."""
        ...


class Stopping(Exception):
    """The worker is shutting down while a batch waits for Postgres; the batch was not applied."""


def is_transient(exc: BaseException) -> bool:
    """True for failures that retrying can fix: outages, dropped connections, deadlocks, missing tables.

    A missing table means the schema has not been migrated yet: retrying (loudly) lets a worker started
    before `esflow db migrate` catch up by itself. Constraint and data errors are bugs: not transient.
    """
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if not isinstance(exc.orig, psycopg.Error):
            return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        # Judged by the driver's error, like the ones the store and the upserts get from psycopg directly.
        exc = exc.orig
    if isinstance(exc, psycopg.Error):
        # Deadlocks, serialization failures, shutdowns and refused connections are OperationalErrors.
        if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
            return False
        transient = psycopg.OperationalError | psycopg.InterfaceError | psycopg.errors.UndefinedTable
        return isinstance(exc, transient)
    return isinstance(exc, ConnectionError | TimeoutError)


class _NullObserver:
    def batch_applied(self, projection: str, result: BatchResult, seconds: float) -> None:
        pass

    def retried(self, projection: str, error: BaseException) -> None:
        pass

    def halted(self, projection: str, tp: TP, reason: str) -> None:
        pass


class BatchApplier:
    """Decodes, applies and retries the batches of one projection; tracks its halted partitions."""

    def __init__(
        self,
        store: ProjectionStore,
        projection: Projection[Any],
        decoder: Decoder[Any],
        settings: ProjectionSettings,
        *,
        observer: Observer | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.decoder = decoder
        self.settings = settings
        self.observer: Observer = observer or _NullObserver()
        self.halted: dict[TP, str] = {}
        self._stop = threading.Event()
        # Waiting on the stop event, not time.sleep: a stop ends the back-off at once.
        self._sleep: Callable[[float], object] = sleep or self._stop.wait

    def stop(self) -> None:
        """Make waiting retries give up (raising :class:`Stopping`) so the worker can shut down."""
        self._stop.set()

    def process(self, raws: Sequence[RawEvent], *, lag: Mapping[TP, int] | None = None) -> BatchResult:
        """Apply one batch; blocks through outages, halts partitions that cannot progress."""
        started = time.perf_counter()
        # Events of a halted partition are not applied and not checkpointed: after a restart the
        # worker seeks back to the checkpoint and meets the same event again. Halts last as long as the
        # process: this worker skipped events of the partition, so a later batch of it (still buffered
        # after a rebalance) would jump over them; another worker (or a restart) reads it from the
        # checkpoint instead.
        raws = [r for r in raws if r.tp not in self.halted]
        items = prepare(self.projection, self.decoder, raws)
        try:
            result = self._with_retries(items, lag)
        except _Permanent as failed:
            result = self._partition_by_partition(items, lag, failed.error)
        for tp, reason in result.halted.items():
            self._halt(tp, reason, recorded=True)
        self.observer.batch_applied(self.projection.name, result, time.perf_counter() - started)
        return result

    def _with_retries(self, items: Sequence[Item], lag: Mapping[TP, int] | None) -> BatchResult:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_exponential(
                multiplier=self.settings.retry_initial_s, max=self.settings.retry_max_s
            ),
            sleep=self._pause,
            before_sleep=self._retrying,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if self._stop.is_set():
                        raise Stopping(f"projection {self.projection.name} is stopping")
                    return self.store.apply(
                        self.projection,
                        items,
                        halt_on_bad_input=self.settings.on_bad_input == "halt",
                        lag=lag,
                    )
        except Stopping:
            raise
        except Exception as exc:  # not transient: retrying the whole batch cannot help
            raise _Permanent(exc) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _pause(self, seconds: float) -> None:
        self._sleep(seconds)

    def _retrying(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:  # pragma: no cover - only failed attempts are retried
            return
        self.observer.retried(self.projection.name, exc)
        log.warning(
            "projection %s: batch failed, retrying in %.1fs: %s",
            self.projection.name,
            state.upcoming_sleep,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )

    def _partition_by_partition(
        self, items: Sequence[Item], lag: Mapping[TP, int] | None, first: BaseException
    ) -> BatchResult:
        merged = BatchResult()
        by_tp: dict[TP, list[Item]] = {}
        for item in items:
            by_tp.setdefault(item.raw.tp, []).append(item)
        for tp, part in sorted(by_tp.items()):
            try:
                result = self._with_retries(part, lag)
            except _Permanent as failed:
                self._halt(tp, _describe(failed.error), recorded=False)
                continue
            merged.applied += result.applied
            merged.skipped += result.skipped
            merged.dead_lettered += result.dead_lettered
            merged.halted.update(result.halted)
            merged.checkpoints.update(result.checkpoints)
        log.error(
            "projection %s: batch failed for good (%s); applied it partition by partition",
            self.projection.name,
            _describe(first),
        )
        return merged

    def _halt(self, tp: TP, reason: str, *, recorded: bool) -> None:
        if tp in self.halted:
            return
        self.halted[tp] = reason
        log.error(
            "projection %s HALTED partition %s[%d]: %s (fix the cause, then restart the worker)",
            self.projection.name,
            tp[0],
            tp[1],
            reason,
        )
        self.observer.halted(self.projection.name, tp, reason)
        if not recorded:
            try:
                self.store.mark_halted(self.projection.name, tp, reason)
            except Exception as exc:  # the halt itself is in memory and in the logs; the row is a courtesy
                log.warning("projection %s: could not record the halt in projection_status: %s", tp, exc)


class _Permanent(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return f"{type(orig if orig is not None else exc).__name__}: {text.splitlines()[0] if text else ''}"
