"""Running process definitions: one transactional loop (:mod:`processors.loop`) per process, one worker.

Each process is its own consumer group (``<group_prefix>-<name>``) with its own transactional id, so a
process can be scaled, restarted or fenced alone; a worker that runs several processes runs each loop on
its own thread (librdkafka calls release the GIL). Which definitions exist is the domain's
(:data:`esflow.domain.process.registry.PROCESS_TYPES`), built by :func:`available`; tests hand in their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from esflow.domain.process import ProcessDefinition
from esflow.domain.process.fulfilment import OrderFulfilment
from esflow.domain.process.registry import PROCESS_TYPES
from esflow.errors import ConfigError
from esflow.messaging.codec import Codec
from esflow.settings import Settings
from processors.loop import LoopOptions, TransactionalLoop
from processors.process.manager import ProcessStep, ProcessTopics
from processors.process.metrics import ProcessMetrics
from processors.process.store import StateTopicLoader

log = logging.getLogger("esflow.process")


def available(settings: Settings) -> dict[str, ProcessDefinition[Any]]:
    """Every process of the domain, constructed with the configured parameters."""
    made: dict[str, ProcessDefinition[Any]] = {}
    for name, kind in PROCESS_TYPES.items():
        if kind is OrderFulfilment:
            made[name] = OrderFulfilment(payment_window=timedelta(seconds=settings.process.payment_window_s))
        else:
            made[name] = kind()
    return made


def pick(
    names: Sequence[str], available: Mapping[str, ProcessDefinition[Any]]
) -> list[ProcessDefinition[Any]]:
    """The definitions named (all of them for ``all``), or a ConfigError naming the unknown ones."""
    if list(names) == ["all"]:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ConfigError(
            f"unknown processes: {', '.join(unknown) or '(none given)'}",
            hint=f"choose among {', '.join(sorted(available))} or `all`",
        )
    return [available[n] for n in names]


class ProcessWorker:
    """The loops of several processes in one OS process, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        definitions: Sequence[ProcessDefinition[Any]],
        *,
        codec: Codec | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec or Codec.from_settings(settings.schemas)
        self.metrics = metrics or ProcessMetrics()
        self.steps: dict[str, ProcessStep] = {}
        self.loops: dict[str, TransactionalLoop] = {}
        # The processor's batching and timeouts, with its own restore bound.
        options = replace(
            LoopOptions.from_processor(settings.processor),
            assign_timeout_s=settings.process.restore_timeout_s,
        )
        for definition in definitions:
            topics = ProcessTopics(definition.name, settings.topics, definition.subscribes())
            loader = StateTopicLoader(
                settings.kafka, topics.state, timeout_s=settings.process.restore_timeout_s
            )
            step = ProcessStep(definition, self.codec, topics, loader, metrics=self.metrics)
            self.steps[definition.name] = step
            self.loops[definition.name] = TransactionalLoop(
                settings,
                step,
                topics=topics.consumed,
                group_id=settings.process.group_id(definition.name),
                transactional_id=settings.process.transactional_id(definition.name),
                options=options,
                metrics=self.metrics,
                logger=logging.getLogger(f"esflow.process.{definition.name}"),
            )
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}

    def start(self) -> None:
        """Run every loop on its own thread."""
        for name, loop in self.loops.items():
            thread = threading.Thread(
                target=self._run, args=(name, loop), name=f"process-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _run(self, name: str, loop: TransactionalLoop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # reported by join(); the other loops are stopped with it
            log.exception("process %s stopped on an error", name)
            self.errors[name] = exc
            self.stop()

    def stop(self) -> None:
        """Ask every loop to finish its transaction and leave (safe from signal handlers)."""
        for loop in self.loops.values():
            loop.stop()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for every loop; re-raise the first error one of them stopped on."""
        for thread in self._threads:
            thread.join(timeout_s)
        for exc in self.errors.values():
            raise exc

    @property
    def alive(self) -> bool:
        """True while any loop runs."""
        return any(t.is_alive() for t in self._threads)
