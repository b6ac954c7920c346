"""The one LanceDB module: schema, open with fresh reads, upserts, deletes, dead letters.

Safe writes rest on two facts measured for lancedb 0.40:
concurrent or stale `merge_insert` of the same new keys inserts duplicates unless `id` is
non-nullable and declared the table's (unenforced) primary key; and a stale handle makes
`delete` miss new rows. So every table is created with the key and opened with
`read_consistency_interval=0`. The embedding recipe lives in the Arrow schema metadata under
`indexflow.recipe`; it survives `merge_insert`, `delete`, `optimize` and index builds.
A `metadata` struct column repeats a chunk's id, document, ordinal, title and source, because
LangChain's and LlamaIndex's LanceDB stores read a document's metadata from that column only.
Indexes and queries live in `tasks.search`; grouped writes in `tasks.writer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import RecipeMismatchError, StoreError, TableNotFoundError
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.rows import (  # noqa: F401 - the row shape is part of the store's API
    CHUNK_FIELDS,
    ID_FIELD,
    METADATA_COLUMN,
    METADATA_KEYS,
    METADATA_SQL,
    METADATA_TYPE,
    PK_METADATA,
    RECIPE_KEY,
    UTC_US,
    chunk_schema,
    rows_from,
)
from indexflow.tasks.search import FinalizeReport, Hit, IndexPolicy, build_indexes, finalize_due, search_table

DEAD_LETTER_SUFFIX = "__dead_letters"
# Ids per `IN (...)` filter: large enough to keep commits few, small enough for the SQL planner.
ID_BATCH = 1_000


MIGRATE_ATTEMPTS = 5
COMMIT_ATTEMPTS = 10  # a dead-letter merge racing every other writer's declaration of the new table's key


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False, metadata=PK_METADATA),
        *CHUNK_FIELDS,
        pa.field("error", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("failed_at", UTC_US, nullable=False),
        pa.field("error_type", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class FailedItem:
    """A chunk that could not be embedded; it keeps the text so `--retry-failed` needs no corpus."""

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    title: str
    source: str
    content_hash: str
    error: str
    attempts: int
    failed_at: datetime
    error_type: str = ""

    @classmethod
    def from_chunk(
        cls, chunk: Chunk, error: str, attempts: int, failed_at: datetime | None = None, error_type: str = ""
    ) -> FailedItem:
        return cls(
            chunk.id, chunk.doc_id, chunk.ordinal, chunk.text, chunk.title, chunk.source,
            chunk.content_hash, error, attempts, failed_at or datetime.now(timezone.utc), error_type,
        )

    @classmethod
    def of(cls, item) -> FailedItem:
        """A FailedItem as is, or built from anything with `chunk`, `error`, `attempts`, `failed_at`
        (and optionally `error_type`), such as `tasks.batcher.FailedItem`."""
        if isinstance(item, cls):
            return item
        return cls.from_chunk(item.chunk, str(item.error), item.attempts, item.failed_at, getattr(item, "error_type", ""))

    def to_chunk(self, tokens: int = 0) -> Chunk:
        """The chunk to embed again (`tokens` is not stored; pass an estimate if the caller needs one)."""
        return Chunk(self.chunk_id, self.doc_id, self.ordinal, self.text, self.title, self.source, tokens, self.content_hash)


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """What the planner needs to know about one indexed chunk."""

    id: str
    doc_id: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    table: str
    rows: int
    fragments: int
    small_fragments: int
    dead_letters: int
    indexes: tuple[str, ...]
    version: int


def _id_batches(ids: Iterable[str]) -> Iterator[list[str]]:
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
    try:
        return db.open_table(name)
    except ValueError as exc:
        if "was not found" in str(exc):
            return None
        raise


def _is_commit_conflict(exc: BaseException) -> bool:
    """Lance refused a commit because another one came first ("retryable commit conflict", "incompatible transaction")."""
    text = str(exc).lower()
    return "commit conflict" in text or "incompatible transaction" in text


def _ensure_key(table, key: str):
    """Make sure `key` is the declared primary key: without it concurrent upserts duplicate rows.

    Writers opening a new table at once race to declare it; Lance refuses all but one ("retryable
    commit conflict" or "incompatible transaction"), and the schema, re-read, then shows the key."""
    conflicts = 0
    while not any(k.startswith(b"lance-schema:unenforced-primary-key")
                  for k in (table.schema.field(key).metadata or {})):  # the schema is re-read on every access
        try:
            table.set_unenforced_primary_key(key)
        except RuntimeError as exc:
            if not _is_commit_conflict(exc):
                raise
            conflicts += 1
            if conflicts == MIGRATE_ATTEMPTS:
                raise
    return table


def _ensure_metadata(table):
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
    return _ensure_key(table, key)


class VectorStore:
    """One index table plus its dead-letter table, opened so that every read sees the latest commit."""

    def __init__(self, db: lancedb.DBConnection, name: str, table, recipe: Recipe, policy: IndexPolicy) -> None:
        self.db = db
        self.name = name
        self.table = table
        self.recipe = recipe
        self.policy = policy
        self._dead = None

    @classmethod
    def open(
        cls,
        uri: str,
        name: str,
        recipe: Recipe | None = None,
        *,
        rebuild: bool = False,
        create: bool = True,
        policy: IndexPolicy | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> VectorStore:
        """Open (or create) table `name` at `uri` for `recipe`; recipe None adopts the table's (queries).

        Raises RecipeMismatchError when the table holds another recipe, TableNotFoundError when it
        (or a local database) is missing and `create` is False or there is no recipe to create it
        with; such an open writes nothing. `rebuild` drops the table and its dead letters first. A
        writer's open (a recipe and `create`) adds the `metadata` column to a table made before it existed.
        """
        db = connect(uri, create=(create or rebuild) and recipe is not None, table=name,
                     storage_options=storage_options)
        if rebuild:
            if recipe is None:
                raise StoreError(f"cannot rebuild table {name!r} without a recipe", table=name)
            db.drop_table(name, ignore_missing=True)
            db.drop_table(name + DEAD_LETTER_SUFFIX, ignore_missing=True)
        table = open_or_none(db, name)
        if table is None:
            if not create or recipe is None:
                raise TableNotFoundError(
                    f"no index table {name!r} in {uri}; run `indexflow index` first or check --db/--table",
                    table=name, uri=uri,
                )
            table = open_or_create(db, name, chunk_schema(recipe), "id")
        stored = (table.schema.metadata or {}).get(RECIPE_KEY.encode())
        stored_text = stored.decode() if stored is not None else None
        stored_recipe = _parse_recipe(stored_text)
        if stored_recipe is None or (recipe is not None and stored_recipe != recipe):
            raise RecipeMismatchError(
                f"table {name!r} in {uri} was built with recipe {stored_text or '(none: not an indexflow table)'}, "
                f"this run wants {recipe.to_json() if recipe else '(any)'}; vectors from two recipes must not mix: "
                f"index into a new table name (--table) or pass --rebuild to re-embed everything",
                table=name, stored=stored_text, wanted=recipe.to_json() if recipe else None,
            )
        if recipe is not None and create:  # a read-only open never writes, not even the key or a migration
            _ensure_key(table, "id")
            _ensure_metadata(table)
        return cls(db, name, table, stored_recipe, policy or IndexPolicy())

    # -- reading what is indexed -------------------------------------------------------------

    def iter_chunk_keys(self, doc_ids: Iterable[str] | None = None, batch_rows: int = 65_536) -> Iterator[ChunkKey]:
        """Stream (id, doc_id, content_hash) of indexed chunks, optionally of some documents only."""
        filters = [None] if doc_ids is None else [col("doc_id").isin(b) for b in _id_batches(doc_ids)]
        for where in filters:
            query = self.table.search().select(["id", "doc_id", "content_hash"])
            if where is not None:
                query = query.where(where)
            for batch in query.to_batches(batch_rows):
                ids, docs, hashes = (batch.column(n).to_pylist() for n in ("id", "doc_id", "content_hash"))
                yield from map(ChunkKey, ids, docs, hashes)

    def existing_hashes(self, doc_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Chunk id -> content hash of what is indexed; about 210 bytes per row (43 MB at 200k rows).

        Reads only the two columns it returns, batch by batch, and builds no ChunkKey per row.
        """
        filters = [None] if doc_ids is None else [col("doc_id").isin(b) for b in _id_batches(doc_ids)]
        hashes: dict[str, str] = {}
        for where in filters:
            query = self.table.search().select(["id", "content_hash"])
            if where is not None:
                query = query.where(where)
            for batch in query.to_batches(8_192):
                hashes.update(zip(batch.column("id").to_pylist(), batch.column("content_hash").to_pylist()))
        return hashes

    def doc_ids(self) -> set[str]:
        """Every document id with at least one indexed chunk."""
        ids: set[str] = set()
        for batch in self.table.search().select(["doc_id"]).to_batches(65_536):
            ids.update(batch.column("doc_id").to_pylist())
        return ids

    def count_rows(self) -> int:
        return self.table.count_rows()

    # -- writing ----------------------------------------------------------------------------

    def upsert(self, rows: pa.RecordBatch | pa.Table) -> int:
        """Insert or replace rows by `id` in one commit; returns the rows written."""
        if rows.num_rows == 0:
            return 0
        data = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        wanted = self.table.schema.field("vector").type
        if data.schema.field("vector").type != wanted:
            raise StoreError(
                f"upsert into {self.name!r}: vectors are {data.schema.field('vector').type}, the table holds {wanted}",
                table=self.name, got=str(data.schema.field("vector").type), wanted=str(wanted),
            )
        ids = data.column("id")
        if ids.null_count or pc.count_distinct(ids).as_py() != data.num_rows:
            raise StoreError(
                f"upsert into {self.name!r}: {data.num_rows} rows but ids are null or repeated; each chunk id once per write",
                table=self.name, rows=data.num_rows,
            )
        result = (
            self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        )
        written = result.num_inserted_rows + result.num_updated_rows
        if written != data.num_rows:
            raise StoreError(
                f"upsert into {self.name!r} wrote {written} of {data.num_rows} rows "
                f"({result.num_inserted_rows} inserted, {result.num_updated_rows} updated)",
                table=self.name, rows=data.num_rows, inserted=result.num_inserted_rows, updated=result.num_updated_rows,
            )
        return written

    def delete_chunks(self, ids: Iterable[str]) -> int:
        """Delete chunks by id (any characters are safe: the filter is built as an expression, not SQL text)."""
        return sum(self.table.delete(col("id").isin(batch)).num_deleted_rows for batch in _id_batches(ids))

    def delete_docs(self, doc_ids: Iterable[str]) -> int:
        """Delete every chunk of these documents."""
        return sum(self.table.delete(col("doc_id").isin(batch)).num_deleted_rows for batch in _id_batches(doc_ids))

    # -- dead letters -----------------------------------------------------------------------

    def _dead_letters(self, create: bool):
        if self._dead is None:
            name = self.name + DEAD_LETTER_SUFFIX
            self._dead = (
                open_or_create(self.db, name, DEAD_LETTER_SCHEMA, "chunk_id") if create else open_or_none(self.db, name)
            )
        return self._dead

    def record_failures(self, items: Sequence) -> int:
        """Store failed chunks (replacing an earlier failure of the same chunk); returns rows written.

        Items are FailedItem or anything `FailedItem.of` accepts (the batcher's failure records).
        """
        if not items:
            return 0
        fields = [f.name for f in DEAD_LETTER_SCHEMA]
        latest = {item.chunk_id: item for item in map(FailedItem.of, items)}  # one row per key per merge
        data = pa.Table.from_pylist(
            [{f: getattr(item, f) for f in fields} for item in latest.values()], schema=DEAD_LETTER_SCHEMA
        )
        dead = self._dead_letters(create=True)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                result = dead.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(data)
                return result.num_inserted_rows + result.num_updated_rows
            except RuntimeError as exc:
                # Another writer's open of a new dead-letter table declares its key meanwhile: Lance
                # refuses this merge as "incompatible". Merging by key again is idempotent.
                if not _is_commit_conflict(exc) or attempt == COMMIT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def dead_letters(self) -> list[FailedItem]:
        """Every dead-lettered chunk, oldest failure first."""
        table = self._dead_letters(create=False)
        if table is None:
            return []
        rows = table.search().to_arrow().to_pylist()
        return sorted((FailedItem(**row) for row in rows), key=lambda item: (item.failed_at, item.chunk_id))

    def count_dead_letters(self) -> int:
        table = self._dead_letters(create=False)
        return 0 if table is None else table.count_rows()

    def clear_dead_letters(self, chunk_ids: Iterable[str]) -> int:
        """Forget failures of these chunks (they are indexed now, or given up on)."""
        table = self._dead_letters(create=False)
        if table is None:
            return 0
        return sum(table.delete(col("chunk_id").isin(batch)).num_deleted_rows for batch in _id_batches(chunk_ids))

    # -- after writing, and querying --------------------------------------------------------

    def finalize(self, *, fts: bool = True, rebuild_indexes: bool = False) -> FinalizeReport:
        """Compact, then build or refresh the indexes the table's size calls for (see `tasks.search`)."""
        return build_indexes(self.table, self.policy, fts=fts, rebuild=rebuild_indexes)

    def finalize_due(self, *, fts: bool = True) -> bool:
        """Whether `finalize` has anything to do (metadata only): an unchanged table is left alone."""
        return finalize_due(self.table, self.policy, fts=fts)

    def search(
        self, query_vector: np.ndarray | None, k: int = 10, *, text: str | None = None, hybrid: bool = False
    ) -> list[Hit]:
        """Nearest chunks to a normalized query vector; with `hybrid`, fused with full-text hits on `text`."""
        return search_table(self.table, query_vector, k, text=text, hybrid=hybrid, policy=self.policy)

    def stats(self) -> StoreStats:
        s = self.table.stats()
        frag = s["fragment_stats"] if isinstance(s, dict) else s.fragment_stats
        get = (lambda o, k: o[k]) if isinstance(frag, dict) else getattr
        return StoreStats(
            table=self.name,
            rows=self.table.count_rows(),
            fragments=get(frag, "num_fragments"),
            small_fragments=get(frag, "num_small_fragments"),
            dead_letters=self.count_dead_letters(),
            indexes=tuple(sorted(i.name for i in self.table.list_indices())),
            version=self.table.version,
        )


def _parse_recipe(text: str | None) -> Recipe | None:
    if text is None:
        return None
    try:
        return Recipe.from_json(text)
    except (ValueError, TypeError):
        return None  # written by another indexflow version: treat as a mismatch, never guess
