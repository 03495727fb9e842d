"""How fresh the chunks a search reads are: bounded staleness, with read-your-writes per tenant.

LanceDB re-reads a table's latest version (a LIST of its ``_versions/`` on S3, several per query) at most
once per ``read_consistency_interval``. ``RAG_READ_CONSISTENCY_S`` sets it for the chunks table: 0 checks
on every read (a query then costs ~5 LIST requests on S3, measured: bench/freshness.py), N seconds lets a
process search a version up to N seconds old, ``never`` only on demand.

Staleness would hide a document from the user who just ingested it: the ingestion and chat functions are
separate processes (Lambdas: no shared memory). So every write of a tenant's chunks publishes the table
version it committed in a tiny per-tenant *version marker* next to the table (``_freshness/chunks/
<tenant>.json``: a file in a folder, an object on S3). A reader of that tenant first reads the marker
(one GET, a tenth of a LIST's price) and moves to the table's latest version when the marker names a
newer one than it holds. A tenant thus sees its own writes (from any process) on its next query, whatever
the setting; the setting bounds only what publishes no marker: another process's index builds and
compactions, and a write whose marker could not be written (logged).

Markers only ever move forward: a publish is a compare-and-swap (S3 conditional PUT, If-Match /
If-None-Match; a file lock in a folder), so of two concurrent writers the higher version stays.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from shared.object_store import ConditionalJson, LocalObjectStore, ObjectStore, S3ObjectStore

log = logging.getLogger(__name__)

MARKERS_DIR = "_freshness"
# A marker's compare-and-swap lost to a concurrent writer this many times in a row is given up (logged).
PUBLISH_ATTEMPTS = 8


def consistency_interval(seconds: float) -> timedelta | None:
    """LanceDB's read_consistency_interval for ``seconds`` of allowed staleness (inf: never re-check)."""
    if seconds < 0:
        raise ValueError("read consistency must be >= 0 seconds")
    return None if seconds == float("inf") else timedelta(seconds=seconds)


class VersionMarkers:
    """The per-tenant version markers of one table, ``<table location>/_freshness/<table>/<tenant>.json``: small
    JSON objects replaced by compare-and-swap (shared.object_store.ConditionalJson: a conditional PutObject on
    S3, a file lock in a folder), so that of two concurrent publishers the higher version stays."""

    def __init__(self, objects: ConditionalJson, table: str) -> None:
        self.objects = objects
        self.dir = f"{MARKERS_DIR}/{table}"

    def _key(self, tenant: str) -> str:
        return f"{self.dir}/{quote(tenant, safe='')}.json"

    def read(self, tenant: str) -> int | None:
        """The version last published for ``tenant``; None when none was (one GET on S3)."""
        got = self.objects.get(self._key(tenant))
        return None if got is None else int(got[0]["version"])

    def publish(self, tenant: str, version: int) -> None:
        """Make the tenant's marker at least ``version`` (never lower it): read it, then write it conditional on
        what was read; a concurrent publish makes the write fail, and it is read again."""
        key = self._key(tenant)
        for _ in range(PUBLISH_ATTEMPTS):
            got = self.objects.get(key)
            if got is not None and int(got[0]["version"]) >= version:
                return
            if self.objects.put(
                key, {"version": version}, create=got is None, if_match=None if got is None else got[1]
            ):
                return
        log.warning("the version marker of a tenant was not published: %d concurrent updates", PUBLISH_ATTEMPTS)


def open_markers(uri: str, storage_options: dict[str, str] | None, table: str) -> VersionMarkers:
    """The markers of ``table`` in the LanceDB at ``uri`` (a folder or s3://bucket/prefix); an S3 client is
    made from the same ``storage_options`` LanceDB gets (endpoint, region, timeout)."""
    if not uri.startswith("s3://"):
        store: ObjectStore = LocalObjectStore(uri.removeprefix("file://"))
        return VersionMarkers(ConditionalJson(store, lock_dir=f"{MARKERS_DIR}/{table}"), table)
    from botocore.config import Config

    from shared.aws_clients import make_client

    opts = storage_options or {}
    timeout = float(opts.get("timeout", "60s").rstrip("s") or 60)
    config = Config(
        read_timeout=timeout,
        connect_timeout=min(timeout, 10.0),
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if opts.get("endpoint") else {},
    )
    region = opts.get("region") or "us-east-1"
    client = make_client("s3", endpoint_url=opts.get("endpoint"), region=region, config=config)
    return VersionMarkers(ConditionalJson(S3ObjectStore(client, uri), lock_dir=MARKERS_DIR), table)


class Freshness:
    """The chunks table's freshness policy: what a reader of a tenant checks before reading, what a writer
    does before and after a write. ``staleness_s`` 0: LanceDB re-checks on every read already, markers
    are neither read nor needed (they are still published, so a reader set otherwise sees them)."""

    def __init__(self, markers: VersionMarkers, staleness_s: float) -> None:
        self.markers = markers
        self.staleness_s = staleness_s
        self.interval = consistency_interval(staleness_s)
        self._refresh_lock = threading.Lock()

    @property
    def bounded(self) -> bool:
        """Whether reads may be stale at all (anything but 0)."""
        return self.staleness_s != 0

    def before_read(self, table: Any, tenant: str) -> None:
        """Move ``table`` to its latest version if the tenant's marker is newer than the version it holds
        (read-your-writes across processes). A marker that cannot be read leaves it as it is: the read is
        then at most ``staleness_s`` stale."""
        if not self.bounded:
            return
        try:
            marker = self.markers.read(tenant)
        except Exception as exc:
            log.warning("reading a tenant's version marker failed (%s); reading the version held", type(exc).__name__)
            return
        if marker is not None and marker > int(table.version):
            with self._refresh_lock:
                if marker > int(table.version):
                    table.checkout_latest()
                    log.debug("table %s moved to version %s (tenant marker %d)", table.name, table.version, marker)

    def before_write(self, table: Any) -> None:
        """A write reads what it replaces (the document's old chunks): it runs on the latest version."""
        if self.bounded:
            table.checkout_latest()

    def after_write(self, table: Any, tenant: str) -> None:
        """Publish the version the write committed for the tenant. A failure is logged, not raised: the
        write is committed, other readers see it within ``staleness_s``."""
        try:
            self.markers.publish(tenant, int(table.version))
        except Exception as exc:
            log.warning("publishing a tenant's version marker failed (%s)", type(exc).__name__)
