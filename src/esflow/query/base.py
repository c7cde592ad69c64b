"""Typed queries: what a caller asks, which read models answer it, and the shape of the answer.

A :class:`Query` is a frozen pydantic model, so equal queries are equal and hash alike: the query
itself is the cache key (with the checkpoints of the projections it reads, see
:mod:`esflow.query.bus`). Its class names the projections its handler reads (``reads``) and the type of
the answer (``result``). Handlers live in the API deployable; the library only knows their signature.

Pages are keyset pages: ``next_cursor`` is an opaque string the caller passes back as ``after`` to
get the next page; no page ever counts or skips rows (``OFFSET``), so page N costs what page 1 costs.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Generic, TypeVar

import orjson

from esflow.domain.values import Frozen

R = TypeVar("R")
T = TypeVar("T")

MAX_PAGE_SIZE = 500
"""The largest page any query returns (the API may set a lower limit)."""


class Query(Frozen, Generic[R]):
    """Base of every query: immutable, hashable, no unknown fields.

    Subclasses set ``reads`` (the projections, i.e. read-model names, whose data the handler reads: the
    bus waits for exactly those and keys the cache on their checkpoints) and ``result`` (the type of the
    answer, for documentation and the API's schema).
    """

    reads: ClassVar[tuple[str, ...]] = ()
    result: ClassVar[Any] = None

    @classmethod
    def type_name(cls) -> str:
        """The query's name in metrics, logs and errors (the class name)."""
        return cls.__name__


class Page(Frozen, Generic[T]):
    """One keyset page of a list, newest or smallest first as the query says.

    ``items`` is a tuple: a page may be served from the cache to many callers, so it must not be
    changeable by one of them.
    """

    items: tuple[T, ...]
    next_cursor: str | None = None
    """Pass back as the query's ``after`` for the next page; None on the last page."""


class BadCursor(ValueError):
    """A cursor that this query did not hand out (or one changed by the caller)."""


def encode_cursor(*values: Any) -> str:
    """An opaque cursor holding ``values`` (the keyset position: sort key values of the last row)."""
    return base64.urlsafe_b64encode(orjson.dumps(values, default=str)).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The values of a cursor made by :func:`encode_cursor` (as JSON types: str, int, ...)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadCursor(f"malformed cursor {cursor[:40]!r}") from exc
    if not isinstance(values, list) or len(values) != arity:
        raise BadCursor(f"cursor {cursor[:40]!r} does not belong to this query")
    return values


__all__ = ["MAX_PAGE_SIZE", "BadCursor", "Page", "Query", "decode_cursor", "encode_cursor"]
