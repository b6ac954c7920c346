"""The index table's row shape, in pyarrow alone: its schema, and rows from (chunk, vector) pairs.

Apart from `tasks.store` so that what only builds rows (the spill of a first run whose table is
still opening) need not import LanceDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import StoreError
from indexflow.tasks.recipe import Recipe

RECIPE_KEY = "indexflow.recipe"
UTC_US = pa.timestamp("us", tz="UTC")
# Lance's field-metadata form of the unenforced primary key. Writing it into the schema at
# creation makes the key part of the table's first commit; `lance_tables.ensure_key` checks it afterwards
# and falls back to the public `set_unenforced_primary_key` should the encoding ever change.
PK_METADATA = {"lance-schema:unenforced-primary-key:position": "1"}


ID_FIELD = pa.field("id", pa.string(), nullable=False, metadata=PK_METADATA)
# What a chunk carries besides its key and vector: in the index table and the dead letters alike.
CHUNK_FIELDS = [
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("ordinal", pa.int32(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("title", pa.string()),
    pa.field("source", pa.string()),
    pa.field("content_hash", pa.string(), nullable=False),
]

# The `metadata` struct: copies of these columns, what LangChain's `Document.metadata` and
# LlamaIndex's `TextNode.metadata` become. "id" because LangChain's store returns no id otherwise.
METADATA_COLUMN = "metadata"
METADATA_KEYS = ("id", "doc_id", "ordinal", "title", "source")
_BY_NAME = {f.name: f for f in (ID_FIELD, *CHUNK_FIELDS)}
# Nullable children and struct: the exact type `add_columns(named_struct(...))` gives a migrated
# table, so new and migrated tables share one schema and one `merge_insert` input.
METADATA_TYPE = pa.struct([_BY_NAME[k].remove_metadata().with_nullable(True) for k in METADATA_KEYS])
METADATA_SQL = "named_struct(" + ", ".join(f"'{k}', {k}" for k in METADATA_KEYS) + ")"


def chunk_schema(recipe: Recipe) -> pa.Schema:
    """The index table's schema for `recipe`, the recipe JSON in its metadata."""
    return pa.schema(
        [
            ID_FIELD,
            *CHUNK_FIELDS,
            pa.field("vector", pa.list_(pa.float32(), recipe.dimensions), nullable=False),
            pa.field("indexed_at", UTC_US, nullable=False),
            # last: where `add_columns` puts it in a migrated table
            pa.field(METADATA_COLUMN, METADATA_TYPE),
        ],
        metadata={RECIPE_KEY: recipe.to_json()},
    )


def rows_from(chunks: Sequence[Chunk], vectors: np.ndarray, *, indexed_at: datetime | None = None) -> pa.RecordBatch:
    """Rows for `upsert`: `vectors[i]` belongs to `chunks[i]` (pair them within one call only)."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(chunks):
        raise StoreError(
            f"rows_from got {len(chunks)} chunks but vectors of shape {matrix.shape}; pair each vector with its chunk",
            chunks=len(chunks), shape=tuple(matrix.shape),
        )
    dim = matrix.shape[1]
    now = indexed_at or datetime.now(timezone.utc)
    columns = {
        field.name: pa.array([getattr(c, field.name) for c in chunks], field.type)
        for field in (ID_FIELD, *CHUNK_FIELDS)
    }
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)
    columns["indexed_at"] = pa.array([now] * len(chunks), UTC_US)
    columns[METADATA_COLUMN] = pa.StructArray.from_arrays(
        [columns[k] for k in METADATA_KEYS], fields=list(METADATA_TYPE)
    )
    schema = chunk_schema(Recipe(dimensions=dim)).remove_metadata()
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
