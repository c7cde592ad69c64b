"""The API's ASGI application (Starlette): ``/graphql``, ``/healthz``, ``/readyz``, ``/metrics``.

``create_app(settings, extra_routes=...)`` builds it; other pages (the console) are mounted by passing
their routes. The query bus and the command client are opened at start-up (lifespan) and closed at
shutdown; tests may hand in their own.

``/graphql`` takes POST only (``application/json``). A request without ``Authorization`` is anonymous
(schema only); one with a token that is not accepted is refused with HTTP 401 and a GraphQL-shaped
error body before any GraphQL runs. Bodies over ``max_body_bytes`` are refused with 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL

from api.auth import Authenticator, InvalidToken, Role
from api.console import console_routes
from api.graphql.context import Context
from api.graphql.schema import build_schema
from api.queries import connect_bus
from esflow.client.preflight import require_processor
from esflow.client.sender import AsyncCommandClient
from esflow.domain.messages import AGGREGATE_TYPES
from esflow.errors import EsflowError
from esflow.messaging.topics import command_topic
from esflow.query.bus import QueryBus
from esflow.settings import Settings

log = logging.getLogger("esflow.api")

REQUESTS = Counter("esflow_api_requests_total", "HTTP requests by path and status.", ["path", "status"])
REQUEST_SECONDS = Histogram(
    "esflow_api_request_seconds",
    "HTTP request latency by path.",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTH_REFUSED = Counter("esflow_api_tokens_refused_total", "Bearer tokens refused (HTTP 401).")

READY_TIMEOUT_S = 5.0


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}


class _TooLarge(Exception):
    pass


class Limits:
    """ASGI middleware: refuse bodies over ``max_bytes`` (413) and count requests by path and status."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a receive that stops counting at the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            declared = int(dict(scope["headers"]).get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_bytes:
                raise _TooLarge
            seen = 0

            async def limited_receive() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_bytes:
                        raise _TooLarge
                return message

            await self.app(scope, limited_receive, counted_send)
        except _TooLarge:
            if not status["sent"]:
                response = JSONResponse(
                    _error_body(f"request body larger than {self.max_bytes} bytes", "REQUEST_TOO_LARGE"),
                    status_code=413,
                )
                await response(scope, receive, counted_send)
        finally:
            known = path if path in {"/graphql", "/healthz", "/readyz", "/metrics"} else "other"
            REQUESTS.labels(known, str(status["code"])).inc()
            REQUEST_SECONDS.labels(known).observe(time.perf_counter() - started)


class GraphQLEndpoint(GraphQL[Context, None]):
    """Strawberry's ASGI view, with the bearer token checked before any GraphQL runs."""

    def __init__(self, schema: Any, authenticator: Authenticator, settings: Settings) -> None:
        super().__init__(schema, graphql_ide=None, allow_queries_via_get=False)
        self.authenticator = authenticator
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, then let strawberry answer (401 for a refused token)."""
        if scope["type"] == "http":
            request = Request(scope, receive)
            try:
                principal = self.authenticator.authenticate(request.headers.get("authorization"))
            except InvalidToken as exc:
                AUTH_REFUSED.inc()
                response = JSONResponse(
                    _error_body(str(exc), "UNAUTHENTICATED"),
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await super().__call__(scope, receive, send)

    async def get_context(self, request: Any, response: Any) -> Context:
        """The resolvers' context: the caller and the app's services."""
        state = request.app.state
        return Context(
            principal=request.state.principal, settings=self.settings, bus=state.bus, commands=state.commands
        )


async def _check_postgres(bus: QueryBus) -> None:
    async with bus.engine.connect() as conn:
        await conn.execute(sa.select(1))


def _check_processor(settings: Settings) -> None:
    topics = [command_topic(a, settings.topics) for a in AGGREGATE_TYPES]
    require_processor(settings, topics, timeout_s=READY_TIMEOUT_S - 1)


def create_app(
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    bus: QueryBus | None = None,
    commands: AsyncCommandClient | None = None,
    console: bool = True,
) -> Starlette:
    """The API application. ``bus``/``commands`` given are used as they are (and not closed)."""
    authenticator = Authenticator(settings.api)
    graphql = GraphQLEndpoint(build_schema(settings.api), authenticator, settings)

    def operators_only(request: Request) -> Response | None:
        # The console shows dead letters (whatever a producer sent) and the whole pipeline's figures:
        # operators only, with the same tokens and checks as GraphQL.
        try:
            principal = authenticator.authenticate(request.headers.get("authorization"))
        except InvalidToken as exc:
            return JSONResponse(_error_body(str(exc), "UNAUTHENTICATED"), status_code=401)
        if principal.role is Role.ANONYMOUS:
            refusal = _error_body("an operator token is needed", "UNAUTHENTICATED")
            return JSONResponse(refusal, status_code=401)
        if not principal.is_operator:
            return JSONResponse(_error_body("the console is for operators", "FORBIDDEN"), status_code=403)
        return None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.bus = bus or connect_bus(
            settings, cache_size=settings.api.cache_size, pool_size=settings.api.pool_size
        )
        app.state.commands = commands or AsyncCommandClient(settings)
        try:
            yield
        finally:
            if commands is None:
                await app.state.commands.close()
            if bus is None:
                await app.state.bus.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}

        async def run(name: str, check: Any) -> None:
            try:
                await asyncio.wait_for(check, READY_TIMEOUT_S)
                checks[name] = "ok"
            except TimeoutError:
                checks[name] = f"no answer within {READY_TIMEOUT_S:.0f}s"
            except EsflowError as exc:
                checks[name] = exc.one_line()
            except Exception as exc:  # a driver's own error: name it, the probe must not fail with a 500
                checks[name] = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(
            run("postgres", _check_postgres(request.app.state.bus)),
            run("kafka+processor", asyncio.to_thread(_check_processor, settings)),
        )
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/graphql", graphql, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *(console_routes(settings, gate=operators_only) if console else ()),
        *extra_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Limits, max_bytes=settings.api.max_body_bytes)
    return app


__all__ = ["GraphQLEndpoint", "Limits", "create_app"]
