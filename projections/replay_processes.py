"""The replayer's forked processes: start them, merge what they report, stop them, surface their errors.

:class:`~projections.replay.Replayer` splits a large replay by partition over a few processes; this
module runs them. Each child calls the replayer's ``work`` with a :class:`Child` (how it reports a
batch, whether it should stop, an observer forwarding to the parent's) and sends typed messages back
over one multiprocessing queue: :class:`Progressed`, :class:`Observed`, :class:`Finished`,
:class:`Failed`.

The processes are forked (the projection and decoder need not be picklable, a child starts in
milliseconds); the parent's own Kafka client must be closed before, each child opens its own
connections. Children ignore SIGINT/SIGTERM: the parent, told to ``stop``, tells them, and they return
after their batch in flight; a parent that dies takes them along (``PR_SET_PDEATHSIG``: SIGKILL), so a
killed rebuild leaves no replay behind, only committed batches to resume from.
"""

from __future__ import annotations

import contextlib
import enum
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from esflow import errors
from esflow.errors import EsflowError, ProjectionError
from esflow.readmodel.applier import Observer, Stopping
from esflow.readmodel.projection import TP
from esflow.readmodel.store import BatchResult

P = TypeVar("P")

_CHILD_STOP_GRACE_S = 120.0
"""How long a stopping replay waits for its processes' batches in flight before killing them."""
_POLL_S = 0.2
"""How long the parent waits for a message before it looks at its children, ``stop`` and the deadline."""


# ---------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Progressed(Generic[P]):
    """A child committed a batch; ``batch`` is what the replayer's shard reports about it."""

    index: int
    batch: P


class ObserverCall(enum.Enum):
    """The :class:`~esflow.readmodel.applier.Observer` method a child's applier called."""

    BATCH_APPLIED = "batch_applied"
    RETRIED = "retried"
    HALTED = "halted"


@dataclass(frozen=True)
class Observed:
    """A child's applier reported to its observer; the parent replays the call on its own."""

    index: int
    call: ObserverCall
    result: BatchResult | None = None
    seconds: float = 0.0
    error: str = ""
    tp: TP | None = None
    reason: str = ""


@dataclass(frozen=True)
class Finished:
    """A child reached its goal (or was told to stop) after its last batch; its partitions' lags."""

    index: int
    lags: dict[TP, int]


@dataclass(frozen=True)
class Failed:
    """A child failed; the error by type name, message and hint (rebuilt in the parent)."""

    index: int
    error_type: str
    message: str
    hint: str | None


Message = Progressed[P] | Observed | Finished | Failed

if TYPE_CHECKING:  # not subscriptable at run time
    Inbox = multiprocessing.queues.Queue[Message[Any]]


# ---------------------------------------------------------------------------------------- child side


class Flag:
    """A flag in shared memory that the parent sets and replay processes poll.

    Not a ``multiprocessing.Event``: setting one waits for every process sleeping in ``wait()`` to wake,
    forever if one of them has exited meanwhile.
    """

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        """Raise the flag."""
        self._value.value = 1

    def is_set(self) -> bool:
        """True once raised."""
        return bool(self._value.value)


class Child(Generic[P]):
    """What a replay process's ``work`` gets: its index, how to report, whether to stop."""

    def __init__(
        self, index: int, inbox: Inbox, stop_flag: Flag, abort_flag: Flag, parent: int, observe: bool
    ) -> None:
        self.index = index
        self._inbox = inbox
        self._stop_flag = stop_flag
        self._abort_flag = abort_flag
        self.parent = parent
        """The replaying process (the child exits when it is gone)."""
        self.observer: Observer | None = _ForwardingObserver(inbox, index) if observe else None
        """The applier's observer: forwards every call to the parent's (None when it has none)."""

    def report(self, batch: P) -> None:
        """Tell the parent a batch committed."""
        self._inbox.put(Progressed(self.index, batch))

    def should_stop(self) -> bool:
        """True once the parent asks the replay to stop; raises when the parent is gone."""
        if os.getppid() != self.parent:
            raise ProjectionError("the replaying process is gone")
        return self._stop_flag.is_set()

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from a thread) when the parent's deadline passes: stuck retries give up."""

        def watch() -> None:
            while not self._abort_flag.is_set():
                time.sleep(0.1)
            callback()

        threading.Thread(target=watch, daemon=True).start()


class _ForwardingObserver:
    """The applier's observer in a replay process: hands every call to the parent's observer."""

    def __init__(self, inbox: Inbox, index: int) -> None:
        self.inbox = inbox
        self.index = index

    def batch_applied(self, projection: str, result: BatchResult, seconds: float) -> None:
        self.inbox.put(Observed(self.index, ObserverCall.BATCH_APPLIED, result=result, seconds=seconds))

    def retried(self, projection: str, error: BaseException) -> None:
        text = str(error) or type(error).__name__
        self.inbox.put(Observed(self.index, ObserverCall.RETRIED, error=text))

    def halted(self, projection: str, tp: TP, reason: str) -> None:
        self.inbox.put(Observed(self.index, ObserverCall.HALTED, tp=tp, reason=reason))


