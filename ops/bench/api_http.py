"""The HTTP rows of ``ops.bench.api``: the same two queries through a running `esflow api run`.

An API process (uvicorn, one worker) is started per cache mode on the benchmark's installation with a
key made here; the askers are aiohttp sessions with keep-alive (one per task), an operator token, and
the GraphQL operation that selects what the bus answer holds. Its cost over the bus rows is HTTP,
JSON, token checks, GraphQL validation (depth, cost) and serialisation, in a second process that
shares the two cores with the benchmark's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from esflow.settings import PostgresSettings
from ops.stack.proc import free_port, wait_until

Ask = Callable[[Any], Awaitable[Any]]

ORDER_BY_ID = (
    "query($id: UUID!) { order(id: $id) { orderId number customerId status salesChannel currency "
    "itemCount itemsTotal placedAt updatedAt version lines { productId sku quantity unitPrice currency } "
    "paidAmount refundedAmount shippingCity shippingCountry paymentRef carrier trackingNumber "
    "cancelReason confirmedAt paidAt shippedAt deliveredAt cancelledAt lastRefundedAt } }"
)
ORDERS_OF_CUSTOMER = (
    "query($id: UUID!, $n: Int!) { ordersOfCustomer(customerId: $id, first: $n) { nodes { orderId number "
    "customerId status salesChannel currency itemCount itemsTotal placedAt updatedAt version } "
    "pageInfo { hasNextPage endCursor } } }"
)


@contextlib.contextmanager
def running_api(
    pg: PostgresSettings, schema: str, *, cached: bool, pool_size: int
) -> Iterator[tuple[str, str]]:
    """Start `esflow api run` on the installation ``schema``; yields its URL and an operator token."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory(prefix="esflow-bench-api-") as tmp:
        pem = Path(tmp) / "public.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_API_")}
        env.update(
            ESFLOW_DATABASE_URL=pg.database_url,
            ESFLOW_PROJECTION_DB_SCHEMA=schema,
            ESFLOW_API_PORT=str(port),
            ESFLOW_API_JWT_PUBLIC_KEY_FILE=str(pem),
            ESFLOW_API_CACHE_SIZE="10000" if cached else "0",
            ESFLOW_API_POOL_SIZE=str(pool_size),
        )
        log = Path(tmp) / "api.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "esflow", "api", "run", "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_until(lambda: _healthy(url, proc), timeout_s=60, interval_s=0.2):
                raise RuntimeError(f"the API did not start:\n{log.read_text()[-3000:]}")
            now = int(time.time())
            token = jwt.encode(
                {"iss": "esflow", "aud": "esflow-api", "sub": "bench", "roles": ["operator"], "iat": now,
                 "exp": now + 3600},
                key, algorithm="RS256",
            )  # fmt: skip
            yield url, token
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the API exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def http_asker(
    url: str, token: str, query: str, variables: Callable[[Any], dict[str, Any]]
) -> Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]]:
    """Each task: its own keep-alive aiohttp session POSTing ``query``; an answer with errors fails the run.

    aiohttp rather than httpx: its C HTTP parser costs the client a fraction of httpx's per request, so
    the rows measure the server more than the benchmark's own client (both share the two cores).
    """

    async def make(n: int) -> tuple[Ask, Callable[[], Awaitable[None]]]:
        session = aiohttp.ClientSession(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(limit=1),
        )

        async def ask(key: Any) -> Any:
            async with session.post(
                "/graphql", json={"query": query, "variables": variables(key)}
            ) as response:
                body = await response.json()
                if response.status != 200 or body.get("errors"):
                    raise RuntimeError(f"the API answered {response.status}: {str(body)[:500]}")
                return body["data"]

        return ask, session.close

    return make


__all__ = ["ORDERS_OF_CUSTOMER", "ORDER_BY_ID", "http_asker", "running_api"]
