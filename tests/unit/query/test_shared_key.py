"""The bus's group key reads: shared by concurrent asks, but never one that started before an ask arrived.

That second half is what keeps the cache exact: a key read that began before an asker arrived could
predate a commit the asker has already seen. No database: the key read is replaced by a probe.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from esflow.query.bus import QueryBus
from esflow.readmodel.versions import Layout


class Probe(QueryBus):
    """A bus whose key read records when it started and answers with its own sequence number."""

    def __init__(self) -> None:
        engine = create_async_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connects
        super().__init__(engine, {}, layout=Layout("public"))
        self.starts: list[float] = []

    async def current_key(self, projections: Sequence[str]) -> dict[str, Any]:
        self.starts.append(asyncio.get_running_loop().time())
        number = len(self.starts)
        await asyncio.sleep(0.005)
        return dict.fromkeys(projections, (1, (("t", 0, number),)))


def test_concurrent_asks_share_reads_that_started_after_they_arrived() -> None:
    async def main() -> tuple[Probe, list[tuple[float, int]]]:
        bus = Probe()
        rng = random.Random(3)
        seen: list[tuple[float, int]] = []

        async def ask() -> None:
            await asyncio.sleep(rng.random() * 0.1)
            arrived = asyncio.get_running_loop().time()
            state = await bus.shared_key(["orders"])
            seen.append((arrived, state["orders"][1][0][2]))

        await asyncio.gather(*(ask() for _ in range(200)))
        return bus, seen

    bus, seen = asyncio.run(main())
    assert all(bus.starts[number - 1] >= arrived for arrived, number in seen)
    assert len(bus.starts) < 60, f"{len(bus.starts)} reads for 200 asks: not shared"
    assert len({number for _, number in seen}) == len(bus.starts)


def test_a_failed_key_read_fails_its_askers_and_the_next_read_is_fresh() -> None:
    class Flaky(Probe):
        async def current_key(self, projections: Sequence[str]) -> dict[str, Any]:
            if not self.starts:
                self.starts.append(0.0)
                raise ConnectionError("postgres went away")
            return await super().current_key(projections)

    async def main() -> None:
        bus = Flaky()
        results = await asyncio.gather(
            *(bus.shared_key(["orders"]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results)
        state = await bus.shared_key(["orders"])
        assert state["orders"][1][0][2] == 2

    asyncio.run(main())
