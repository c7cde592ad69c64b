"""`esflow loadgen`: realistic domain traffic, open loop, with result latency percentiles.

Commands are generated before the clock starts (so generation never throttles sending) and sent open
loop: command *i* is due at ``start + i / rate``, and its latency is measured from when it was due, not
from when it was actually sent — a slow pipeline cannot hide its queueing delay (no coordinated
omission). Without a rate, commands go as fast as the producer takes them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from esflow import gctune
from esflow.client.sender import CommandClient
from esflow.domain.messages import CommandEnvelope
from esflow.errors import ResultTimeout
from esflow.messaging.results import CommandResult
from esflow.query.consistency import ConsistencyToken, ProjectionWaiter
from esflow.settings import Settings
from producers.workload import Planned, Workload


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class LoadReport:
    """What one load run measured."""

    planned: int
    sent: int = 0
    send_failures: int = 0
    results: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    send_seconds: float = 0.0
    total_seconds: float = 0.0
    target_rate: float | None = None
    result_latency_ms: list[float] = field(default_factory=list)
    projection_latency_ms: list[float] = field(default_factory=list)
    projection_unread: int = 0
    """Accepted commands left out of ``projection_latency_ms``: they wrote nothing the projection reads."""

    def lines(self) -> list[str]:
        """A human-readable summary."""
        lat = sorted(self.result_latency_ms)
        out = [
            f"commands: {self.sent} sent in {self.send_seconds:.2f}s "
            f"({self.sent / self.send_seconds if self.send_seconds else 0:,.0f}/s"
            + (f", target {self.target_rate:,.0f}/s" if self.target_rate else ", as fast as possible")
            + f"); {self.send_failures} not acknowledged",
            f"results: {self.results} in {self.total_seconds:.2f}s "
            f"({self.results / self.total_seconds if self.total_seconds else 0:,.0f}/s end to end); "
            f"accepted {self.accepted}, rejected {sum(self.rejected.values())}"
            + (
                " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.rejected.items())) + ")"
                if self.rejected
                else ""
            ),
        ]
        if lat:
            out.append(
                "command->result latency ms: "
                + ", ".join(f"p{q:g} {percentile(lat, q):.1f}" for q in (50, 90, 99, 99.9))
                + f", max {lat[-1]:.1f}"
            )
        plat = sorted(self.projection_latency_ms)
        if plat:
            out.append(
                "command->projection latency ms: "
                + ", ".join(f"p{q:g} {percentile(plat, q):.1f}" for q in (50, 90, 99))
                + f", max {plat[-1]:.1f}"
                + f" ({len(plat)} commands; {self.projection_unread} wrote nothing it reads)"
            )
        out.append(
            f"unexpected outcomes: {len(self.unexpected)}"
            + (f" (first: {self.unexpected[0]})" if self.unexpected else "")
        )
        return out


class ProjectionTracker:
    """Measures command->projection-visible latency: when a projection's checkpoints pass each result.

    One background thread reads the projection's checkpoints whenever the projection commits a batch
    (LISTEN, :meth:`ProjectionWaiter.changed`; at least every ``fallback_s``) and settles every pending
    result whose event offsets they have reached (one query for all pending results). It polled every
    5 ms before: 200 reads a second, a tenth of a core between this process and Postgres on the box
    whose latency it measured.

    Only results that wrote an event the projection reads count. A command of another aggregate (a
    deposit, when the projection is ``orders``) has nothing to become visible; it used to be settled
    at the tracker's next wake-up and counted, which made the figure the time to the projection's next
    commit (or the 0.25 s fallback, on an idle pipeline) rather than a latency. Such results are
    counted in ``unread`` instead.
    """

    def __init__(
        self,
        settings: Settings,
        projection: str,
        *,
        fallback_s: float = 0.25,
        waiter: ProjectionWaiter | None = None,
    ) -> None:
        self.projection = projection
        self._waiter = waiter or ProjectionWaiter(settings)
        self._fallback_s = fallback_s
        # Per partition, a heap of (offset, result) still to be reached; per result, how many of its
        # positions are not reached yet and when it was due. A poll pops only what the checkpoints
        # passed, so its cost follows what settled, not what is pending (thousands when a projection
        # is seconds behind).
        self._waiting: dict[tuple[str, int], list[tuple[int, int]]] = {}
        # Per result: [positions not reached yet, when it was due, 1.0 once one of them is a position
        # the projection reads].
        self._open: dict[int, list[float]] = {}
        self.unread = 0
        """Accepted results settled without a latency: none of their events is one the projection reads."""
        self._next_id = 0
        self._lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="esflow-projection-tracker", daemon=True)
        self._thread.start()

    def track(self, result: CommandResult, t_due: float) -> None:
        """Follow an accepted result into the projection (rejections wrote nothing)."""
        if result.status != "accepted" or not result.events:
            return
        self.follow(ConsistencyToken.from_result(result).positions, t_due)

    def follow(self, positions: Sequence[tuple[str, int, int]], t_due: float) -> None:
        """Count the latency from ``t_due`` once the checkpoints reached every (topic, partition, offset)."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._open[rid] = [float(len(positions)), t_due, 0.0]
            for topic, partition, offset in positions:
                heapq.heappush(self._waiting.setdefault((topic, partition), []), (offset, rid))

    @property
    def pending(self) -> int:
        """Results tracked and not visible yet."""
        with self._lock:
            return len(self._open)

    def _run(self) -> None:
        self._waiter.listen()
        while not self._stop.is_set():
            with self._lock:
                busy = bool(self._open)
            if busy:
                topics, have = self._waiter.checkpoints(self.projection)
                now = time.monotonic()
                # Only the partitions of the topics the projection reads count; with no live version
                # yet nothing is visible.
                if topics:
                    with self._lock:
                        for (topic, partition), heap in self._waiting.items():
                            reached = have.get((topic, partition), -1) if topic in topics else None
                            while heap and (reached is None or heap[0][0] <= reached):
                                _, rid = heapq.heappop(heap)
                                entry = self._open[rid]
                                entry[0] -= 1
                                if reached is not None:
                                    entry[2] = 1.0
                                if entry[0] == 0:
                                    if entry[2]:
                                        self.latencies_ms.append((now - entry[1]) * 1000)
                                    else:
                                        self.unread += 1
                                    del self._open[rid]
            self._waiter.changed(self.projection, self._fallback_s)

    def drain(self, timeout_s: float) -> int:
        """Wait until every tracked result is visible; returns how many are still pending."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.pending:
                return 0
            time.sleep(0.05)
        return self.pending

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(5)
        self._waiter.close()


def generate(count: int, *, reject_share: float, seed: int) -> list[Planned]:
    """``count`` planned commands of the reference workload."""
    return list(itertools.islice(Workload(reject_share=reject_share, seed=seed), count))


def run(
    settings: Settings,
    plans: list[Planned],
    *,
    rate: float | None = None,
    result_timeout_s: float = 60.0,
    projection: str | None = None,
    on_result: Callable[[CommandResult, float], None] | None = None,
) -> LoadReport:
    """Send ``plans`` (open loop at ``rate``/s, or flat out) and collect every result.

    With ``projection``, also measure when each accepted command became visible in that read model.
    ``on_result(result, due_monotonic)`` is called on the listener thread for each result.
    """
    tracker = ProjectionTracker(settings, projection) if projection else None
    # The generator's own collector must not stall what it measures: the plans and the results it
    # keeps are a large, growing, acyclic heap, and a full collection over it paused every thread here
    # (sender, result listener, projection tracker) for 100 ms to 1.3 s, late sends counted as latency
    # (ops/bench/pipeline.py: result p99 1,346 ms at 743/s in a run whose p50 was 48 ms).
    freezer = gctune.SurvivorFreezer()
    freezer.start()
    try:
        report = _run(settings, plans, rate, result_timeout_s, tracker, on_result, freezer)
        if tracker is not None:
            left = tracker.drain(result_timeout_s)
            if left:
                raise ResultTimeout(
                    f"{left} accepted commands not visible in {projection} after {result_timeout_s:.0f}s",
                    hint="is `esflow projector run` up?",
                )
            report.projection_latency_ms = list(tracker.latencies_ms)
            report.projection_unread = tracker.unread
        return report
    finally:
        freezer.stop()
        if tracker is not None:
            tracker.close()


def _run(
    settings: Settings,
    plans: list[Planned],
    rate: float | None,
    result_timeout_s: float,
    tracker: ProjectionTracker | None,
    on_result: Callable[[CommandResult, float], None] | None,
    freezer: gctune.SurvivorFreezer,
) -> LoadReport:
    report = LoadReport(planned=len(plans), target_rate=rate)
    due: dict[bytes, tuple[float, str]] = {}
    lock = threading.Lock()
    all_in = threading.Event()

    with CommandClient(settings) as client:
        listener = client._results()

        def arrived(result: CommandResult) -> None:
            now = time.monotonic()
            with lock:
                t_due, expect = due.pop(str(result.command_id).encode())
                report.results += 1
                report.result_latency_ms.append((now - t_due) * 1000)
                got = "accepted" if result.status == "accepted" else (result.reason or "?")
                if result.status == "accepted":
                    report.accepted += 1
                else:
                    report.rejected[got] += 1
                if got != expect:
                    report.unexpected.append(
                        f"{result.command_id}: expected {expect}, got {got} ({result.message})"
                    )
                if report.results == len(plans):
                    all_in.set()
            if tracker is not None:
                tracker.track(result, t_due)
            if on_result is not None:
                on_result(result, t_due)

        def delivered(env: CommandEnvelope) -> Callable[[KafkaError | None, Message], None]:
            def done(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    report.send_failures += 1
                else:
                    listener.sent(env, msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

            return done

        start = time.monotonic()
        for i, plan in enumerate(plans):
            t_due = start + i / rate if rate else time.monotonic()
            wait = t_due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            freezer.turn(idle=False)  # never idle: the listener and the tracker measure meanwhile
            cid = plan.envelope.metadata.command_id
            with lock:
                due[str(cid).encode()] = (t_due, plan.expect)
            listener.expect(plan.envelope, arrived)
            client._produce(plan.envelope, delivered(plan.envelope))
            client._producer.poll(0)
        client._producer.flush(30)
        report.sent = len(plans) - report.send_failures
        report.send_seconds = time.monotonic() - start
        if plans and not all_in.wait(result_timeout_s):
            missing = len(plans) - report.results
            raise ResultTimeout(
                f"{missing} of {len(plans)} commands had no result after {result_timeout_s:.0f}s",
                hint="is the command processor running? (`esflow processor run`)",
            )
        report.total_seconds = time.monotonic() - start
    return report
