"""A process worker running the test definition (``python -m tests.integration.process.worker``).

The CLI runs the domain's processes; the runtime tests run :class:`~tests.unit.process.toy.ChargeOrder`
the same way, in a child process that a test can SIGKILL. ``TOY_DEADLINE_S`` sets its payment deadline.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from esflow.settings import load_settings
from processors.process.runtime import ProcessWorker
from tests.unit.process.toy import ChargeOrder


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = ProcessWorker(
        load_settings(), [ChargeOrder(deadline_s=float(os.environ.get("TOY_DEADLINE_S", "30")))]
    )

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    worker.start()
    while worker.alive:
        worker.join(0.5)
    worker.join()


if __name__ == "__main__":
    main()
