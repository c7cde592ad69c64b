"""The one error hierarchy of esflow.

Every failure that esflow expects (a server that does not answer, a port already taken, a topic whose
partition count would change) is an :class:`EsflowError`. Driver exceptions (confluent-kafka, psycopg,
SQLAlchemy) are translated at the edge with :func:`translate` so callers never catch driver types.
This module imports no driver: translation looks at the exception's module, which keeps
``esflow.domain`` free to import it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class EsflowError(Exception):
    """Root of every error esflow raises on purpose.

    ``hint`` tells the user what to do about it; the CLI prints ``message`` and ``hint`` on one line
    and exits non-zero, with no stack trace.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(EsflowError):
    """A setting is missing, malformed or contradicts another one."""


class StackError(EsflowError):
    """The local stack cannot be installed, started, stopped or inspected."""


class PrerequisiteMissing(StackError):
    """A program the stack needs (java, mvn, initdb, pg_ctl) is not installed."""


class PortInUse(StackError):
    """A port the stack wants is taken by a process the stack did not start."""


class DownloadFailed(StackError):
    """Resolving the Kafka broker jars from Maven Central failed."""


class CorruptStackDir(StackError):
    """The stack directory is half-initialised (an interrupted format or initdb)."""


class BrokerUnavailable(EsflowError):
    """Kafka did not answer in time."""


class DatabaseUnavailable(EsflowError):
    """PostgreSQL did not answer in time."""


class TopicError(EsflowError):
    """A topic cannot be created or changed as the catalogue asks."""


class PartitionChangeRefused(TopicError):
    """The catalogue asks for a different partition count on an existing topic.

    Changing it would move keys to other partitions and break per-aggregate ordering, so esflow never
    does it silently.
    """


class KafkaOperationError(EsflowError):
    """A Kafka client call failed for a reason that is not an outage."""


class DatabaseError(EsflowError):
    """A database call failed for a reason that is not an outage."""


class CodecError(EsflowError):
    """A message cannot be encoded or decoded.

    Carries the Kafka position of the message when the caller knows it, and names it in the message, so
    an operator can find the offending record with one `kafka-console-consumer` call.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.detail = message
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = [
            f"{k}={v}"
            for k, v in (("topic", topic), ("partition", partition), ("offset", offset))
            if v is not None
        ]
        super().__init__(f"{message} [{', '.join(where)}]" if where else message, hint=hint)


class EncodeError(CodecError):
    """A message cannot be encoded (no schema for its type, or a value the schema cannot hold)."""


class DecodeError(CodecError):
    """Bytes cannot be decoded: truncated, wrong framing, or a body that does not match its schema."""


class FramingError(DecodeError):
    """The bytes do not start with the expected header (single-object ``C3 01`` or Confluent ``00``)."""


class UnknownSchemaError(DecodeError):
    """The bytes name a schema (fingerprint or registry id) that esflow does not know."""


class SchemaValidationError(DecodeError):
    """A record violates its schema's logical types or the message model (e.g. a decimal too wide)."""


class UpcastError(DecodeError):
    """An upcaster failed on, or is missing for, an old schema version."""


class MisroutedRecord(CodecError):
    """A well-formed record sits where its own metadata says it does not belong (topic or key)."""


class SchemaError(EsflowError):
    """The .avsc files cannot be loaded, or break a contract rule (see `esflow schemas check`)."""


class RegistryError(EsflowError):
    """The schema registry refused or failed a request."""


class ProjectionError(EsflowError):
    """A projection cannot be built, started or applied."""


class UnknownProjection(ProjectionError):
    """A projection name that esflow does not define."""


class ProjectionHalted(ProjectionError):
    """A partition of a projection stopped on purpose: a row broke a constraint, or bad input under halt.

    Skipping the event would make the read model silently wrong, so the partition stops until an
    operator fixes the cause and restarts the worker; the other partitions go on.
    """


class MigrationError(DatabaseError):
    """The read-model schema cannot be migrated (unknown version in the database, failed DDL)."""


class ClientError(EsflowError):
    """The command SDK or CLI could not send a command or learn its outcome."""


class UnknownCommandType(ClientError):
    """A command type name that the contract does not define."""


class CommandValidationError(ClientError):
    """A command failed validation before anything left the process; ``problems`` lists every field."""

    def __init__(self, message: str, problems: list[str], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems


class DeliveryFailed(ClientError):
    """The broker did not acknowledge a command (unreachable, or it refused the write)."""


class ResultTimeout(ClientError):
    """No result (or no projection catch-up) arrived within the timeout."""


class ProcessorError(EsflowError):
    """The command processor cannot start, restore its state or keep its transactions going."""


class RestoreError(ProcessorError):
    """Aggregate state could not be restored for an assignment (snapshot or event topic unreadable)."""


class ProcessorFenced(ProcessorError):
    """Another instance took over this processor's transactional id: this one must stop at once."""

    exit_code = 3


def translate(exc: BaseException, *, context: str = "") -> EsflowError:
    """Map a driver exception to the matching :class:`EsflowError`.

    An exception that already is an :class:`EsflowError` is returned unchanged. ``context`` names the
    operation ("listing topics", "connecting to postgres") so the message says what was being done.
    """
    if isinstance(exc, EsflowError):
        return exc
    module = type(exc).__module__ or ""
    prefix = f"{context}: " if context else ""
    # confluent-kafka's exceptions come from its C extension, whose module is named "cimpl".
    if module.startswith(("confluent_kafka", "cimpl", "aiokafka")):
        text = str(exc)
        if any(s in text for s in ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "Timed out")):
            return BrokerUnavailable(
                f"{prefix}Kafka is not reachable ({text})",
                hint="is the broker up? try `esflow stack status`",
            )
        return KafkaOperationError(f"{prefix}{text}")
    if module.startswith(("psycopg", "sqlalchemy")):
        name = type(exc).__name__
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()[0] if str(exc) else name
        if name == "OperationalError" or type(orig).__name__ == "OperationalError":
            return DatabaseUnavailable(
                f"{prefix}PostgreSQL is not reachable ({detail})",
                hint="is the database up? try `esflow stack status`",
            )
        return DatabaseError(f"{prefix}{detail}")
    return EsflowError(f"{prefix}{type(exc).__name__}: {exc}")


@contextmanager
def translated(context: str) -> Iterator[None]:
    """Let esflow's own errors through and raise driver exceptions as their :func:`translate`."""
    try:
        yield
    except EsflowError:
        raise
    except Exception as exc:
        raise translate(exc, context=context) from exc
