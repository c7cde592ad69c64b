"""Run docker-compose.yml for real: servers and the `pipeline` profile, commands from the host, rows in `bi`.

    python -m ops.images.compose_check [--accounts N]

Uses the images named by ESFLOW_IMAGE_* (CI passes the esflow-local/... ones), free loopback ports
and its own compose project, so it never touches a stack already running on the machine. It opens
accounts through the host's CommandClient, waits for every answer, then for every account in
`bi.account_balances` (the pipeline's migrations created the view, its projector filled it), asks the
API service over HTTP for one of them with an operator token (an RSA key made here, its public half
mounted into the container), and finally runs `down -v` and checks that no container or volume of the
project is left. Exit 0 only when all of that held; the timings go to stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import click
import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from esflow.client.sender import CommandClient
from esflow.domain.account import OpenAccount
from esflow.errors import EsflowError
from esflow.settings import KafkaSettings, PostgresSettings, Settings
from ops.stack.proc import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "esflow-compose-check"


def compose_command() -> list[str]:
    """`docker compose` (v2) when the client has it, else docker-compose 1.x."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        raise click.ClickException("neither `docker compose` nor `docker-compose` is installed")
    return [legacy]


def _run(argv: Sequence[str], env: dict[str, str], timeout_s: float = 900) -> str:
    proc = subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise click.ClickException(
            f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _leftovers(env: dict[str, str]) -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT}"
    containers = _run(["docker", "ps", "-aq", "--filter", label], env).split()
    volumes = _run(["docker", "volume", "ls", "-q", "--filter", label], env).split()
    return [f"container {c}" for c in containers] + [f"volume {v}" for v in volumes]


def _open_accounts(settings: Settings, count: int, timeout_s: float) -> list[UUID]:
    """Open ``count`` accounts and wait for each answer; retries while the pipeline is still starting."""
    deadline = time.monotonic() + timeout_s
    ids: list[UUID] = []
    with CommandClient(settings) as client:
        while len(ids) < count:
            account_id = uuid4()
            try:
                result = client.send_and_wait(
                    OpenAccount(owner_id=uuid4(), currency="EUR"), account_id, timeout=30
                )
            except EsflowError as exc:
                # Topics not created yet, or the processor not assigned yet: the pipeline is starting.
                if time.monotonic() > deadline:
                    raise click.ClickException(f"the pipeline never answered: {exc}") from exc
                time.sleep(1)
                continue
            if result.status != "accepted":
                raise click.ClickException(
                    f"OpenAccount was {result.status}: {result.reason} {result.message}"
                )
            ids.append(account_id)
    return ids


def _visible(conninfo: str, ids: list[UUID]) -> int:
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FROM bi.account_balances WHERE account_id = ANY(%s)", (ids,)
            ).fetchone()
    except psycopg.Error:
        # The view appears once the projector's migrations ran.
        return 0
    return int(row[0]) if row else 0


def _api_key(where: Path) -> rsa.RSAPrivateKey:
    """A fresh RSA key whose public half the compose API is given (ESFLOW_API_PUBLIC_KEY)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    where.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def _graphql(url: str, token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{url}/graphql",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _check_api(url: str, key: rsa.RSAPrivateKey, ids: list[UUID], timeout_s: float) -> None:
    """The compose API is ready and serves an account the pipeline projected, to an operator token."""
    if not wait_until(lambda: _ready(url), timeout_s=timeout_s, interval_s=0.5):
        raise click.ClickException(f"the API at {url} never became ready (GET /readyz)")
    now = int(time.time())
    token = jwt.encode(
        {"iss": "esflow", "aud": "esflow-api", "sub": "compose-check", "roles": ["operator"],
         "iat": now, "exp": now + 300},
        key,
        algorithm="RS256",
    )  # fmt: skip
    answer = _graphql(url, token, "query($id: UUID!) { account(id: $id) { accountId currency } }",
                      {"id": str(ids[0])})  # fmt: skip
    account = (answer.get("data") or {}).get("account")
    if not account or account["accountId"] != str(ids[0]):
        raise click.ClickException(f"the API did not serve account {ids[0]}: {answer}")


@click.command()
@click.option("--accounts", default=20, show_default=True, help="Accounts opened from the host.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, help="Seconds for each wait.")
def main(accounts: int, timeout_s: float) -> None:
    """Bring the compose stack up, prove the pipeline end to end, take it down without a trace."""
    host = "127.0.0.1"
    kafka = KafkaSettings(port=free_port(host), controller_port=free_port(host))
    pg = PostgresSettings(port=free_port(host))
    env = dict(os.environ)
    key_dir = Path(tempfile.mkdtemp(prefix="esflow-compose-check-"))
    key = _api_key(key_dir / "api-public-key.pem")
    api_url = f"http://{host}:{free_port(host)}"
    env.update(
        {
            "ESFLOW_API_PORT": api_url.rsplit(":", 1)[1],
            "ESFLOW_API_PUBLIC_KEY": str(key_dir / "api-public-key.pem"),
            "ESFLOW_KAFKA_PORT": str(kafka.port),
            "ESFLOW_KAFKA_CONTROLLER_PORT": str(kafka.node_controller_port(1)),
            "ESFLOW_PG_PORT": str(pg.port),
            "ESFLOW_PROCESSOR_METRICS_PORT": str(free_port(host)),
        }
    )
    compose = [
        *compose_command(),
        "-p",
        PROJECT,
        "-f",
        str(ROOT / "docker-compose.yml"),
        "--profile",
        "pipeline",
    ]
    settings = Settings(kafka=KafkaSettings(bootstrap=kafka.bootstrap_servers), postgres=pg)
    failed = True
    t0 = time.monotonic()
    try:
        _run([*compose, "up", "-d", "--no-build"], env)
        t_up = time.monotonic()
        click.echo(f"compose up (servers healthy, pipeline started): {t_up - t0:.1f}s")
        ids = _open_accounts(settings, accounts, timeout_s)
        t_answered = time.monotonic()
        click.echo(f"{len(ids)} commands sent from the host and accepted: {t_answered - t_up:.1f}s")
        conninfo = pg.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        if not wait_until(lambda: _visible(conninfo, ids) == len(ids), timeout_s=timeout_s, interval_s=0.5):
            raise click.ClickException(
                f"only {_visible(conninfo, ids)} of {len(ids)} accounts reached bi.account_balances"
            )
        t_visible = time.monotonic()
        click.echo(f"all {len(ids)} visible in bi.account_balances: {t_visible - t_answered:.1f}s")
        _check_api(api_url, key, ids, timeout_s)
        click.echo(f"the API served a projected account over HTTP: {time.monotonic() - t_visible:.1f}s")
        failed = False
    finally:
        if failed:
            # The services' own words are the quickest diagnosis of a failed check.
            logs = subprocess.run([*compose, "logs", "--tail", "40"], env=env, capture_output=True, text=True)
            click.echo(logs.stdout[-8000:], err=True)
        t_down = time.monotonic()
        _run([*compose, "down", "-v", "--remove-orphans", "--timeout", "30"], env)
        left = _leftovers(env)
        click.echo(f"compose down -v: {time.monotonic() - t_down:.1f}s, left behind: {left or 'nothing'}")
        if left:
            raise click.ClickException(f"`down -v` left {left}")
    sys.exit(0)


if __name__ == "__main__":
    main()
