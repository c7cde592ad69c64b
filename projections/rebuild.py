"""Blue-green rebuilds and rollbacks of a projection: the Kafka side of :mod:`esflow.readmodel.versions`.

``rebuild`` registers version N+1 (or resumes the one a crashed rebuild left ``building``), replays the
event topics into its schema from its own checkpoints with the bulk replayer, adds the deferred
indexes, and switches the `bi` views once it has caught up, after validation. Meanwhile the live
version N keeps serving and its workers keep it current; after the switch they follow the registry to
N+1 and N stays as ``standby`` for ``rollback``.

One rebuild per projection at a time: the rebuilding process holds a session-level advisory lock for
its whole run, so a second one is refused while the first lives, and a crashed one (lock released with
its connection) is resumed by the next ``rebuild`` from the checkpoints it committed.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from esflow.messaging.codec import Codec
from esflow.readmodel import versions
from esflow.readmodel.migrations import create_indexes
from esflow.readmodel.projection import TP, Projection
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.readmodel.versions import Layout, RebuildRunning, ValidationFailed, Version, VersionError
from esflow.settings import Settings
from projections import registry
from projections.replay import Replayer, ReplayProgress
from projections.runtime import version_group

log = logging.getLogger("esflow.projections")

Progress = Callable[[ReplayProgress], None]


def layout_of(settings: Settings) -> Layout:
    """The installation's layout (from the base schema setting)."""
    return Layout(settings.projections.db_schema)


@contextmanager
def rebuild_lock(engine: sa.Engine, layout: Layout, projection: str) -> Iterator[None]:
    """Hold the projection's rebuild lock for the block, or raise :class:`RebuildRunning` at once."""
    key = zlib.crc32(f"esflow-rebuild:{layout.base}:{projection}".encode())
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one()
        conn.commit()
        if not got:
            raise RebuildRunning(
                f"a rebuild of projection {projection} is already running",
                hint="wait for it (`esflow projection status`) or stop that process; a crashed one "
                "is resumed by the next `esflow projection rebuild`",
            )
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


class Rebuilder:
    """Rebuilds and rolls back the versions of one projection."""

    def __init__(self, name: str, settings: Settings, *, projection: Projection[Any] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.projection = projection or registry.get(name)
        self.layout = layout_of(settings)
        self.decoder = registry.SourceDecoder(Codec.from_settings(settings.schemas))
        self.base = create_engine(settings.postgres, self.layout.base, pool_size=2)

    def close(self) -> None:
        """Release the connection pool."""
        self.base.dispose()

    def __enter__(self) -> Rebuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ replay

    def _replay(
        self,
        version: Version,
        *,
        lag_threshold: int = 0,
        targets: Mapping[TP, int] | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> ReplayProgress:
        engine = create_engine(self.settings.postgres, version.schema, pool_size=2)
        try:
            replayer = Replayer(
                self.projection,
                self.decoder,
                ProjectionStore(engine),
                kafka=self.settings.kafka,
                topics=self.settings.topics,
                group_id=version_group(self.settings.projections, self.name, version.version),
                settings=self.settings.projections,
                batch_size=self.settings.projections.rebuild_batch_size,
            )
            return replayer.run(lag_threshold=lag_threshold, targets=targets, progress=progress, stop=stop)
        finally:
            engine.dispose()

    def _switch(self, version: Version, stop: threading.Event | None) -> Version:
        def catch_up(targets: Mapping[TP, int]) -> None:
            log.info(
                "%s v%d: catching up with the live version on %d partition(s)",
                self.name,
                version.version,
                len(targets),
            )
            self._replay(version, targets=targets, stop=stop)

        def validate(conn: sa.Connection, new: Version) -> list[str]:
            return versions.standard_checks(conn, self.layout, self.name, new)

        return versions.switch(
            self.base, self.layout, self.projection, version.version, catch_up=catch_up, validate=validate
        )

    # ----------------------------------------------------------------------------------- actions

    def rebuild(
        self,
        *,
        lag_threshold: int | None = None,
        switch: bool = True,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> Version:
        """Build (or resume building) the next version and, with ``switch``, make it live."""
        threshold = (
            self.settings.projections.rebuild_lag_threshold if lag_threshold is None else lag_threshold
        )
        with rebuild_lock(self.base, self.layout, self.name):
            with self.base.begin() as conn:
                building = [
                    v for v in versions.list_versions(conn, self.layout, self.name) if v.state == "building"
                ]
                if building:
                    version = building[0]
                    if version.code_version != self.projection.version:
                        raise VersionError(
                            f"{self.name} v{version.version} is building with code version "
                            f"{version.code_version}, this is code version {self.projection.version}",
                            hint=f"drop it: esflow projection drop-version {self.name} {version.version}",
                        )
                    log.info("%s: resuming the rebuild of v%d", self.name, version.version)
                else:
                    version = versions.begin_build(conn, self.layout, self.projection)
                    log.info("%s: building v%d in %s", self.name, version.version, version.schema)
            self._replay(version, lag_threshold=threshold, progress=progress, stop=stop)
            if stop is not None and stop.is_set():
                return version
            with self.base.begin() as conn:
                create_indexes(
                    conn, version.schema, [self.projection.read_model.ddl_at(version.code_version)]
                )
            if not switch:
                return version
            try:
                return self._switch(version, stop)
            except ValidationFailed as exc:
                versions.mark_failed(self.base, self.layout, self.name, version.version, exc.message)
                raise

    def rollback(self, to_version: int | None = None, *, stop: threading.Event | None = None) -> Version:
        """Make the standby version (the newest one, or ``to_version``) live again, atomically.

        The standby stopped receiving events when it was switched out; it is caught up first (with this
        code, so only when it was built by this code version), then switched like a rebuild.
        """
        with rebuild_lock(self.base, self.layout, self.name):
            with self.base.connect() as conn:
                listed = versions.list_versions(conn, self.layout, self.name)
            standby = [
                v for v in listed if v.state == "standby" and (to_version is None or v.version == to_version)
            ]
            if not standby:
                known = ", ".join(f"v{v.version} ({v.state})" for v in listed) or "none"
                raise VersionError(
                    f"projection {self.name} has no standby version"
                    + (f" {to_version}" if to_version is not None else ""),
                    hint=f"versions: {known}",
                )
            target = standby[-1]
            if target.code_version != self.projection.version:
                # This code cannot apply events for another code version's tables; switch only if the
                # standby needs no catching up (switch() calls catch_up only when it is behind).
                def refuse(targets: Mapping[TP, int]) -> None:
                    raise VersionError(
                        f"{self.name} v{target.version} (code version {target.code_version}) is behind "
                        f"the live version and this is code version {self.projection.version}",
                        hint="run the rollback from a deployment of that code version",
                    )

                return versions.switch(
                    self.base, self.layout, self.projection, target.version, catch_up=refuse
                )
            return self._switch(target, stop)

    def drop(self, version: int) -> Version:
        """Drop a version that is not live (and is not being rebuilt right now)."""
        with self.base.connect() as conn:
            state = versions.get_version(conn, self.layout, self.name, version).state
        if state == "building":
            with rebuild_lock(self.base, self.layout, self.name):
                return versions.drop_version(self.base, self.layout, self.name, version)
        return versions.drop_version(self.base, self.layout, self.name, version)
