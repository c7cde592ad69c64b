"""`esflow send`, `esflow tail`, `esflow aggregate …`: commands and the log from the shell.

Expected failures print one line naming the problem (and the line number, for files) and exit
non-zero; a file with some bad lines still sends the good ones and reports the bad ones.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Consumer, TopicPartition

from esflow.client.commands import from_json
from esflow.client.preflight import require_processor
from esflow.client.sender import CommandClient, SendReceipt
from esflow.domain.aggregates import AGGREGATES as AGGREGATE_TYPES
from esflow.domain.messages import CommandEnvelope, EventEnvelope
from esflow.errors import ClientError, CodecError, CommandValidationError, EsflowError, translated
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, read_to_end
from esflow.messaging.results import CommandResult
from esflow.messaging.topics import AGGREGATES, command_topic, event_topic
from esflow.query.consistency import require_projection
from esflow.settings import Settings, load_settings


def _receipt_json(r: SendReceipt) -> str:
    return json.dumps(
        {
            "command_id": str(r.command_id),
            "aggregate_id": str(r.aggregate_id),
            "type": r.command_type,
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
        }
    )


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandValidationError(
            f"{where}invalid JSON: {exc.msg} (column {exc.colno})", [exc.msg]
        ) from exc
    if not isinstance(raw, dict):
        raise CommandValidationError(
            f"{where}expected a JSON object, got {type(raw).__name__}", ["not an object"]
        )
    return raw


def _result_json(r: CommandResult) -> str:
    return r.model_dump_json(exclude_defaults=True)


def _require_processor_for(settings: Settings, envelopes: list[CommandEnvelope]) -> None:
    # Waiting with no processor could only end in the result timeout; say so in seconds instead.
    wanted = {command_topic(e.metadata.aggregate_type, settings.topics) for e in envelopes}
    if wanted:
        require_processor(settings, wanted)


@click.command()
@click.argument("command_type", required=False)
@click.option("--json", "json_text", help="The command as one JSON object (fields + optional metadata).")
@click.option(
    "--file",
    "file_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSONL file, one command a line ('type' key per line, or COMMAND_TYPE for all).",
)
@click.option("--wait", is_flag=True, help="Wait for each command's result from the processor.")
@click.option(
    "--at",
    "at_text",
    metavar="ISO-TIME",
    help="Deliver the commands at this time (ISO 8601 with a UTC offset, e.g. 2030-01-01T09:00:00Z); "
    "`esflow scheduler run` delivers them.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for results.",
)
def send(
    command_type: str | None,
    json_text: str | None,
    file_path: Path | None,
    wait: bool,
    at_text: str | None,
    timeout: float,
) -> None:
    """Validate and publish commands; prints one JSON receipt (or, with --wait, result) per command.

    Metadata keys in the JSON: aggregate_id, expected_version, command_id, correlation_id, causation_id.
    With --wait the exit code is 2 when a command was rejected, and the command processor must be
    running: with no member in its consumer group the command is not sent and the exit code is 1.
    """
    if (json_text is None) == (file_path is None):
        raise click.UsageError("give exactly one of --json or --file")
    at = _parse_at(at_text) if at_text is not None else None
    if at is not None and wait:
        raise click.UsageError("--at and --wait do not go together: the result comes when the command is due")
    if json_text is not None:
        env = from_json(command_type, _parse_json(json_text, ""))
        settings = load_settings()
        if wait:
            _require_processor_for(settings, [env])
        with CommandClient(settings) as client:
            if not wait:
                click.echo(_receipt_json(client.send(env, not_before=at)))
                return
            result = client.send_and_wait(env, timeout=timeout)
        click.echo(_result_json(result))
        if result.status == "rejected":
            click.echo(f"esflow: rejected: {result.reason}: {result.message}", err=True)
            sys.exit(2)
        return
    assert file_path is not None
    _send_file(command_type, file_path, wait=wait, timeout=timeout, at=at)


def _parse_at(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--at") from exc
    if at.tzinfo is None or at.utcoffset() is None:
        raise click.BadParameter(f"{text!r} has no UTC offset (add Z or +01:00)", param_hint="--at")
    return at


def _send_file(
    command_type: str | None, path: Path, *, wait: bool, timeout: float, at: datetime | None = None
) -> None:
    envelopes: list[CommandEnvelope] = []
    bad: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            envelopes.append(from_json(command_type, _parse_json(line, "")))
        except ClientError as exc:
            bad.append(f"{path.name}:{number}: {exc.one_line()}")
    for message in bad:
        click.echo(f"esflow: error: {message}", err=True)
    failed: list[str] = []
    settings = load_settings()
    if wait:
        _require_processor_for(settings, envelopes)
    with CommandClient(settings) as client:
        if wait:
            results = client.send_many_and_wait(envelopes, timeout=timeout) if envelopes else []
            for r in results:
                click.echo(_result_json(r))
            accepted = sum(1 for r in results if r.status == "accepted")
            reasons = Counter(r.reason or "?" for r in results if r.status == "rejected")
            detail = ", ".join(f"{k} {n}" for k, n in sorted(reasons.items()))
            rejected = f"rejected {sum(reasons.values())}" + (f" ({detail})" if detail else "")
            click.echo(f"accepted {accepted}; {rejected}; invalid {len(bad)}", err=True)
            if bad:
                sys.exit(1)
            if reasons:
                sys.exit(2)
            return
        with click.progressbar(length=len(envelopes), label="sending", file=sys.stderr) as bar:

            def on_ack(outcome: SendReceipt | EsflowError) -> None:
                bar.update(1)
                if isinstance(outcome, EsflowError):
                    failed.append(outcome.one_line())

            sent = client.send_many(envelopes, on_ack=on_ack, raise_on_failure=False, not_before=at)
    for receipt in sent:
        click.echo(_receipt_json(receipt))
    for message in failed:
        click.echo(f"esflow: error: {message}", err=True)
    by_type = Counter(receipt.command_type for receipt in sent)
    summary = ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) or "none"
    click.echo(f"sent {len(sent)} ({summary}); invalid {len(bad)}; not acknowledged {len(failed)}", err=True)
    if bad or failed:
        sys.exit(1)


def _render(env: CommandEnvelope | EventEnvelope, msg: Any) -> str:
    body = env.event if isinstance(env, EventEnvelope) else env.command
    return json.dumps(
        {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "type": body.type_name(),
            "metadata": env.metadata.model_dump(mode="json"),
            "payload": body.model_dump(mode="json"),
        }
    )


@click.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message instead of the end.")
@click.option("--max", "max_messages", type=int, default=0, help="Stop after this many messages (0: never).")
@click.option("--idle-timeout", type=float, default=0, help="Stop after this many seconds without a message.")
def tail(topic: str, from_beginning: bool, max_messages: int, idle_timeout: float) -> None:
    """Print the decoded messages of a topic live, one JSON object per line (read_committed)."""
    settings = load_settings()
    codec = Codec.from_settings(settings.schemas)
    consumer = Consumer(consumer_config(settings.kafka, f"esflow-tail-{uuid.uuid4().hex[:8]}"))
    try:
        with translated(f"reading the metadata of {topic}"):
            md = consumer.list_topics(topic, timeout=10)
    except EsflowError:
        consumer.close()
        raise
    if topic not in md.topics or md.topics[topic].error is not None:
        consumer.close()
        raise ClientError(f"topic {topic} does not exist", hint="see `esflow topics list`")
    start = -2 if from_beginning else -1  # OFFSET_BEGINNING / OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in md.topics[topic].partitions])
    seen = 0
    idle = 0.0
    try:
        while not max_messages or seen < max_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if idle_timeout and idle >= idle_timeout:
                    break
                continue
            idle = 0.0
            if msg.error():
                continue
            seen += 1
            try:
                click.echo(_render(codec.decode_message(msg), msg))
            except CodecError as exc:
                click.echo(
                    json.dumps(
                        {"offset": msg.offset(), "partition": msg.partition(), "error": exc.one_line()}
                    )
                )
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@click.group()
def aggregate() -> None:
    """Inspect one aggregate through the log of record."""


@aggregate.command()
@click.argument("aggregate_type", type=click.Choice(AGGREGATES))
@click.argument("aggregate_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event instead of a table.")
def history(aggregate_type: str, aggregate_id: uuid.UUID, as_json: bool) -> None:
    """Every event of one aggregate: version, time, type, command and correlation ids."""
    events = load_history(aggregate_type, aggregate_id)
    if not events:
        raise ClientError(f"no events for {aggregate_type} {aggregate_id}")
    if as_json:
        for env in events:
            click.echo(
                json.dumps(
                    {
                        "type": env.event.type_name(),
                        "metadata": env.metadata.model_dump(mode="json"),
                        "payload": env.event.model_dump(mode="json"),
                    }
                )
            )
        return
    click.echo(f"{'ver':>4}  {'occurred_at (UTC)':<26}  {'type':<24}  {'command_id':<36}  correlation_id")
    for env in events:
        m = env.metadata
        click.echo(
            f"{m.aggregate_version:>4}  {m.occurred_at.isoformat(timespec='microseconds')[:26]:<26}  "
            f"{env.event.type_name():<24}  {m.command_id!s:<36}  {m.correlation_id}"
        )


@aggregate.command()
@click.argument("aggregate_type", type=click.Choice(AGGREGATES))
@click.argument("aggregate_id", type=click.UUID)
@click.option("--version", "at_version", type=click.IntRange(min=1), help="State after this version.")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="State as of this instant (ISO 8601; no zone means UTC).",
)
def state(
    aggregate_type: str, aggregate_id: uuid.UUID, at_version: int | None, as_of: datetime | None
) -> None:
    """An aggregate's state, rebuilt by folding its events (at a version or an instant, or now)."""
    if at_version is not None and as_of is not None:
        raise click.UsageError("give at most one of --version and --as-of")
    events = load_history(aggregate_type, aggregate_id)
    if not events:
        raise ClientError(f"no events for {aggregate_type} {aggregate_id}")
    if at_version is not None:
        if at_version > events[-1].metadata.aggregate_version:
            raise ClientError(
                f"{aggregate_type} {aggregate_id} has only {events[-1].metadata.aggregate_version} versions"
            )
        events = [e for e in events if e.metadata.aggregate_version <= at_version]
    if as_of is not None:
        instant = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        events = [e for e in events if e.metadata.occurred_at <= instant]
        if not events:
            raise ClientError(f"{aggregate_type} {aggregate_id} did not exist yet at {instant.isoformat()}")
    folded = AGGREGATE_TYPES[aggregate_type].fold([e.event for e in events])
    last = events[-1].metadata
    click.echo(
        json.dumps(
            {
                "aggregate_type": aggregate_type,
                "aggregate_id": str(aggregate_id),
                "version": last.aggregate_version,
                "as_of": last.occurred_at.isoformat(),
                "state": folded.model_dump(mode="json") if folded is not None else None,
            },
            indent=2,
        )
    )


