"""``MongoStore``: the ``mongodb`` provider, and its migration plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pymongo.errors

from ..garbage import GarbageReport
from .dicom_index import DicomIndex
from .garbage import DEFAULT_MIN_AGE_S, collect_stray_chunks
from .grid import GridBucket
from .layout import LEGACY_UNIQUE_INDEXES, SCHEMA_VERSION, IndexSpec, index_plan
from .url import EXCLUSIVE

__all__ = ["MigrationStep", "MongoStore"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationStep:
    """One change :meth:`MongoStore.migrate` makes (or would make)."""

    action: str
    """``"create index"``, ``"create unique index"`` or ``"drop index"``."""
    collection: str
    keys: tuple[str, ...]
    reason: str
    done: bool = False
    """Whether it was applied (``False`` in a plan, or when applying it failed)."""
    problem: str | None = None
    """Why applying it failed (the store keeps working without it)."""

    def describe(self) -> str:
        """One line for logs and the command line."""
        what = f"{self.action} {self.collection}({', '.join(self.keys)}) - {self.reason}"
        return what + (f" [failed: {self.problem}]" if self.problem else "")


class MongoStore(DicomIndex):
    """The dcm-processor platform's MongoDB layout, as a guest in its database.

    See ``docs/storage.md`` for the collections and fields. ``url`` may carry the option
    ``layout=exclusive`` for a database no platform component writes to (unique
    indexes on top of the platform's layout).
    """

    def __init__(self, url: str, name: str | None = None) -> None:
        super().__init__(url, name)
        #: session files (``sessionfiles`` bucket)
        self.files = GridBucket(self, "sessionfiles")
        #: ingested DICOM instances (``dicomfiles`` bucket)
        self.dicom = GridBucket(self, "dicomfiles")
        #: the steps the last :meth:`migrate` applied (empty when nothing was missing)
        self.last_migration: list[MigrationStep] = []
        self.migrate()

    @property
    def blobs(self) -> GridBucket:
        """The session-file bucket (the blob store of session files)."""
        return self.files

    def collect_garbage(
        self, *, dry_run: bool = False, min_age_s: float | None = None
    ) -> GarbageReport:
        """Remove the GridFS chunks of uploads that died (see :mod:`.garbage`)."""
        report = GarbageReport(self.describe(), dry_run=dry_run)
        age = DEFAULT_MIN_AGE_S if min_age_s is None else min_age_s
        self._run(
            lambda db: collect_stray_chunks(
                db, ("sessionfiles", "dicomfiles"), report, dry_run=dry_run, min_age_s=age
            ),
            retry=False,
        )
        logger.info("%s", report.summary())
        return report

    def migration_plan(self) -> list[MigrationStep]:
        """What :meth:`migrate` would change now, changing nothing.

        Only index changes are ever planned: missing indexes of the layout are created
        (non-unique on the platform's database, where no write can violate them; unique
        as well with ``layout=exclusive``), and unique indexes that dcm-processor-service
        0.1 created — which make the platform's own writes fail — are dropped. No
        document is changed or deleted.
        """

        def work(db: Any) -> list[MigrationStep]:
            existing: dict[str, dict[tuple[str, ...], bool]] = {}

            def indexes(collection: str) -> dict[tuple[str, ...], bool]:
                if collection not in existing:
                    info = db[collection].index_information()
                    existing[collection] = {
                        tuple(k for k, _ in spec["key"]): bool(spec.get("unique"))
                        for spec in info.values()
                    }
                return existing[collection]

            steps: list[MigrationStep] = []
            for spec in LEGACY_UNIQUE_INDEXES:
                if indexes(spec.collection).get(spec.keys):
                    del existing[spec.collection][spec.keys]  # gone once dropped
                    steps.append(
                        MigrationStep(
                            "drop index",
                            spec.collection,
                            spec.keys,
                            "unique index of dcm-processor-service 0.1: the platform's "
                            "documents lack these fields, so its writes fail on it",
                        )
                    )
            for spec in index_plan(self.layout):
                have = indexes(spec.collection)
                if spec.keys in have and (have[spec.keys] or not spec.unique):
                    continue
                action = "create unique index" if spec.unique else "create index"
                steps.append(MigrationStep(action, spec.collection, spec.keys, spec.why))
            return steps

        return self._run(work)

    def migrate(self) -> int:
        """Apply :meth:`migration_plan` (logging each step) and return the layout
        version. Safe to repeat and to run from several processes at once; an index
        that cannot be built (duplicates in existing data) is reported and the store
        keeps working."""
        applied = [self._apply(step) for step in self.migration_plan()]
        for step in applied:
            log = logger.warning if step.problem or step.action == "drop index" else logger.info
            log("%s: %s", self.describe(), step.describe())
        self.last_migration = applied
        return SCHEMA_VERSION

    def _apply(self, step: MigrationStep) -> MigrationStep:
        spec = IndexSpec(step.collection, step.keys, unique=step.action == "create unique index")

        def work(db: Any) -> None:
            collection = db[step.collection]
            if step.action == "drop index":
                for name, info in collection.index_information().items():
                    if tuple(k for k, _ in info["key"]) == step.keys and info.get("unique"):
                        collection.drop_index(name)
            else:
                collection.create_index(spec.key_list, unique=spec.unique)

        try:
            self._run(work)
        except Exception as exc:  # duplicates, or an index with other options on the keys
            detail = str(exc)
            if isinstance(exc.__cause__, pymongo.errors.PyMongoError):
                detail = str(exc.__cause__)
            if self.layout == EXCLUSIVE and spec.unique:
                detail += " - concurrent writers of one key are less protected until it exists"
            return MigrationStep(
                step.action, step.collection, step.keys, step.reason, False, detail
            )
        return MigrationStep(step.action, step.collection, step.keys, step.reason, True)
