"""`esflow api run`: serve the GraphQL/HTTP API with uvicorn; `keygen` and `token` for local trials."""

from __future__ import annotations

import time
from pathlib import Path

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


@api.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def keygen(directory: Path) -> None:
    """Write an RSA key pair (private.pem, public.pem) to DIRECTORY, for trying the API locally.

    Production tokens come from an identity provider; the API needs only its public key (or JWKS).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "private.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)
    (directory / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    click.echo(f"{private}\n{directory / 'public.pem'}")


@api.command()
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key (PEM) to sign with.",
)
@click.option("--role", type=click.Choice(["customer", "operator"]), required=True)
@click.option("--sub", required=True, help="The subject: a customer's id (UUID) for the customer role.")
@click.option("--ttl", "ttl_s", default=3600, show_default=True, help="Seconds until the token expires.")
def token(key_file: Path, role: str, sub: str, ttl_s: int) -> None:
    """Print a token the API accepts (issuer and audience from ESFLOW_API_*), for local trials."""
    import jwt

    settings = load_settings().api
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": sub, "iat": now, "exp": now + ttl_s,
        settings.roles_claim: [role],
    }  # fmt: skip
    click.echo(jwt.encode(claims, key_file.read_bytes(), algorithm="RS256"))
