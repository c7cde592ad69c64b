"""Process instance records as the process runtime writes them to ``process.<name>.state`` (a workload).

Each instance gets several records, each a later state of it (a step taken, a timer set or fired, a
command re-sent, an end), and the instances' records are interleaved. Per instance the records keep
their order, which is what the runtime guarantees: one instance lives on one partition.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from esflow.domain.process.registry import PROCESS_NAMES
from esflow.messaging.process_records import InstanceRecord, PendingSend

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ENDINGS = (("completed", None), ("compensated", "payment_rejected"), ("failed", "refund_rejected"))


def _send(rng: random.Random, step: str, at: datetime, attempt: int) -> PendingSend:
    return PendingSend(
        step=step,
        attempt=attempt,
        tries=attempt,
        command_id=uuid.UUID(int=rng.getrandbits(128)),
        aggregate_type="account",
        aggregate_id=uuid.UUID(int=rng.getrandbits(128)),
        command_type="WithdrawFunds",
        command={"amount": {"amount": "10.00", "currency": "EUR"}},
        causation_id=uuid.UUID(int=rng.getrandbits(128)),
        first_sent_at=at,
        sent_at=at,
        retry_at=at + timedelta(seconds=5),
    )


def history(rng: random.Random) -> list[InstanceRecord]:
    """The successive records of one instance: started, a few steps, maybe an end."""
    process = rng.choice(PROCESS_NAMES)
    started = T0 + timedelta(seconds=rng.randrange(86_400))
    record = InstanceRecord(
        process=process,
        instance_id=uuid.UUID(int=rng.getrandbits(128)),
        status="running",
        step="reserve",
        state={"reserved": [], "charged": "0.00"},
        started_at=started,
        updated_at=started,
        inputs=1,
    )
    out = [record]
    at = started
    for number in range(rng.randrange(1, 6)):
        at += timedelta(milliseconds=rng.randrange(1, 5000))
        step = rng.choice(("reserve", "confirm", "charge", "mark_paid"))
        timers: dict[str, datetime] = {}
        if rng.random() < 0.6:
            timers["payment_deadline"] = at + timedelta(seconds=30)
        if rng.random() < 0.3:
            timers["answer_due"] = at + timedelta(seconds=rng.randrange(1, 60))
        sends = {step: _send(rng, step, at, 1 + number % 3)} if rng.random() < 0.7 else {}
        state: dict[str, Any] = {
            "reserved": [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(number)],
            "charged": str(Decimal(rng.randrange(0, 100_000)) / 100),
        }
        record = record.model_copy(
            update={
                "step": step,
                "updated_at": at,
                "timers": timers,
                "sends": sends,
                "attempts": record.attempts + rng.randrange(0, 2),
                "inputs": record.inputs + 1,
                "state": state,
            }
        )
        out.append(record)
    if rng.random() < 0.7:
        status, reason = rng.choice(ENDINGS)
        at += timedelta(milliseconds=rng.randrange(1, 5000))
        out.append(
            record.model_copy(
                update={
                    "status": status,
                    "reason": reason,
                    "step": "done",
                    "final": True,
                    "updated_at": at,
                    "ended_at": at,
                    "timers": {},
                    "sends": {},
                    "inputs": record.inputs + 1,
                }
            )
        )
    return out


def instance_records(seed: int, instances: int) -> list[InstanceRecord]:
    """The records of ``instances`` instances, interleaved, each instance's in its own order."""
    rng = random.Random(seed)
    pending = [history(rng) for _ in range(instances)]
    out: list[InstanceRecord] = []
    while pending:
        i = rng.randrange(len(pending))
        out.append(pending[i].pop(0))
        if not pending[i]:
            pending.pop(i)
    return out
