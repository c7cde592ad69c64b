"""`esflow api run`: serve the GraphQL/HTTP API with uvicorn."""

from __future__ import annotations

import click

from esflow.settings import load_settings


@click.group()
def api() -> None:
    """The GraphQL/HTTP API (queries, mutations for every command, health and metrics)."""


@api.command()
@click.option("--host", default=None, help="Interface to listen on (default: ESFLOW_API_HOST).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: ESFLOW_API_PORT).")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
def run(host: str | None, port: int | None, log_level: str) -> None:
    """Serve /graphql, /healthz, /readyz and /metrics until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    from api.app import create_app

    settings = load_settings()
    update = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if update:
        settings = settings.model_copy(update={"api": settings.api.model_copy(update=update)})
    app = create_app(settings)  # refuses to start without token keys, before binding the port
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level=log_level,
        # The API sits behind no proxy by default: client addresses are the sockets' own.
        proxy_headers=False,
        server_header=False,
    )
