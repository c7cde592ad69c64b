"""The environment of an `esflow` subprocess that runs a whole local stack of its own."""

from __future__ import annotations

import os
from pathlib import Path

from ops.stack.proc import free_port


def own_stack_env(root: Path) -> dict[str, str]:
    """This process's environment without any ``ESFLOW_*`` setting, plus a stack under ``root``.

    Free ports for the broker, its controller and Postgres, so the subprocess's stack never meets the
    session's or a developer's default one; 3 partitions keep a stack of its own quick to start.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_")}
    env.update(
        ESFLOW_STACK_DIR=str(root / "stack"),
        ESFLOW_KAFKA_PORT=str(free_port()),
        ESFLOW_KAFKA_CONTROLLER_PORT=str(free_port()),
        ESFLOW_PG_PORT=str(free_port()),
        ESFLOW_TOPIC_PARTITIONS="3",
    )
    return env
