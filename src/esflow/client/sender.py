"""The command SDK (the library's command bus): validate, encode and publish commands, sync and asyncio.

``send`` returns once the broker acknowledged the command (idempotent producer, ``acks=all``); nothing
leaves the process unless the command validated. Keys are aggregate ids, so one aggregate's commands
stay in order on one partition (murmur2, like Java clients and Faust).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from confluent_kafka import KafkaError, Message, Producer

from esflow.client.commands import envelope as make_envelope
from esflow.client.results import ResultListener
from esflow.domain.messages import Command, CommandEnvelope
from esflow.errors import DeliveryFailed, ResultTimeout
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import producer_config
from esflow.messaging.results import CommandResult
from esflow.messaging.scheduling import due_millis, schedule_headers
from esflow.messaging.topics import command_topic, scheduled_topic
from esflow.settings import Settings, load_settings


@dataclass(frozen=True)
class SendReceipt:
    """Where the broker stored a command."""

    command_id: UUID
    aggregate_id: UUID
    command_type: str
    topic: str
    partition: int
    offset: int


def _as_envelope(
    command: Command | CommandEnvelope, aggregate_id: UUID | None, meta: dict[str, Any]
) -> CommandEnvelope:
    if isinstance(command, CommandEnvelope):
        if aggregate_id is not None or meta:
            raise TypeError("pass metadata either in the envelope or as arguments, not both")
        return command
    return make_envelope(command, aggregate_id, **meta)


def _failure(env: CommandEnvelope, err: KafkaError, bootstrap: str) -> DeliveryFailed:
    if err.code() == KafkaError._MSG_TIMED_OUT:
        return DeliveryFailed(
            f"the broker at {bootstrap} did not acknowledge {env.command.type_name()} "
            f"{env.metadata.command_id} in time",
            hint="is Kafka up? try `esflow stack status`",
        )
    return DeliveryFailed(
        f"the broker refused {env.command.type_name()} {env.metadata.command_id}: {err.str()}"
    )


def _outcome(
    env: CommandEnvelope, err: KafkaError | None, msg: Message, bootstrap: str
) -> SendReceipt | DeliveryFailed:
    """The receipt (or failure) a delivery report means for ``env``."""
    if err is not None:
        return _failure(env, err, bootstrap)
    return SendReceipt(
        env.metadata.command_id,
        env.metadata.aggregate_id,
        env.command.type_name(),
        msg.topic() or "",
        msg.partition() or 0,
        msg.offset() or 0,
    )


class CommandClient:
    """Publishes commands; one instance per process is enough (it is thread-safe)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        codec: Codec | None = None,
        delivery_timeout_s: float = 30.0,
        **producer_overrides: Any,
    ) -> None:
        self.settings = settings or load_settings()
        self.codec = codec or Codec.from_settings(self.settings.schemas)
        self.delivery_timeout_s = delivery_timeout_s
        self._bootstrap = self.settings.kafka.bootstrap_servers
        self._producer = Producer(
            producer_config(
                self.settings.kafka,
                # librdkafka retries until this passes, then reports the failure to the callback.
                **{
                    "message.timeout.ms": int(delivery_timeout_s * 1000),
                    "log_level": 2,
                    **producer_overrides,
                },
            )
        )
        self._listener: ResultListener | None = None
        self._listener_lock = threading.Lock()

    def _results(self) -> ResultListener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = ResultListener(self.settings)
            return self._listener

    def topic_for(self, env: CommandEnvelope) -> str:
        """The command topic of the envelope's aggregate type."""
        return command_topic(env.metadata.aggregate_type, self.settings.topics)

    def _produce(
        self,
        env: CommandEnvelope,
        on_done: Callable[[KafkaError | None, Message], None],
        not_before: datetime | None = None,
    ) -> None:
        topic = self.topic_for(env)
        value = self.codec.encode(env, topic=topic)
        headers: list[tuple[str, str | bytes | None]] = list(self.codec.headers(env))
        destination = topic
        if not_before is not None:
            # The record its command topic would hold, parked with a due time: the scheduler delivers it
            # unchanged (same key, so one aggregate's scheduled commands stay in order).
            headers.extend(schedule_headers(not_before, topic))
            destination = scheduled_topic(self.settings.topics)
        while True:
            try:
                self._producer.produce(
                    destination,
                    value=value,
                    key=self.codec.key(env),
                    headers=headers,
                    on_delivery=on_done,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)

    def send(
        self,
        command: Command | CommandEnvelope,
        aggregate_id: UUID | None = None,
        *,
        not_before: datetime | None = None,
        **metadata: Any,
    ) -> SendReceipt:
        """Validate, publish and wait for the broker's acknowledgement.

        ``metadata``: ``expected_version``, ``command_id``, ``correlation_id``, ``causation_id``.
        ``not_before`` (timezone-aware) schedules the command: it goes to ``scheduled-commands`` and the
        scheduler (``esflow scheduler run``) delivers it to its command topic once due; the receipt then
        names the scheduled-commands position.
        Raises :class:`~esflow.errors.CommandValidationError` before sending, or
        :class:`~esflow.errors.DeliveryFailed` when the broker did not acknowledge.
        """
        env = _as_envelope(command, aggregate_id, metadata)
        return self.send_many([env], not_before=not_before)[0]

    def send_many(
        self,
        envelopes: Iterable[CommandEnvelope],
        *,
        on_ack: Callable[[SendReceipt | DeliveryFailed], None] | None = None,
        raise_on_failure: bool = True,
        not_before: datetime | None = None,
    ) -> list[SendReceipt]:
        """Publish many commands pipelined (bulk loads); returns receipts in input order.

        With ``raise_on_failure=False`` failures go only to ``on_ack`` and are left out of the result.
        ``not_before``: schedule them all (see :meth:`send`).
        """
        if not_before is not None:
            due_millis(not_before)  # refuses a naive time before anything is sent
        envs = list(envelopes)
        outcomes: list[SendReceipt | DeliveryFailed | None] = [None] * len(envs)

        def callback(i: int) -> Callable[[KafkaError | None, Message], None]:
            def done(err: KafkaError | None, msg: Message) -> None:
                result = _outcome(envs[i], err, msg, self._bootstrap)
                outcomes[i] = result
                if on_ack is not None:
                    on_ack(result)

            return done

        for i, env in enumerate(envs):
            self._produce(env, callback(i), not_before)
            self._producer.poll(0)
        remaining = self._producer.flush(self.delivery_timeout_s + 5)
        if remaining:
            raise DeliveryFailed(
                f"{remaining} commands still unacknowledged after {self.delivery_timeout_s:.0f}s"
            )
        failures = [o for o in outcomes if isinstance(o, DeliveryFailed)]
        if failures and raise_on_failure:
            raise failures[0]
        return [o for o in outcomes if isinstance(o, SendReceipt)]

    def send_and_wait(
        self,
        command: Command | CommandEnvelope,
        aggregate_id: UUID | None = None,
        *,
        timeout: float = 30.0,
        **metadata: Any,
    ) -> CommandResult:
        """Send a command and return its result: accepted (version, event offsets) or rejected (reason).

        Raises :class:`~esflow.errors.ResultTimeout` when no result arrives within ``timeout`` seconds.
        """
        env = _as_envelope(command, aggregate_id, metadata)
        return self.send_many_and_wait([env], timeout=timeout)[0]

    def send_many_and_wait(
        self, envelopes: Sequence[CommandEnvelope], *, timeout: float = 60.0
    ) -> list[CommandResult]:
        """Send commands pipelined and return their results in input order.

        A command the processor dead-lettered (malformed, misrouted) comes back as ``rejected`` with the
        bad-input reason, taken from the report for the exact position the broker stored it at.
        """
        listener = self._results()
        results: dict[UUID, CommandResult] = {}
        all_in = threading.Event()
        lock = threading.Lock()
        wanted = {env.metadata.command_id for env in envelopes}

        def arrived(result: CommandResult) -> None:
            with lock:
                results[result.command_id] = result
                if len(results) == len(wanted):
                    all_in.set()

        def acked(receipt: SendReceipt | DeliveryFailed) -> None:
            if isinstance(receipt, SendReceipt):
                listener.sent(by_id[receipt.command_id], receipt.topic, receipt.partition, receipt.offset)

        by_id = {env.metadata.command_id: env for env in envelopes}
        # Waiters are registered before the send, so no result can slip past.
        for env in envelopes:
            listener.expect(env, arrived)
        try:
            self.send_many(envelopes, on_ack=acked)
            if not all_in.wait(timeout):
                missing = [e for e in envelopes if e.metadata.command_id not in results]
                first = missing[0]
                raise ResultTimeout(
                    f"no result for {len(missing)} of {len(envelopes)} commands within {timeout:.0f}s "
                    f"(first: {first.command.type_name()} {first.metadata.command_id})",
                    hint="is the command processor running? (`esflow processor run`)",
                )
        finally:
            for env in envelopes:
                listener.forget(env)
        return [results[env.metadata.command_id] for env in envelopes]

    def close(self) -> None:
        """Deliver anything still queued and stop waiting for results."""
        self._producer.flush(self.delivery_timeout_s)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCommandClient:
    """The asyncio flavour: ``await send(...)``; delivery reports are served by a background thread."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self._sync = CommandClient(settings, **kwargs)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="esflow-producer-poll", daemon=True)
        self._poller.start()

    @property
    def settings(self) -> Settings:
        """The settings in use."""
        return self._sync.settings

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._sync._producer.poll(0.1)

    async def send(
        self,
        command: Command | CommandEnvelope,
        aggregate_id: UUID | None = None,
        *,
        not_before: datetime | None = None,
        **metadata: Any,
    ) -> SendReceipt:
        """Validate, publish and await the broker's acknowledgement (``not_before``: see CommandClient)."""
        env = _as_envelope(command, aggregate_id, metadata)
        return (await self.send_many([env], not_before=not_before))[0]

    async def send_many(
        self, envelopes: Sequence[CommandEnvelope], *, not_before: datetime | None = None
    ) -> list[SendReceipt]:
        """Publish many commands; resolves when all are acknowledged (raises the first failure)."""
        if not_before is not None:
            due_millis(not_before)  # refuses a naive time before anything is sent
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in envelopes]

        def resolver(
            fut: asyncio.Future[SendReceipt], env: CommandEnvelope
        ) -> Callable[[KafkaError | None, Message], None]:
            def done(err: KafkaError | None, msg: Message) -> None:
                loop.call_soon_threadsafe(_settle, fut, _outcome(env, err, msg, self._sync._bootstrap))

            return done

        for fut, env in zip(futures, envelopes, strict=True):
            self._sync._produce(env, resolver(fut, env), not_before)
        return list(await asyncio.gather(*futures))

    async def send_and_wait(
        self,
        command: Command | CommandEnvelope,
        aggregate_id: UUID | None = None,
        *,
        timeout: float = 30.0,
        **metadata: Any,
    ) -> CommandResult:
        """Send a command and await its result (see :meth:`CommandClient.send_and_wait`)."""
        env = _as_envelope(command, aggregate_id, metadata)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CommandResult] = loop.create_future()
        listener = await asyncio.to_thread(self._sync._results)
        listener.expect(env, lambda r: loop.call_soon_threadsafe(_settle_result, fut, r))
        try:
            receipt = await self.send(env)
            listener.sent(env, receipt.topic, receipt.partition, receipt.offset)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise ResultTimeout(
                f"no result for {env.command.type_name()} {env.metadata.command_id} within {timeout:.0f}s",
                hint="is the command processor running? (`esflow processor run`)",
            ) from exc
        finally:
            listener.forget(env)

    async def close(self) -> None:
        """Deliver anything queued and stop the poll thread."""
        await asyncio.to_thread(self._sync.close)
        self._closing.set()
        await asyncio.to_thread(self._poller.join)

    async def __aenter__(self) -> AsyncCommandClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _settle(fut: asyncio.Future[SendReceipt], outcome: SendReceipt | DeliveryFailed) -> None:
    if fut.done():
        return
    if isinstance(outcome, DeliveryFailed):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def _settle_result(fut: asyncio.Future[CommandResult], result: CommandResult) -> None:
    if not fut.done():
        fut.set_result(result)