def load_history(aggregate_type: str, aggregate_id: uuid.UUID) -> list[EventEnvelope]:
    """One aggregate's events in version order, read from its partition of the event topic."""
    settings = load_settings()
    codec = Codec.from_settings(settings.schemas)
    topic = event_topic(aggregate_type, settings.topics)
    key = str(aggregate_id).encode()
    events = [
        codec.decode(
            msg.value() or b"", kind="event", topic=topic, partition=msg.partition(), offset=msg.offset()
        )
        for msg in read_to_end(settings.kafka, topic, key=key)
        if msg.key() == key
    ]
    return sorted(events, key=lambda e: e.metadata.aggregate_version)


@click.command()
@click.option(
    "--count", type=click.IntRange(min=1), default=10_000, show_default=True, help="Commands per run."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    help="Commands/s, open loop (0: as fast as possible).",
)
@click.option("--reject-share", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds to wait for results.",
)
@click.option("--projection", help="Also measure command->visible latency in this read model.")
@click.option(
    "--sweep",
    is_flag=True,
    help="Find the sustained rate flat out, then measure latency at 25/50/75%% of it.",
)
def loadgen(
    count: int,
    rate: float,
    reject_share: float,
    seed: int,
    timeout: float,
    projection: str | None,
    sweep: bool,
) -> None:
    """Send realistic shop/ledger traffic and print throughput and latency percentiles.

    Needs the command processor running, and with --projection that projection's worker.
    """
    from producers import loadgen as lg

    settings = load_settings()
    # Options and services first: a wrong name or a missing processor is one line now, not a timeout later.
    if projection is not None:
        require_projection(settings, projection)
    require_processor(settings, [command_topic(a, settings.topics) for a in AGGREGATES])
    click.echo(f"preparing {count} commands (reject share {reject_share:.0%})…", err=True)
    plans = lg.generate(count, reject_share=reject_share, seed=seed)
    report = lg.run(settings, plans, rate=rate or None, result_timeout_s=timeout, projection=projection)
    for line in report.lines():
        click.echo(line)
    if not sweep:
        if report.unexpected:
            sys.exit(1)
        return
    sustained = report.results / report.total_seconds
    click.echo(f"sustained end to end: {sustained:,.0f} commands/s")
    for share in (0.25, 0.5, 0.75):
        plans = lg.generate(count, reject_share=reject_share, seed=seed + int(share * 100))
        r = lg.run(settings, plans, rate=sustained * share, result_timeout_s=timeout, projection=projection)
        click.echo(f"--- at {share:.0%} of sustained ({sustained * share:,.0f}/s)")
        for line in r.lines():
            click.echo(line)
