"""Every process definition of the reference domain, by name: the one list topics and the runtime use."""

from __future__ import annotations

from esflow.domain.process.base import ProcessDefinition
from esflow.domain.process.fulfilment import OrderFulfilment
from esflow.domain.process.funds_transfer import FundsTransfer

PROCESS_TYPES: dict[str, type[ProcessDefinition]] = {  # type: ignore[type-arg]
    OrderFulfilment.name: OrderFulfilment,
    FundsTransfer.name: FundsTransfer,
}
"""Definition classes by process name (the runtime constructs them with its settings)."""

PROCESS_NAMES: tuple[str, ...] = tuple(PROCESS_TYPES)
"""Every process name, in catalogue order: each has an inbox and a state topic."""
