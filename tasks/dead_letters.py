"""The dead-letter table beside an index table: the chunks that could not be embedded, text and all.

One row per chunk id (a later failure replaces an earlier one), so `--retry-failed` needs no
corpus. The table is made by the first failure recorded, never by a read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import lancedb
import pyarrow as pa
from lancedb.expr import col

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.lance_tables import id_batches, is_commit_conflict, open_or_create, open_or_none
from indexflow.tasks.rows import CHUNK_FIELDS, PK_METADATA, UTC_US

DEAD_LETTER_SUFFIX = "__dead_letters"
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
        (and optionally `error_type`), such as `tasks.embed_options.EmbedFailure`."""
        if isinstance(item, cls):
            return item
        return cls.from_chunk(item.chunk, str(item.error), item.attempts, item.failed_at, getattr(item, "error_type", ""))

    def to_chunk(self, tokens: int = 0) -> Chunk:
        """The chunk to embed again (`tokens` is not stored; pass an estimate if the caller needs one)."""
        return Chunk(self.chunk_id, self.doc_id, self.ordinal, self.text, self.title, self.source, tokens, self.content_hash)


class DeadLetters:
    """The dead letters of index table `index_name`, in table `index_name + DEAD_LETTER_SUFFIX`."""

    def __init__(self, db: lancedb.DBConnection, index_name: str) -> None:
        self.db = db
        self.name = index_name + DEAD_LETTER_SUFFIX
        self._table = None

    def table(self, create: bool):
        """The LanceDB table; with `create` False, None while no failure was ever recorded."""
        if self._table is None:
            self._table = (
                open_or_create(self.db, self.name, DEAD_LETTER_SCHEMA, "chunk_id")
                if create else open_or_none(self.db, self.name)
            )
        return self._table

    def record(self, items: Sequence) -> int:
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
        dead = self.table(create=True)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                result = dead.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(data)
                return result.num_inserted_rows + result.num_updated_rows
            except RuntimeError as exc:
                # Another writer's open of a new dead-letter table declares its key meanwhile: Lance
                # refuses this merge as "incompatible". Merging by key again is idempotent.
                if not is_commit_conflict(exc) or attempt == COMMIT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def read(self) -> list[FailedItem]:
        """Every dead-lettered chunk, oldest failure first."""
        table = self.table(create=False)
        if table is None:
            return []
        rows = table.search().to_arrow().to_pylist()
        return sorted((FailedItem(**row) for row in rows), key=lambda item: (item.failed_at, item.chunk_id))

    def count(self) -> int:
        """How many chunks are dead-lettered (0 without the table, which this never creates)."""
        table = self.table(create=False)
        return 0 if table is None else table.count_rows()

    def clear(self, chunk_ids: Iterable[str]) -> int:
        """Forget failures of these chunks (they are indexed now, or given up on)."""
        table = self.table(create=False)
        if table is None:
            return 0
        return sum(table.delete(col("chunk_id").isin(batch)).num_deleted_rows for batch in id_batches(chunk_ids))
