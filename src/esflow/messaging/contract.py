"""The contract check behind `esflow schemas check`: every problem of the schemas and their models.

Layout and docs (:func:`esflow.messaging.schemas.load_files`), Avro compatibility under each kind's mode
(:mod:`esflow.messaging.compatibility`), the code upcasters run on an example record
(:mod:`esflow.messaging.samples`), and model drift (:mod:`esflow.messaging.drift`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastavro import schemaless_writer

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.messaging.compatibility import compatibility_pairs, reader_problems
from esflow.messaging.drift import model_drift
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, load_files
from esflow.messaging.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry


def check(
    directory: Path,
    *,
    event_mode: str = "BACKWARD_TRANSITIVE",
    command_mode: str = "BACKWARD",
    upcast_steps: Mapping[str, Iterable[int]] | None = None,
    messages: Mapping[str, MessageSpec] = MESSAGE_TYPES,
) -> list[str]:
    """Every contract problem under ``directory``, one line each; empty means the contract holds.

    ``upcast_steps`` maps a type name to the versions N whose step N -> N+1 is done by a code upcaster
    (defaults to the registered upcasters): such a step is exempt from Avro compatibility, and an
    incompatible step without one is an error.
    """
    registry: UpcasterRegistry | None = DEFAULT_UPCASTERS if upcast_steps is None else None
    if upcast_steps is None:
        upcast_steps = DEFAULT_UPCASTERS.steps()
    versions, problems = load_files(directory)
    catalog = SchemaCatalog(versions)
    for name in catalog.names():
        svs = catalog.versions(name)
        kind = svs[-1].kind
        mode = event_mode if kind == "event" else command_mode
        bridged = set(upcast_steps.get(name, ()))
        numbers = [sv.version for sv in svs]
        for step in sorted(bridged):
            if step not in numbers or step + 1 not in numbers:
                problems.append(
                    f"{name}: an upcaster is registered for v{step} -> v{step + 1}, a missing version"
                )
            elif registry is not None:
                problems.extend(_upcaster_problems(registry, catalog, name, step))
        for reader_v, writer_v in compatibility_pairs(numbers, mode, bridged):
            reader, writer = catalog.get(name, reader_v), catalog.get(name, writer_v)
            assert reader is not None and writer is not None
            for p in reader_problems(dict(reader.definition), dict(writer.definition)):
                problems.append(f"{name}: v{reader_v} cannot read v{writer_v} ({mode}): {p}")
        spec = messages.get(name)
        if spec is None:
            problems.append(f"{name}: has schemas but no message model in esflow.domain")
            continue
        problems.extend(f"{name}: model drift: {p}" for p in model_drift(spec, svs[-1]))
    for name in sorted(set(messages) - set(catalog.names())):
        problems.append(f"{name}: message model has no schema file")
    return problems


def _upcaster_problems(registry: UpcasterRegistry, catalog: SchemaCatalog, name: str, step: int) -> list[str]:
    """Run the upcaster of ``name`` v``step`` on an example and check the next schema accepts the result."""
    old, new = catalog.get(name, step), catalog.get(name, step + 1)
    upcaster = registry.get(name, step)
    assert old is not None and new is not None and upcaster is not None
    try:
        schemaless_writer(io.BytesIO(), new.parsed, upcaster(sample_record(old)))
    except Exception as exc:  # the check reports any failure of user code as a problem line
        return [f"{name}: the v{step} -> v{step + 1} upcaster fails on an example record: {exc!r}"]
    return []
