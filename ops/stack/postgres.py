"""The local PostgreSQL 15 server: Debian's binaries, a cluster inside the stack directory."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from esflow.errors import CorruptStackDir, PrerequisiteMissing, StackError
from esflow.settings import PostgresSettings, StackSettings
from ops.stack import proc

# initdb and pg_ctl refuse to run as root; as root we run them as this account.
SERVICE_USER = "postgres"
# Where a root-run stack puts the cluster when postgres cannot traverse the stack directory
# (the default stack directory lives under /root, which is mode 700).
EXTERNAL_ROOT = Path("/var/lib/esflow")


@dataclass(frozen=True)
class PostgresPaths:
    """Where the cluster's files live; ``root`` is owned by the account that runs postgres."""

    root: Path

    @property
    def data(self) -> Path:
        """PGDATA."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server log (pg_ctl -l)."""
        return self.root / "postgres.log"

    @property
    def initialised_marker(self) -> Path:
        """Written only after initdb succeeded."""
        return self.root / "initdb.ok"

    @property
    def pid_file(self) -> Path:
        """The postmaster's own pid file."""
        return self.data / "postmaster.pid"


def _as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer:
    """initdb, start, probe and stop the local PostgreSQL cluster."""

    def __init__(self, postgres: PostgresSettings, stack: StackSettings) -> None:
        self.settings = postgres
        self.stack = stack
        self.link = stack.stack_dir / "postgres"
        self.paths = PostgresPaths(self.link.resolve() if self.link.exists() else self.link)

    def _bin(self, name: str) -> str:
        path = self.stack.pg_bin_dir / name
        if not os.access(path, os.X_OK):
            raise PrerequisiteMissing(
                f"PostgreSQL's `{name}` was not found in {self.stack.pg_bin_dir}",
                hint="install PostgreSQL 15 (`apt-get install postgresql-15`) or set ESFLOW_PG_BIN_DIR",
            )
        return str(path)

    def _run_as(self) -> str | None:
        return SERVICE_USER if _as_root() else None

    def _prepare_root(self) -> None:
        """Create the cluster's directory where the server account can reach it."""
        if self.link.exists():
            return
        self.stack.stack_dir.mkdir(parents=True, exist_ok=True)
        if not _as_root():
            self.link.mkdir(parents=True)
            self.paths = PostgresPaths(self.link)
            return
        if not self._service_user_can_reach(self.stack.stack_dir):
            digest = hashlib.sha256(str(self.stack.stack_dir.resolve()).encode()).hexdigest()[:16]
            target = EXTERNAL_ROOT / f"pg-{digest}"
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            EXTERNAL_ROOT.chmod(0o755)
            self.link.symlink_to(target, target_is_directory=True)
        else:
            self.link.mkdir()
        real = self.link.resolve()
        shutil.chown(real, user=SERVICE_USER, group=SERVICE_USER)
        real.chmod(0o700)
        self.paths = PostgresPaths(real)

    @staticmethod
    def _service_user_can_reach(directory: Path) -> bool:
        try:
            proc.run(["test", "-x", str(directory)], what="probe", user=SERVICE_USER, timeout_s=10)
        except (StackError, PrerequisiteMissing):
            return False
        return True

    def is_initialised(self) -> bool:
        """True when initdb completed."""
        return self.paths.initialised_marker.exists()

    def preflight(self) -> None:
        """Fail before anything starts: missing binaries or a half-initialised data directory."""
        self._bin("initdb")
        self._bin("pg_ctl")
        if not self.is_initialised() and self.paths.data.exists():
            raise CorruptStackDir(
                f"PostgreSQL data directory {self.paths.data} exists but was never completely initialised",
                hint="run `esflow stack reset` to start from an empty stack",
            )

    def init(self) -> None:
        """Run initdb once; refuse a data directory that an earlier initdb left half-done."""
        if self.is_initialised():
            return
        self.preflight()
        initdb = self._bin("initdb")
        self._prepare_root()
        pwfile = self.paths.root / ".pwfile"
        pwfile.write_text(self.settings.admin_password + "\n")
        if _as_root():
            shutil.chown(pwfile, user=SERVICE_USER, group=SERVICE_USER)
        try:
            proc.run(
                [
                    initdb, "-D", str(self.paths.data), "-U", self.settings.admin_user,
                    f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--locale=C.UTF-8",
                ],
                what="initdb",
                user=self._run_as(),
                cwd=self.paths.root,
                timeout_s=300,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        self.paths.initialised_marker.write_text("ok\n")

    def _server_options(self) -> str:
        s = self.settings
        # The socket lives in the cluster's own directory: no dependency on /var/run/postgresql.
        return (
            f"-p {s.port} -c listen_addresses={s.host} -c unix_socket_directories={self.paths.root} "
            "-c max_connections=200 -c shared_buffers=256MB -c max_prepared_transactions=64"
        )

    def pid(self) -> int | None:
        """Pid of the postmaster of this cluster, if it is alive."""
        # The socket option, not ``-D <data>``: `pg_ctl restart` passes the data directory in PGDATA, so
        # a restarted postmaster's command line has no -D, and a -D marker lost it (an orphan after reset).
        return proc.pid_alive_and_ours(self.paths.pid_file, f"unix_socket_directories={self.paths.root} ")

    def start(self, timeout_s: float) -> None:
        """Start the server with pg_ctl and wait until it accepts connections."""
        pg_ctl = self._bin("pg_ctl")
        proc.run(
            [
                pg_ctl, "start", "-D", str(self.paths.data), "-l", str(self.paths.log),
                "-w", "-t", str(int(timeout_s)), "-o", self._server_options(),
            ],
            what="starting PostgreSQL (pg_ctl start)",
            user=self._run_as(),
            cwd=self.paths.root,
            timeout_s=timeout_s + 10,
        )  # fmt: skip

    def stop(self, timeout_s: float = 60) -> bool:
        """Stop the server (fast shutdown); True when it was running."""
        if self.pid() is None:
            return False
        proc.run(
            [self._bin("pg_ctl"), "stop", "-D", str(self.paths.data), "-m", "fast", "-w",
             "-t", str(int(timeout_s))],
            what="stopping PostgreSQL (pg_ctl stop)",
            user=self._run_as(),
            cwd=self.paths.root,
            timeout_s=timeout_s + 10,
        )  # fmt: skip
        return True

    def restart(self, timeout_s: float = 60) -> None:
        """pg_ctl restart: what an operator does after a config change or an upgrade."""
        proc.run(
            [
                self._bin("pg_ctl"), "restart", "-D", str(self.paths.data), "-l", str(self.paths.log),
                "-m", "fast", "-w", "-t", str(int(timeout_s)), "-o", self._server_options(),
            ],
            what="restarting PostgreSQL (pg_ctl restart)",
            user=self._run_as(),
            cwd=self.paths.root,
            timeout_s=timeout_s + 10,
        )  # fmt: skip

    def bootstrap(self) -> None:
        """Create the application role and database; idempotent, so every start runs it."""
        s = self.settings
        with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (s.user,)).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(
                # CREATEROLE: `esflow db migrate` creates the read-only BI role and `grant-bi` grants it.
                sql.SQL("{} ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                    verb, sql.Identifier(s.user), sql.Literal(s.password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.database,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(s.database), sql.Identifier(s.user)
                    )
                )

    def answers(self) -> bool:
        """True when the application database answers `SELECT 1` as the application role."""
        s = self.settings
        try:
            with psycopg.connect(
                host=s.host, port=s.port, dbname=s.database, user=s.user, password=s.password,
                connect_timeout=2,
            ) as conn:  # fmt: skip
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def remove(self) -> None:
        """Delete the cluster's files, including a directory outside the stack dir."""
        if self.link.is_symlink():
            shutil.rmtree(self.link.resolve(), ignore_errors=True)
            self.link.unlink()
        elif self.link.exists():
            shutil.rmtree(self.link, ignore_errors=True)
