"""A minimal ASGI app serving only the console's routes, for the browser test (uvicorn --factory)."""

from __future__ import annotations

from starlette.applications import Starlette

from api.console import console_routes
from esflow.settings import load_settings


def app() -> Starlette:
    """The console on its own, configured from ESFLOW_* like the API deployable."""
    return Starlette(routes=console_routes(load_settings()))
