"""Projection versions: versioned schemas, the registry that names the live one, and the `bi` views.

Every projection version lives in its own schema (``rm_<projection>_v<N>``: tables, checkpoints,
status, dead letters), built from offset 0 by its own consumer group. The registry
(``projection_versions`` in the base schema) records each version's state:

- ``building``: a rebuild is filling it; never read by BI;
- ``live``: the `bi` views point at it and the projector workers keep it current (one per projection,
  enforced by a unique index);
- ``standby``: the previous live version, kept for `rollback` until `drop-version`;
- ``failed``: a rebuild that did not pass validation; never becomes live;
- ``dropped``: its schema is gone.

BI tools read only the views of the `bi` schema, through a read-only role; the views keep their
columns whatever version is live, and a switch rewrites them in one transaction (``CREATE OR REPLACE
VIEW`` keeps grants and refuses a change of column names or types, which is the contract). The switch
first locks the live version's checkpoint rows and checks the new version has applied at least as much
of every partition, so a reader never sees a row count or a total go backwards.

This module is plain SQL: the rebuild itself (reading Kafka) lives in the projections deployable.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from esflow.errors import EsflowError, translated
from esflow.readmodel.contract import PROJECTION_STATUS, View
from esflow.readmodel.migrations import create_schema, migrate
from esflow.readmodel.projection import TP, Projection

STATES = ("building", "live", "standby", "failed", "dropped")

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class VersionError(EsflowError):
    """A projection-version operation that cannot be done (names the projection and version)."""


class RebuildRunning(VersionError):
    """Another rebuild of the same projection is in progress."""


class ValidationFailed(VersionError):
    """A built version did not pass the checks that guard a cut-over."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything lives, derived from the base schema (``ESFLOW_PROJECTION_DB_SCHEMA``).

    With the default base ``public`` the names are the documented ones (``bi``, ``rm_orders_v1``,
    ``esflow_bi_reader``); any other base prefixes them with ``<base>_``, so several installations
    (tests, staging) can share one database without seeing each other.
    """

    base: str = "public"

    def __post_init__(self) -> None:
        if not _NAME.match(self.base):
            raise VersionError(f"invalid schema name {self.base!r}", hint="lowercase letters, digits, _")

    @property
    def prefix(self) -> str:
        """The prefix of every derived name (empty for ``public``)."""
        return "" if self.base == "public" else f"{self.base}_"

    @property
    def bi(self) -> str:
        """The schema of the BI views."""
        return f"{self.prefix}bi"

    @property
    def reader_role(self) -> str:
        """The NOLOGIN role that may read the BI views and nothing else."""
        return f"{self.prefix}esflow_bi_reader"

    def version_schema(self, projection: str, version: int) -> str:
        """The schema of one projection version."""
        return f"{self.prefix}rm_{projection}_v{version}"

    @property
    def registry(self) -> str:
        """The qualified registry table."""
        return _q(self.base, "projection_versions")


@dataclass(frozen=True, slots=True)
class Version:
    """One row of the registry."""

    projection: str
    version: int
    schema: str
    code_version: int
    aggregates: tuple[str, ...]
    """Aggregates whose event topics the version reads."""
    state: str
    created_at: datetime
    live_since: datetime | None
    retired_at: datetime | None
    error: str | None


def _q(*names: str) -> str:
    """A quoted (qualified) identifier, by psycopg.sql: names go into the f-strings below only so."""
    return sql.Identifier(*names).as_string()


def _ddl(conn: sa.Connection, statement: sql.Composable) -> None:
    """Run a statement composed with psycopg.sql on the caller's transaction.

    DDL with literals (passwords, comments) takes no bind parameters; composed with :class:`sql.Literal`
    and run on the driver connection, a colon in the text is not taken for a SQLAlchemy bind parameter.
    """
    conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]


def _version(row: Any) -> Version:
    return Version(
        row.projection,
        row.version,
        row.schema_name,
        row.code_version,
        tuple(row.aggregates),
        row.state,
        row.created_at,
        row.live_since,
        row.retired_at,
        row.error,
    )


def list_versions(conn: sa.Connection, layout: Layout, projection: str | None = None) -> list[Version]:
    """Registry rows, by projection and version (all projections when ``projection`` is None)."""
    where = "" if projection is None else "WHERE projection = :p"
    rows = conn.execute(
        sa.text(
            "SELECT projection, version, schema_name, code_version, aggregates, state, created_at, "
            f"live_since, retired_at, error FROM {layout.registry} {where} ORDER BY projection, version"
        ),
        {"p": projection},
    ).all()
    return [_version(r) for r in rows]


def live_version(conn: sa.Connection, layout: Layout, projection: str) -> Version | None:
    """The version the BI views point at, if any."""
    return next((v for v in list_versions(conn, layout, projection) if v.state == "live"), None)


def get_version(conn: sa.Connection, layout: Layout, projection: str, version: int) -> Version:
    """One version, or a :class:`VersionError` listing the known ones."""
    versions = list_versions(conn, layout, projection)
    for v in versions:
        if v.version == version:
            return v
    known = ", ".join(f"v{v.version} ({v.state})" for v in versions) or "none"
    raise VersionError(f"projection {projection} has no version {version}", hint=f"known: {known}")


# ----------------------------------------------------------------------------------------- install


def _lock(conn: sa.Connection, layout: Layout) -> None:
    # Every registry change and view switch of one installation is serialised by this lock.
    key = zlib.crc32(f"esflow-versions:{layout.base}".encode())
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def install(engine: sa.Engine, layout: Layout, projections: Sequence[Projection[Any]]) -> list[str]:
    """Install or upgrade the read models (what `esflow db migrate` runs); idempotent.

    Applies the base migrations, creates the `bi` schema and the reader role, and gives every
    projection that has no version yet a live version 1. Returns what it did, one line each.
    """
    done = [f"migration {m.version:04d} {m.name}" for m in migrate(engine, layout.base)]
    with translated(f"installing the read models in {layout.base}"):
        with engine.begin() as conn:
            _lock(conn, layout)
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_q(layout.bi)}"))
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": layout.reader_role}
            ).first()
            if not exists:
                conn.execute(sa.text(f"CREATE ROLE {_q(layout.reader_role)} NOLOGIN"))
                done.append(f"role {layout.reader_role}")
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {_q(layout.bi)} TO {_q(layout.reader_role)}"))
            _ddl(
                conn,
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(layout.bi),
                    sql.Literal(
                        "esflow read models for BI tools: stable views over the live projection versions "
                        "(docs/bi.md)."
                    ),
                ),
            )
        for p in projections:
            projection, code_version = p.name, p.version
            with engine.begin() as conn:
                _lock(conn, layout)
                if list_versions(conn, layout, projection):
                    continue
                schema = layout.version_schema(projection, 1)
                create_schema(conn, schema, [p.read_model.ddl_at(code_version)])
                conn.execute(
                    sa.text(
                        f"INSERT INTO {layout.registry} (projection, version, schema_name, code_version, "
                        "aggregates, state, live_since) VALUES (:p, 1, :s, :c, :a, 'live', now())"
                    ),
                    {"p": projection, "s": schema, "c": code_version, "a": list(p.aggregates)},
                )
                _point_views(conn, layout, p.read_model.views, schema)
                done.append(f"projection {projection} v1 (code version {code_version}) in {schema}, live")
    return done


def grant_bi(engine: sa.Engine, layout: Layout, role: str, *, password: str | None = None) -> list[str]:
    """Let ``role`` read the BI views (and nothing else of esflow); create it as a login role if missing.

    With ``password``, a missing role is created as a login role with it, and an existing role gets it
    as its new password, except the role esflow itself connects as or a superuser: their password is
    left alone and the returned lines say so (a BI grant must not be a way to change those).
    """
    if not _NAME.match(role):
        raise VersionError(f"invalid role name {role!r}", hint="lowercase letters, digits and _")
    done = []
    with translated(f"granting BI access to {role}"), engine.begin() as conn:
        if not conn.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": layout.reader_role}
        ).first():
            raise VersionError(
                f"role {layout.reader_role} does not exist", hint="run `esflow db migrate` first"
            )
        if not conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
            if password is None:
                raise VersionError(
                    f"role {role} does not exist", hint="pass --password to create it as a login role"
                )
            _ddl(
                conn,
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                ),
            )
            conn.execute(sa.text(f"ALTER ROLE {_q(role)} SET search_path TO {_q(layout.bi)}"))
            done.append(f"created login role {role} (search_path {layout.bi})")
        elif password is not None:
            done.append(_set_password(conn, role, password))
        conn.execute(sa.text(f"GRANT {_q(layout.reader_role)} TO {_q(role)}"))
        done.append(f"granted {layout.reader_role} to {role}")
    return done


def _set_password(conn: sa.Connection, role: str, password: str) -> str:
    """Give an existing role ``password``, or say why not (caller's transaction)."""
    me, superuser, can_login = conn.execute(
        sa.text("SELECT rolname = current_user, rolsuper, rolcanlogin FROM pg_roles WHERE rolname = :r"),
        {"r": role},
    ).one()
    if me or superuser:
        what = "the role esflow connects as" if me else "a superuser"
        return f"did not set the password of {role}: it is {what}"
    _ddl(conn, sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    if not can_login:
        return f"set the password of existing role {role} (it is NOLOGIN: it cannot log in with it)"
    return f"set the password of existing role {role}"


# ------------------------------------------------------------------------------------------ views


def _point_views(conn: sa.Connection, layout: Layout, views: Sequence[View], schema: str) -> None:
    """Point a projection's ``views`` at ``schema`` and refresh the freshness view (caller's txn)."""
    bi = _q(layout.bi)
    for view in views:
        columns = ", ".join(_q(c.name) for c in view.columns)
        conn.execute(
            sa.text(
                f"CREATE OR REPLACE VIEW {bi}.{_q(view.name)} AS "
                f"SELECT {columns} FROM {_q(schema)}.{_q(view.table)}"
            )
        )
        _comment(conn, layout, view)
        conn.execute(sa.text(f"GRANT SELECT ON {bi}.{_q(view.name)} TO {_q(layout.reader_role)}"))
    _point_status_view(conn, layout)


def _point_status_view(conn: sa.Connection, layout: Layout) -> None:
    status = PROJECTION_STATUS
    columns = ", ".join(_q(c.name) for c in status.columns)
    lives = [v.schema for v in list_versions(conn, layout) if v.state == "live"]
    if not lives:
        return
    union = " UNION ALL ".join(f"SELECT {columns} FROM {_q(s)}.{_q(status.table)}" for s in lives)
    bi = _q(layout.bi)
    conn.execute(sa.text(f"CREATE OR REPLACE VIEW {bi}.{_q(status.name)} AS {union}"))
    _comment(conn, layout, status)
    conn.execute(sa.text(f"GRANT SELECT ON {bi}.{_q(status.name)} TO {_q(layout.reader_role)}"))


def _comment(conn: sa.Connection, layout: Layout, view: View) -> None:
    text = f"{view.comment}\nGrain: {view.grain}\nFreshness: {view.freshness}"
    name = sql.Identifier(layout.bi, view.name)
    _ddl(conn, sql.SQL("COMMENT ON VIEW {} IS {}").format(name, sql.Literal(text)))
    for column in view.columns:
        target = sql.Identifier(layout.bi, view.name, column.name)
        _ddl(conn, sql.SQL("COMMENT ON COLUMN {} IS {}").format(target, sql.Literal(column.comment)))


def _column_types(conn: sa.Connection, schema: str, relation: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :r AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        ),
        {"s": schema, "r": relation},
    ).all()
    return {str(name): str(type_) for name, type_ in rows}


def contract_problems(conn: sa.Connection, layout: Layout, views: Sequence[View], schema: str) -> list[str]:
    """Why ``schema`` cannot serve a projection's BI ``views`` (empty when it can).

    Every contract column must exist in the new tables, with the type the current view exposes (or, for
    a view not created yet, any type): BI tools never see a column vanish, change type or be renamed.
    """
    problems = []
    for view in views:
        table = _column_types(conn, schema, view.table)
        if not table:
            problems.append(f"{schema}.{view.table} does not exist")
            continue
        current = _column_types(conn, layout.bi, view.name)
        for column in view.columns:
            if column.name not in table:
                problems.append(
                    f"{schema}.{view.table} has no column {column.name} (bi.{view.name} needs it)"
                )
            elif column.name in current and current[column.name] != table[column.name]:
                problems.append(
                    f"{schema}.{view.table}.{column.name} is {table[column.name]}, "
                    f"bi.{view.name} exposes {current[column.name]}"
                )
    return problems


# --------------------------------------------------------------------------------------- registry


def begin_build(conn: sa.Connection, layout: Layout, built: Projection[Any]) -> Version:
    """Register a new ``building`` version (the next number) and create its schema.

    The schema has no secondary indexes yet (the bulk load adds them at the end); the caller holds the
    projection's rebuild lock and commits.
    """
    projection, code_version = built.name, built.version
    _lock(conn, layout)
    versions = list_versions(conn, layout, projection)
    building = [v for v in versions if v.state == "building"]
    if building:
        raise RebuildRunning(
            f"projection {projection} already has version {building[0].version} building",
            hint="`esflow projection rebuild` resumes it; `esflow projection drop-version` drops it",
        )
    number = max((v.version for v in versions), default=0) + 1
    schema = layout.version_schema(projection, number)
    conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE"))
    create_schema(conn, schema, [built.read_model.ddl_at(code_version)], indexes=False)
    conn.execute(
        sa.text(
            f"INSERT INTO {layout.registry} (projection, version, schema_name, code_version, aggregates, "
            "state) VALUES (:p, :v, :s, :c, :a, 'building')"
        ),
        {"p": projection, "v": number, "s": schema, "c": code_version, "a": list(built.aggregates)},
    )
    return get_version(conn, layout, projection, number)


def mark_failed(engine: sa.Engine, layout: Layout, projection: str, version: int, error: str) -> None:
    """Record that a build failed validation: it stays out of service, its schema kept for inspection."""
    with engine.begin() as conn:
        _lock(conn, layout)
        conn.execute(
            sa.text(
                f"UPDATE {layout.registry} SET state = 'failed', error = :e, retired_at = now() "
                "WHERE projection = :p AND version = :v"
            ),
            {"p": projection, "v": version, "e": error},
        )


def checkpoints(conn: sa.Connection, schema: str, projection: str, *, lock: bool = False) -> dict[TP, int]:
    """A version's checkpoints (``lock``: FOR UPDATE, which holds its workers' next batch)."""
    rows = conn.execute(
        sa.text(
            f'SELECT topic, partition, "offset" FROM {_q(schema)}.projection_checkpoints '
            "WHERE projection = :p ORDER BY topic, partition" + (" FOR UPDATE" if lock else "")
        ),
        {"p": projection},
    ).all()
    return {(t, p): o for t, p, o in rows}


def behind(target: Mapping[TP, int], have: Mapping[TP, int]) -> dict[TP, int]:
    """Partitions where ``have`` has not reached ``target``: partition -> target offset."""
    return {tp: o for tp, o in target.items() if o >= 0 and have.get(tp, -1) < o}


def switch(
    engine: sa.Engine,
    layout: Layout,
    served: Projection[Any],
    to_version: int,
    *,
    catch_up: Callable[[Mapping[TP, int]], None],
    validate: Callable[[sa.Connection, Version], Sequence[str]] | None = None,
    attempts: int = 20,
    lock_timeout_s: float = 30.0,
) -> Version:
    """Make ``to_version`` live in one transaction; the old live version becomes ``standby``.

    Each attempt locks the live version's checkpoint rows (its workers wait), and switches only if
    ``to_version`` has applied at least as far on every partition; otherwise it lets go, calls
    ``catch_up(target)`` to bring ``to_version`` past those offsets, and tries again. ``validate``
    (run inside the switching transaction) returning problems stops the switch with
    :class:`ValidationFailed` and nothing changes. The views switched are those ``served`` (the
    projection's code in this process) declares.
    """
    projection = served.name
    for _attempt in range(attempts):
        gap: dict[TP, int] = {}
        with engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
            _lock(conn, layout)
            new = get_version(conn, layout, projection, to_version)
            if new.state == "live":
                return new
            if new.state in ("failed", "dropped"):
                raise VersionError(
                    f"{projection} v{to_version} is {new.state}" + (f": {new.error}" if new.error else ""),
                    hint="rebuild the projection to get a new version",
                )
            old = live_version(conn, layout, projection)
            if old is not None:
                frozen = checkpoints(conn, old.schema, projection, lock=True)
                gap = behind(frozen, checkpoints(conn, new.schema, projection))
            if not gap:
                problems = list(contract_problems(conn, layout, served.read_model.views, new.schema))
                if validate is not None:
                    problems.extend(validate(conn, new))
                if problems:
                    raise ValidationFailed(
                        f"{projection} v{to_version} failed validation: " + "; ".join(problems),
                        hint="it stays out of service; fix the projection and rebuild",
                    )
                if old is not None:
                    conn.execute(
                        sa.text(
                            f"UPDATE {layout.registry} SET state = 'standby', retired_at = now() "
                            "WHERE projection = :p AND version = :v"
                        ),
                        {"p": projection, "v": old.version},
                    )
                conn.execute(
                    sa.text(
                        f"UPDATE {layout.registry} SET state = 'live', live_since = now(), "
                        "retired_at = NULL, error = NULL WHERE projection = :p AND version = :v"
                    ),
                    {"p": projection, "v": to_version},
                )
                _point_views(conn, layout, served.read_model.views, new.schema)
                return get_version(conn, layout, projection, to_version)
        catch_up(gap)
    raise VersionError(
        f"{projection} v{to_version} did not catch up with the live version in {attempts} attempts",
        hint="the live workers outrun the catch-up; retry when the load is lower",
    )


def drop_version(engine: sa.Engine, layout: Layout, projection: str, version: int) -> Version:
    """Drop a standby, failed or (abandoned) building version's schema; the live one is refused."""
    with engine.begin() as conn:
        _lock(conn, layout)
        v = get_version(conn, layout, projection, version)
        if v.state == "live":
            raise VersionError(
                f"{projection} v{version} is live", hint="switch to another version first (rollback/rebuild)"
            )
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {_q(v.schema)} CASCADE"))
        conn.execute(
            sa.text(
                f"UPDATE {layout.registry} SET state = 'dropped', retired_at = COALESCE(retired_at, now()) "
                "WHERE projection = :p AND version = :v"
            ),
            {"p": projection, "v": version},
        )
        return get_version(conn, layout, projection, version)


def dead_letter_offsets(conn: sa.Connection, schema: str, projection: str) -> set[tuple[str, int, int]]:
    """The (topic, partition, offset) of every record a version dead-lettered."""
    rows = conn.execute(
        sa.text(
            f'SELECT topic, partition, "offset" FROM {_q(schema)}.projection_dead_letters '
            "WHERE projection = :p"
        ),
        {"p": projection},
    ).all()
    return {(t, p, o) for t, p, o in rows}


def standard_checks(conn: sa.Connection, layout: Layout, projection: str, new: Version) -> list[str]:
    """The checks every cut-over runs.

    No halted partition, and no record dead-lettered by the new version that the live version applied
    (that is a new bug, not bad input).
    """
    problems: list[str] = []
    halted = conn.execute(
        sa.text(
            f"SELECT topic, partition, error FROM {_q(new.schema)}.projection_status "
            "WHERE projection = :p AND halted"
        ),
        {"p": projection},
    ).all()
    problems.extend(f"partition {t}[{p}] halted: {e}" for t, p, e in halted)
    old = live_version(conn, layout, projection)
    if old is not None:
        upto = checkpoints(conn, old.schema, projection)
        before = dead_letter_offsets(conn, old.schema, projection)
        extra = sorted(
            (t, p, o)
            for t, p, o in dead_letter_offsets(conn, new.schema, projection) - before
            if o <= upto.get((t, p), -1)
        )
        if extra:
            t, p, o = extra[0]
            problems.append(
                f"{len(extra)} record(s) dead-lettered that v{old.version} applied (first {t}[{p}]@{o})"
            )
    return problems
