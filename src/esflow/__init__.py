"""esflow: event sourcing and CQRS on Apache Kafka and PostgreSQL."""

__version__ = "0.1.0"
