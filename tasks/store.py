"""The index table: open with fresh reads and the recipe checked, upserts, deletes, what is indexed.

Tables are opened through `tasks.lance_tables` (reads that see every commit, the primary key
declared: what makes concurrent upserts and deletes safe); the dead letters beside the table live
in `tasks.dead_letters`. The embedding recipe lives in the Arrow schema metadata under
`indexflow.recipe`; it survives `merge_insert`, `delete`, `optimize` and index builds.
A `metadata` struct column repeats a chunk's id, document, ordinal, title and source, because
LangChain's and LlamaIndex's LanceDB stores read a document's metadata from that column only.
Indexes and queries live in `tasks.search`; grouped writes in `tasks.writer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col

from indexflow.tasks.dead_letters import DEAD_LETTER_SUFFIX, DeadLetters, FailedItem
from indexflow.tasks.errors import RecipeMismatchError, StoreError, TableNotFoundError
from indexflow.tasks.lance_tables import connect, ensure_key, ensure_metadata, id_batches, open_or_create, open_or_none
from indexflow.tasks.fusion import FusionWeights
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


class VectorStore:
    """One index table plus its dead-letter table, opened so that every read sees the latest commit."""

    def __init__(self, db: lancedb.DBConnection, name: str, table, recipe: Recipe, policy: IndexPolicy) -> None:
        self.db = db
        self.name = name
        self.table = table
        self.recipe = recipe
        self.policy = policy
        self.failures = DeadLetters(db, name)

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
        table = _open_index_table(db, name, recipe, uri=uri, rebuild=rebuild, create=create)
        stored_recipe = _checked_recipe(table, recipe, name=name, uri=uri)
        if recipe is not None and create:  # a read-only open never writes, not even the key or a migration
            ensure_key(table, "id")
            ensure_metadata(table)
        return cls(db, name, table, stored_recipe, policy or IndexPolicy())

    # -- reading what is indexed -------------------------------------------------------------

    def iter_chunk_keys(self, doc_ids: Iterable[str] | None = None, batch_rows: int = 65_536) -> Iterator[ChunkKey]:
        """Stream (id, doc_id, content_hash) of indexed chunks, optionally of some documents only."""
        filters = [None] if doc_ids is None else [col("doc_id").isin(b) for b in id_batches(doc_ids)]
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
        filters = [None] if doc_ids is None else [col("doc_id").isin(b) for b in id_batches(doc_ids)]
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
        data = _rows_to_write(rows, self.table, self.name)
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
        return sum(self.table.delete(col("id").isin(batch)).num_deleted_rows for batch in id_batches(ids))

    def delete_docs(self, doc_ids: Iterable[str]) -> int:
        """Delete every chunk of these documents."""
        return sum(self.table.delete(col("doc_id").isin(batch)).num_deleted_rows for batch in id_batches(doc_ids))

    # -- dead letters (tasks.dead_letters) ---------------------------------------------------

    def record_failures(self, items: Sequence) -> int:
        """Store failed chunks, one row per chunk id; returns rows written (see `DeadLetters.record`)."""
        return self.failures.record(items)

    def dead_letters(self) -> list[FailedItem]:
        """Every dead-lettered chunk, oldest failure first."""
        return self.failures.read()

    def count_dead_letters(self) -> int:
        return self.failures.count()

    def clear_dead_letters(self, chunk_ids: Iterable[str]) -> int:
        """Forget failures of these chunks (they are indexed now, or given up on)."""
        return self.failures.clear(chunk_ids)

    # -- after writing, and querying --------------------------------------------------------

    def finalize(self, *, fts: bool = True, rebuild_indexes: bool = False) -> FinalizeReport:
        """Compact, then build or refresh the indexes the table's size calls for (see `tasks.search`)."""
        return build_indexes(self.table, self.policy, fts=fts, rebuild=rebuild_indexes)

    def finalize_due(self, *, fts: bool = True) -> bool:
        """Whether `finalize` has anything to do (metadata only): an unchanged table is left alone."""
        return finalize_due(self.table, self.policy, fts=fts)

    def search(self, query_vector: np.ndarray | None, k: int = 10, *, text: str | None = None, hybrid: bool = False,
               weights: FusionWeights | tuple[float, float] | str | None = None) -> list[Hit]:
        """Nearest chunks to a normalized query vector; with `hybrid`, fused with full-text hits on `text`
        by RRF with `weights` (vector, text; equal by default)."""
        return search_table(self.table, query_vector, k, text=text, hybrid=hybrid, policy=self.policy,
                            weights=weights)

    def stats(self) -> StoreStats:
        fragments, small_fragments = _fragment_counts(self.table)
        return StoreStats(
            table=self.name,
            rows=self.table.count_rows(),
            fragments=fragments,
            small_fragments=small_fragments,
            dead_letters=self.count_dead_letters(),
            indexes=tuple(sorted(i.name for i in self.table.list_indices())),
            version=self.table.version,
        )


def _open_index_table(db: lancedb.DBConnection, name: str, recipe: Recipe | None, *, uri: str,
                      rebuild: bool, create: bool):
    """Table `name` (after a rebuild's drops), created for `recipe` when missing and `create` allows it."""
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
    return table


def _rows_to_write(rows: pa.RecordBatch | pa.Table, table, name: str) -> pa.Table:
    """`rows` as one Arrow table, refused unless its vectors are the table's type and each id is there once."""
    data = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
    wanted = table.schema.field("vector").type
    if data.schema.field("vector").type != wanted:
        raise StoreError(
            f"upsert into {name!r}: vectors are {data.schema.field('vector').type}, the table holds {wanted}",
            table=name, got=str(data.schema.field("vector").type), wanted=str(wanted),
        )
    ids = data.column("id")
    if ids.null_count or pc.count_distinct(ids).as_py() != data.num_rows:
        raise StoreError(
            f"upsert into {name!r}: {data.num_rows} rows but ids are null or repeated; each chunk id once per write",
            table=name, rows=data.num_rows,
        )
    return data


def _checked_recipe(table, wanted: Recipe | None, *, name: str, uri: str) -> Recipe:
    """The recipe in the table's schema metadata; RecipeMismatchError when it is missing, unreadable or not `wanted`."""
    stored = (table.schema.metadata or {}).get(RECIPE_KEY.encode())
    stored_text = stored.decode() if stored is not None else None
    stored_recipe = _parse_recipe(stored_text)
    if stored_recipe is None or (wanted is not None and stored_recipe != wanted):
        raise RecipeMismatchError(
            f"table {name!r} in {uri} was built with recipe {stored_text or '(none: not an indexflow table)'}, "
            f"this run wants {wanted.to_json() if wanted else '(any)'}; vectors from two recipes must not mix: "
            f"index into a new table name (--table) or pass --rebuild to re-embed everything",
            table=name, stored=stored_text, wanted=wanted.to_json() if wanted else None,
        )
    return stored_recipe


def _fragment_counts(table) -> tuple[int, int]:
    """(fragments, small fragments) of the table, from `stats()` as a dict or as an object."""
    s = table.stats()
    frag = s["fragment_stats"] if isinstance(s, dict) else s.fragment_stats
    get = (lambda o, k: o[k]) if isinstance(frag, dict) else getattr
    return get(frag, "num_fragments"), get(frag, "num_small_fragments")


def _parse_recipe(text: str | None) -> Recipe | None:
    if text is None:
        return None
    try:
        return Recipe.from_json(text)
    except (ValueError, TypeError):
        return None  # written by another indexflow version: treat as a mismatch, never guess
