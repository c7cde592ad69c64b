"""The console page in a real headless browser (Debian's chromium, driven by Playwright) on a real pipeline.

Processor, projection worker and the console's ASGI app (uvicorn) run as subprocesses on uniquely named
topics and a throwaway schema. Commands sent with the SDK must move the page's figures: accepted and
rejected rates, a projection's applied events, a dead letter with its reason. Stopping the console's
server must turn the page stale. The browser's console must stay free of errors throughout.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from api.console import Console
from esflow.client.sender import CommandClient
from esflow.domain.account import DepositFunds, OpenAccount, WithdrawFunds
from esflow.messaging import topics
from esflow.messaging.kafka import producer_config
from esflow.readmodel.versions import Layout
from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, Settings, TopicSettings
from ops.stack.proc import free_port
from tests.conftest import drop_installation
from tests.support.services import Services
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium")
PARTITIONS = 3

playwright = pytest.importorskip("playwright.sync_api")


@dataclass
class Pipeline:
    settings: Settings
    env: dict[str, str]
    url: str
    console: subprocess.Popen[bytes]
    logs: Path

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logs.glob("*.log")))


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def pipeline(
    services: Services, admin: AdminClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    prefix = f"con-{uuid.uuid4().hex[:8]}."
    schema = f"con_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka=KafkaSettings(bootstrap=services.kafka_bootstrap),
        topics=TopicSettings(prefix=prefix, partitions=PARTITIONS),
        postgres=PostgresSettings(database_url_override=services.database_url),
        projections=ProjectionSettings(db_schema=schema),
    )
    topics.apply(admin, topics.catalogue(settings.topics))
    env = services.subprocess_env()
    env.update(
        ESFLOW_TOPIC_PREFIX=prefix,
        ESFLOW_TOPIC_PARTITIONS=str(PARTITIONS),
        ESFLOW_PROCESSOR_GROUP_ID=f"{prefix}processor",
        ESFLOW_PROCESSOR_INSTANCE_ID=f"{prefix}p0",
        ESFLOW_PROJECTION_DB_SCHEMA=schema,
        ESFLOW_PROJECTION_GROUP_PREFIX=f"{prefix}proj",
    )
    logs = tmp_path_factory.mktemp("console")
    esflow = [sys.executable, "-m", "esflow"]
    migrate = subprocess.run([*esflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    procs = [
        _spawn([*esflow, "processor", "run"], env, logs / "processor.log"),
        _spawn([*esflow, "projector", "run", "account_balances"], env, logs / "projector.log"),
        _spawn(
            [sys.executable, "-m", "uvicorn", "--factory", "tests.e2e.api.console_app:app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env, logs / "console.log",
        ),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/console/"
    result = Pipeline(settings, env, url, procs[2], logs)

    def up() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}):\n{result.log_tail()}")
        if "assigned" not in (logs / "processor.log").read_text():
            return False
        with urllib.request.urlopen(url + "state", timeout=10) as response:
            return bool(response.status == 200)

    try:
        eventually(up, timeout=120, interval=0.3, what="processor and console to be up",
                   retry_on=(OSError,), details=result.log_tail)  # fmt: skip
        yield result
    finally:
        for proc in reversed(procs):
            _stop(proc)
        names = [t.name for t in topics.catalogue(settings.topics)]
        for fut in admin.delete_topics(names).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)
        drop_installation(services.database_url.replace("+psycopg", ""), schema)


class Traffic:
    """Deposits into one account from a thread, a few per second, until stopped."""

    def __init__(self, client: CommandClient, account: uuid.UUID) -> None:
        self.client = client
        self.account = account
        self.sent = 0
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deposit = DepositFunds.model_validate({"amount": {"amount": "1.00", "currency": "EUR"}})
        try:
            while not self.stop.is_set():
                result = self.client.send_and_wait(deposit, self.account, timeout=30)
                if result.status != "accepted":
                    raise AssertionError(f"deposit {result.status}: {result.reason} {result.message}")
                self.sent += 1
                self.stop.wait(0.1)
        except BaseException as exc:  # the test thread re-raises it after stopping the traffic
            self.failure = exc

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.failure is not None:
            raise self.failure


def _number(text: str | None) -> float:
    cleaned = re.sub(r"[^0-9.]", "", text or "")
    return float(cleaned) if cleaned else 0.0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (ops/bootstrap.sh installs it)")
def test_console_shows_live_figures_and_turns_stale(pipeline: Pipeline) -> None:
    errors: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.on(
                "console",
                lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            response = page.goto(pipeline.url)
            assert response is not None and response.ok
            page.wait_for_selector("#freshness.live", timeout=30_000)
            assert page.title() == "esflow console"
            # Every projection the migration installed has a row; the one nobody runs is not "caught up".
            rows = page.locator("#projection-rows tr[data-projection]")
            rows.first.wait_for(timeout=30_000)
            assert "account_balances" in rows.evaluate_all("rs => rs.map(r => r.dataset.projection)")
            # process_instances is installed with the rest; no process manager runs here.
            assert page.text_content("#process-body .empty") == "no process instance yet"

            balances = page.locator('#projection-rows tr[data-projection="account_balances"]')
            applied_before = _number(balances.locator(".events-applied").text_content())

            with CommandClient(pipeline.settings) as client:
                opened = client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=60)
                assert opened.status == "accepted"
                account = uuid.UUID(opened.aggregate_id or "")
                overdraw = WithdrawFunds.model_validate(
                    {"amount": {"amount": str(Decimal(10**6)), "currency": "EUR"}}
                )
                for _ in range(3):
                    assert client.send_and_wait(overdraw, account, timeout=30).status == "rejected"
                # Bytes that are no command: the processor dead-letters them as undecodable.
                producer = Producer(producer_config(pipeline.settings.kafka))
                producer.produce(
                    topics.command_topic("account", pipeline.settings.topics),
                    b"not avro",
                    key=str(account).encode(),
                )
                assert producer.flush(30) == 0

                with Traffic(client, account) as traffic:
                    eventually(
                        lambda: _number(page.text_content("#rate-accepted")) > 0,
                        timeout=60, interval=0.5, what="an accepted rate above 0 on the page",
                        details=pipeline.log_tail,
                    )  # fmt: skip
                    eventually(
                        lambda: _number(page.text_content("#rate-rejected")) > 0,
                        timeout=30, interval=0.5, what="a rejected rate above 0 on the page",
                    )  # fmt: skip
                    eventually(
                        lambda: _number(balances.locator(".events-applied").text_content()) > applied_before,
                        timeout=90, interval=0.5, what="account_balances' applied events to grow on the page",
                        details=pipeline.log_tail,
                    )  # fmt: skip
                    # Live: the figure keeps moving while commands flow.
                    seen = _number(balances.locator(".events-applied").text_content())
                    eventually(
                        lambda: _number(balances.locator(".events-applied").text_content()) > seen,
                        timeout=60, interval=0.5, what="applied events to grow again",
                    )  # fmt: skip
                    assert traffic.sent > 0
                eventually(
                    lambda: balances.locator(".health").text_content() == "caught up",
                    timeout=60, interval=0.5, what="account_balances to show caught up once traffic stops",
                )  # fmt: skip
                assert _number(balances.locator(".records-left").text_content()) == 0
                # event_log reads every event topic but no worker runs it: all of those events are left.
                idle = page.locator('#projection-rows tr[data-projection="event_log"]')
                assert idle.locator(".health").text_content() == "not started"
                assert _number(idle.locator(".records-left").text_content()) >= traffic.sent + 1

            dead = page.locator("#dead-rows tr .reason")
            dead.first.wait_for(timeout=60_000)
            assert dead.first.text_content() == "undecodable"
            assert _number(page.text_content("#dead-total")) >= 1
            assert page.locator("#stale").is_hidden()

            # Instances in the process managers' read model: the panel counts them by process and status
            # (rows written straight into the live version's table; process_instances' own e2e tests
            # build them from the state topics).
            layout = Layout(pipeline.settings.projections.db_schema)
            with psycopg.connect(pipeline.settings.postgres.database_url.replace("+psycopg", "")) as conn:
                (schema,) = conn.execute(
                    f"SELECT schema_name FROM {layout.registry} "
                    "WHERE projection = 'process_instances' AND state = 'live'"
                ).fetchone() or (None,)
                assert schema is not None
                for status in ("running", "completed", "completed"):
                    conn.execute(
                        f'INSERT INTO "{schema}".process_instances (process, instance_id, status, step, '
                        "started_at, updated_at, pending_commands, attempts, inputs, state) "
                        "VALUES ('fulfilment', %s, %s, 'x', now(), now(), 0, 0, 1, '{}')",
                        (uuid.uuid4(), status),
                    )
            counted = page.locator("#process-body tbody tr")
            counted.first.wait_for(timeout=30_000)
            cells = "rs => rs.map(r => Array.from(r.cells, c => c.textContent).join(' '))"
            assert counted.evaluate_all(cells) == ["fulfilment completed 2", "fulfilment running 1"]
            assert errors == [], errors

            # The endpoint stops answering: within a few refreshes the page says its figures are stale.
            _stop(pipeline.console)
            page.wait_for_selector("#stale:not([hidden])", timeout=30_000)
            assert "Stale" in (page.text_content("#stale") or "")
            assert "stale" in (page.get_attribute("#freshness", "class") or "")
            # Only the refused requests themselves may log, as the browser does for any failed fetch.
            assert all("ERR_CONNECTION_REFUSED" in e for e in errors), errors
        finally:
            browser.close()


def test_the_state_names_every_part_and_the_kafka_tail_stops_when_nobody_asks(pipeline: Pipeline) -> None:
    console = Console(pipeline.settings, idle_stop_s=1.0)
    try:
        state = orjson.loads(console.state_json())
        assert console.tailing
        assert state["problems"] == [], state["problems"]
        assert {"projections", "processor", "dead_letters", "process_instances"} <= set(state)
        names = {p["projection"] for p in state["projections"]}
        assert "account_balances" in names
        eventually(lambda: not console.tailing, timeout=30, interval=0.2, what="the idle tail to stop")
        # The next request starts it again.
        orjson.loads(console.state_json())
        assert console.tailing
    finally:
        console.close()
    assert not console.tailing
