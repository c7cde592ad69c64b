"""A real command processor (subprocess) on uniquely prefixed topics, for the SDK and CLI e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient

from esflow.messaging import topics
from esflow.settings import KafkaSettings, Settings, TopicSettings
from tests.support.services import Services
from tests.support.wait import eventually

PARTITIONS = 3


@pytest.fixture(scope="module")
def pipeline(
    services: Services, admin: AdminClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Topics + one processor instance; yields the settings and the env for `esflow` subprocesses."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka=KafkaSettings(bootstrap=services.kafka_bootstrap),
        topics=TopicSettings(prefix=prefix, partitions=PARTITIONS),
    )
    topics.apply(admin, topics.catalogue(settings.topics))
    env = services.subprocess_env()
    env.update(
        ESFLOW_TOPIC_PREFIX=prefix,
        ESFLOW_TOPIC_PARTITIONS=str(PARTITIONS),
        ESFLOW_PROCESSOR_GROUP_ID=f"{prefix}processor",
        ESFLOW_PROCESSOR_INSTANCE_ID=f"{prefix}p0",
    )
    log = tmp_path_factory.mktemp("proc") / "processor.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esflow", "processor", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def assigned() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"processor exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        return "assigned" in log.read_text()

    try:
        eventually(
            assigned, timeout=60, interval=0.2, what="the processor to be assigned",
            details=lambda: log.read_text()[-3000:],
        )  # fmt: skip
        yield settings, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        names = [t.name for t in topics.catalogue(settings.topics)]
        for fut in admin.delete_topics(names).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)


@pytest.fixture
def cli(pipeline: tuple[Settings, dict[str, str]]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `esflow …` against the pipeline's topics."""
    _settings, env = pipeline

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "esflow", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
