"""What the generated reader and writer share: the walk over a parsed schema, and the source builder.

A compiler walks a parsed Avro schema once and emits the lines of one straight-line Python function;
:func:`generate` compiles them with the runtime helpers the lines call. The walk refuses (raises
:class:`Unsupported`) what it leaves to fastavro; the generated function raises :class:`NotCanonical` on
input that is not the plain case, and its caller then asks fastavro.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from esflow.messaging.expansion import PRIMITIVES


class NotCanonical(Exception):
    """Raised by generated code on anything but the plain case; the caller falls back to fastavro."""


class Unsupported(Exception):
    """The schema uses something the compiler leaves to fastavro (recursion, arrays of nothing, ...)."""


class SchemaCompiler:
    """The walk and the source buffer; subclasses emit the lines for each kind of type.

    ``value(schema, name, indent)`` emits the lines handling one value of ``schema`` held in (writer) or
    read into (reader) the local ``name``; named types are looked up as fastavro's parsed schemas refer
    to them, and a reference to a record still being compiled (recursion) is unsupported.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.active: set[str] = set()
        self.counter = 0

    def var(self, prefix: str) -> str:
        """A fresh local name."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any, prefix: str = "k") -> str:
        """A fresh global name bound to ``value`` in the generated function's namespace."""
        name = self.var(prefix)
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        """Append one line of source at ``indent`` levels."""
        self.lines.append("    " * indent + line)

    @contextmanager
    def defining(self, schema: Mapping[str, Any]) -> Iterator[None]:
        """Register a named record and mark it as being compiled while its fields are."""
        name = schema["name"]
        self.named[name] = schema
        self.active.add(name)
        yield
        self.active.discard(name)

    def value(self, schema: Any, name: str, indent: int) -> None:
        """Emit the lines for one value of ``schema`` (a union list, a type name, or a type dict)."""
        if isinstance(schema, list):
            self.union(schema, name, indent)
            return
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                self.primitive(schema, name, indent)
                return
            if schema not in self.named or schema in self.active:
                raise Unsupported(schema)
            self.value(self.named[schema], name, indent)
            return
        self.typed(schema, name, indent)

    def primitive(self, kind: str, name: str, indent: int) -> None:  # pragma: no cover - abstract
        """Emit the lines for a primitive type."""
        raise NotImplementedError

    def union(self, branches: list[Any], name: str, indent: int) -> None:  # pragma: no cover - abstract
        """Emit the lines for a union."""
        raise NotImplementedError

    def typed(self, schema: Mapping[str, Any], name: str, indent: int) -> None:  # pragma: no cover
        """Emit the lines for a type given as a dict (records, enums, logical types, ...)."""
        raise NotImplementedError


def generate(
    compiler: SchemaCompiler,
    schema: Any,
    *,
    function: str,
    head: Sequence[str],
    tail: Sequence[str],
    runtime: Mapping[str, Any],
    label: str,
) -> Callable[..., Any] | None:
    """Compile ``schema`` with ``compiler`` into the function ``function``, or None when unsupported.

    ``head`` (the ``def`` line and setup), the compiler's lines for the value named ``function``'s
    argument and ``tail`` make the source; ``runtime`` holds the helpers it calls.
    """
    try:
        compiler.value(schema, "value", 1)
    except Unsupported:
        return None
    source = "\n".join([*head, *compiler.lines, *tail])
    namespace: dict[str, Any] = {"_NotCanonical": NotCanonical, **runtime, **compiler.consts}
    exec(compile(source, f"<esflow avro {function}: {label}>", "exec"), namespace)
    fn: Callable[..., Any] = namespace[function]
    return fn
