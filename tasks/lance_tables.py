"""LanceDB connections, and tables opened safely: the index, its dead letters and the batch ledger alike.

Safe writes rest on two facts measured for lancedb 0.40: concurrent or stale `merge_insert` of
the same new keys inserts duplicates unless the key column is non-nullable and declared the
table's (unenforced) primary key; and a stale handle makes `delete` miss new rows. So every
connection reads with `read_consistency_interval=0` and every table is opened with its key
declared. Writers racing to create, declare or migrate one table all end up with the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import lancedb
import pyarrow as pa

from indexflow.tasks.errors import StoreError, TableNotFoundError
from indexflow.tasks.rows import METADATA_COLUMN, METADATA_SQL, METADATA_TYPE

# Ids per `IN (...)` filter: large enough to keep commits few, small enough for the SQL planner.
ID_BATCH = 1_000
MIGRATE_ATTEMPTS = 5


def id_batches(ids: Iterable[str]) -> Iterator[list[str]]:
    """The ids in lists of at most ID_BATCH, one `IN (...)` filter each."""
    batch: list[str] = []
    for value in ids:
        batch.append(value)
        if len(batch) == ID_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def local_path(uri: str) -> Path | None:
    """The directory of a local database URI (a path or file://...); None for object storage and LanceDB Cloud."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def connect(uri: str, *, create: bool = True, table: str | None = None,
            storage_options: dict[str, str] | None = None) -> lancedb.DBConnection:
    """A connection whose reads see every commit; with `create` False a missing local database is an error.

    `lancedb.connect` makes the directory of a local URI, so a read-only command would leave an
    empty database behind wherever a typo pointed it; the existence check comes first.
    """
    path = local_path(uri)
    if not create and path is not None and not path.is_dir():
        raise TableNotFoundError(f"no LanceDB database at {uri} (no such directory); check --db, "
                                 "or run `indexflow index` first", table=table, uri=uri)
    return lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=storage_options)


def open_or_none(db: lancedb.DBConnection, name: str):
    """Table `name`, or None when the database has no such table."""
    try:
        return db.open_table(name)
    except ValueError as exc:
        if "was not found" in str(exc):
            return None
        raise


def is_commit_conflict(exc: BaseException) -> bool:
    """Lance refused a commit because another one came first ("retryable commit conflict", "incompatible transaction")."""
    text = str(exc).lower()
    return "commit conflict" in text or "incompatible transaction" in text


def ensure_key(table, key: str):
    """Make sure `key` is the declared primary key: without it concurrent upserts duplicate rows.

    Writers opening a new table at once race to declare it; Lance refuses all but one ("retryable
    commit conflict" or "incompatible transaction"), and the schema, re-read, then shows the key."""
    conflicts = 0
    while not any(k.startswith(b"lance-schema:unenforced-primary-key")
                  for k in (table.schema.field(key).metadata or {})):  # the schema is re-read on every access
        try:
            table.set_unenforced_primary_key(key)
        except RuntimeError as exc:
            if not is_commit_conflict(exc):
                raise
            conflicts += 1
            if conflicts == MIGRATE_ATTEMPTS:
                raise
    return table


def ensure_metadata(table):
    """Add the `metadata` column to a table made before it, computed from the table's own columns.

    One `add_columns` commit; no row is read into Python and no vector is touched, so nothing is
    embedded again. Idempotent, and safe when another writer migrates the same table first.
    """
    conflicts = 0
    while METADATA_COLUMN not in table.schema.names:  # the schema is re-read on every access
        try:
            table.add_columns({METADATA_COLUMN: METADATA_SQL})
        except (ValueError, RuntimeError):
            # Another commit came first: "already exists" (ValueError) or Lance's "retryable commit
            # conflict" (RuntimeError). If that was another writer's migration the loop ends here.
            conflicts += 1
            if conflicts == MIGRATE_ATTEMPTS:
                raise
    found = table.schema.field(METADATA_COLUMN).type
    if found != METADATA_TYPE:
        raise StoreError(
            f"table {table.name!r} has a {METADATA_COLUMN!r} column of type {found}, this version writes "
            f"{METADATA_TYPE}; index into a new table name (--table) or pass --rebuild",
            table=table.name, found=str(found), wanted=str(METADATA_TYPE),
        )
    return table


def open_or_create(db: lancedb.DBConnection, name: str, schema: pa.Schema, key: str):
    """Table `name`, created with `schema` if missing (or opened if another writer made it first), `key` declared."""
    table = open_or_none(db, name)
    if table is None:
        try:
            table = db.create_table(name, schema=schema)
        except (ValueError, RuntimeError) as exc:
            # Another writer created it first: "already exists" (ValueError), or, when both
            # creations raced to commit, Lance's "retryable commit conflict" (RuntimeError).
            if "already exists" not in str(exc) and "commit conflict" not in str(exc).lower():
                raise
            table = db.open_table(name)
    return ensure_key(table, key)