def _child_main(work: Callable[[Child[Any]], dict[TP, int]], child: Child[Any], inbox: Inbox) -> None:
    """The body of one replay process: ``work``, then Finished or Failed to the parent."""
    # Stopping is the parent's business (its caller's ``stop``, e.g. the CLI's SIGINT/SIGTERM
    # handler, sets the stop flag), even when a signal reaches the whole process group (Ctrl-C,
    # systemd): the batch in flight commits. A parent that dies takes the children along.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(child.parent)
    try:
        inbox.put(Finished(child.index, work(child)))
    except BaseException as exc:  # reported to the parent, which raises it
        if isinstance(exc, EsflowError):
            inbox.put(Failed(child.index, type(exc).__name__, exc.message, exc.hint))
        else:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            inbox.put(Failed(child.index, type(exc).__name__, f"{type(exc).__name__}: {text}", None))
    finally:
        inbox.close()
        inbox.join_thread()


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), as a SIGKILLed rebuild must."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # died before the request took effect
        os._exit(1)


# ---------------------------------------------------------------------------------------- parent side


def run_forked(
    count: int,
    work: Callable[[Child[P]], dict[TP, int]],
    *,
    projection: str,
    on_batch: Callable[[P], None],
    on_finished: Callable[[dict[TP, int]], None],
    observer: Observer | None,
    stop: threading.Event | None,
    deadline: float | None,
    known_errors: Mapping[str, type[EsflowError]],
) -> bool:
    """Run ``work`` in ``count`` forked processes (``Child.index`` 0..count-1) until all have finished.

    ``on_batch`` and ``on_finished`` get what the children report, in this process. ``stop`` makes
    them return after their batch in flight; past ``deadline`` they do too, and batches stuck retrying
    give up. Returns True when the deadline expired; raises the first child's error (as the same esflow
    error type, ``known_errors`` adding types by name) once all have ended.
    """
    # fork, not spawn: the projection and decoder objects (compiled codec readers, test doubles) need
    # not be picklable, and a child starts in milliseconds.
    ctx = multiprocessing.get_context("fork")
    inbox: Inbox = ctx.Queue()
    stop_flag, abort_flag = Flag(ctx), Flag(ctx)
    parent = os.getpid()
    children = [
        ctx.Process(
            target=_child_main,
            args=(work, Child(i, inbox, stop_flag, abort_flag, parent, observer is not None), inbox),
            name=f"replay-{projection}-{i}",
            daemon=True,
        )
        for i in range(count)
    ]
    finished: set[int] = set()
    failures: list[BaseException] = []

    def handle(message: Message[P]) -> None:
        match message:
            case Progressed(batch=batch):
                on_batch(batch)
            case Observed():
                _replay_call(observer, projection, message)
            case Finished(index=index, lags=lags):
                finished.add(index)
                on_finished(lags)
            case Failed(index=index):
                finished.add(index)
                failures.append(_rebuilt(message, known_errors))
                stop_flag.set()  # the others stop after their batch in flight

    def drain(wait_s: float) -> bool:
        """Handle the messages that came; False when none came within ``wait_s``."""
        try:
            handle(inbox.get(timeout=wait_s))
        except queue.Empty:
            return False
        with contextlib.suppress(queue.Empty):
            while True:
                handle(inbox.get_nowait())
        return True

    expired = False
    try:
        for child in children:
            child.start()
        while len(finished) < len(children):
            drain(_POLL_S)
            for i, child in enumerate(children):
                if i in finished or child.exitcode is None:
                    continue
                while drain(0.5):  # what it sent before exiting
                    pass
                if i not in finished:
                    finished.add(i)
                    failures.append(
                        ProjectionError(
                            f"replay process {child.name} died (exit code {child.exitcode})",
                            hint="its partitions resume from their checkpoints on the next run",
                        )
                    )
                    stop_flag.set()
            if stop is not None and stop.is_set():
                stop_flag.set()
            if deadline is not None and time.monotonic() > deadline and not expired:
                expired = True
                stop_flag.set()
                abort_flag.set()  # batches stuck retrying give up
    finally:
        # Normally every child has finished already. Otherwise (an error here, Ctrl-C) they stop after
        # their batch in flight; keep reading so none blocks on a full pipe.
        stop_flag.set()
        grace = time.monotonic() + _CHILD_STOP_GRACE_S
        for child in children:
            while child.is_alive() and time.monotonic() < grace:
                with contextlib.suppress(Exception):
                    drain(0.1)
                child.join(0.1)
            if child.is_alive():  # pragma: no cover - a batch stuck for minutes
                child.kill()
            child.join()
        inbox.close()
    if failures and not expired:
        raise failures[0]
    return expired


def _replay_call(observer: Observer | None, projection: str, observed: Observed) -> None:
    """Make the call a child's applier made on the parent's observer (its failures are not the replay's)."""
    if observer is None:
        return
    with contextlib.suppress(Exception):
        match observed.call:
            case ObserverCall.BATCH_APPLIED if observed.result is not None:
                observer.batch_applied(projection, observed.result, observed.seconds)
            case ObserverCall.RETRIED:
                observer.retried(projection, ProjectionError(observed.error))
            case ObserverCall.HALTED if observed.tp is not None:
                observer.halted(projection, observed.tp, observed.reason)


def _rebuilt(failed: Failed, known: Mapping[str, type[EsflowError]]) -> BaseException:
    """The error a replay process reported, as the same esflow error type where there is one."""
    if failed.error_type == "Stopping":
        return Stopping(failed.message)
    cls = known.get(failed.error_type) or getattr(errors, failed.error_type, None)
    if isinstance(cls, type) and issubclass(cls, EsflowError):
        with contextlib.suppress(TypeError):
            return cls(failed.message, hint=failed.hint)
    return ProjectionError(failed.message, hint=failed.hint)
