"""Indexes and queries over an index table, built and used with the same distance and parameters.

Vectors are unit length, so the index and every query use distance "dot": LanceDB reports
`_distance = 1 - q·v`, and `Hit.score` for vector search is `1 - _distance`, the cosine
similarity (1 is identical, 0 unrelated). A query with another distance type than its index
would silently fall back to brute force, which is why both are set from one `IndexPolicy`.
Hybrid hits carry the weighted reciprocal-rank-fusion score instead (about 1/60 per list a hit
tops; `tasks.fusion`, which also fixes each side's depth), and text-only hits the BM25 score over
text and title (`tasks.fulltext`); `Hit.kind` says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
from lancedb.index import IvfRq, IvfSq

from indexflow.tasks.errors import ConfigError, StoreError
from indexflow.tasks.fulltext import build_fts, fts_indexed, fts_query, missing_fts
from indexflow.tasks.fusion import FusionWeights, tiered_fusion

DISTANCE = "dot"
HIT_COLUMNS = ["id", "doc_id", "ordinal", "title", "text", "source"]


@dataclass(frozen=True, slots=True)
class IndexPolicy:
    """When to build a vector index and how to query it; defaults chosen by bench/bench_index.py.

    Measured (768 dims, 2 cores): exact search takes ~9 ms at 5k rows and ~50-65 ms at 50k, with
    perfect recall, so no index is built below `min_rows`. IVF_RQ at nprobes 20 / refine 20 builds
    in 0.5 s at 50k rows and answers in ~8 ms with recall@10 0.984 (emulator vectors) to 1.000
    (clustered); IVF_SQ needs refine for the same recall and takes ~30 ms.
    """

    min_rows: int = 50_000
    kind: Literal["IVF_RQ", "IVF_SQ"] = "IVF_RQ"
    num_partitions: int | None = None  # None: LanceDB's default from the row count
    nprobes: int = 20
    refine_factor: int | None = 20
    # Compaction rewrites every small fragment, i.e. the whole table below a million rows; a
    # few dozen fragments scan as fast as one. So an edit or two only folds its rows into the
    # indexes, and the table is compacted once this many fragments have piled up. (Folding alone
    # needs pylance; with lancedb alone every finalize compacts.)
    compact_above_fragments: int = 64

    def config(self):
        if self.kind == "IVF_RQ":
            return IvfRq(distance_type=DISTANCE, num_partitions=self.num_partitions)
        return IvfSq(distance_type=DISTANCE, num_partitions=self.num_partitions)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; `score` is cosine similarity, RRF or BM25 according to `kind`."""

    rank: int
    score: float
    kind: Literal["cosine", "rrf", "bm25"]
    id: str
    doc_id: str
    ordinal: int
    title: str
    text: str
    source: str

    def snippet(self, width: int = 200) -> str:
        """The text on one line, cut at a word boundary near `width` characters."""
        flat = " ".join(self.text.split())
        if len(flat) <= width:
            return flat
        cut = flat.rfind(" ", 0, width)
        return flat[: cut if cut > width // 2 else width] + " …"


@dataclass(frozen=True, slots=True)
class FinalizeReport:
    rows: int
    fragments_before: int
    fragments_after: int
    vector_index: Literal["created", "kept", "none"]
    fts_index: Literal["created", "kept", "none"]
    seconds: float


def _fragments(table) -> int:
    stats = table.stats()
    frag = stats["fragment_stats"] if isinstance(stats, dict) else stats.fragment_stats
    return frag["num_fragments"] if isinstance(frag, dict) else frag.num_fragments


def _indexed_columns(table) -> dict[str, str]:
    return {index.columns[0]: index.index_type for index in table.list_indices()}


def finalize_due(table, policy: IndexPolicy, *, fts: bool = True) -> bool:
    """Whether `build_indexes` has work: an index missing, rows outside an index (written since the
    last build), or fragments past the compaction threshold. Reads metadata only."""
    rows = table.count_rows()
    if not rows:
        return False
    indexed = _indexed_columns(table)
    if (fts and missing_fts(table)) or (rows >= policy.min_rows and "vector" not in indexed):
        return True
    if _fragments(table) > policy.compact_above_fragments:
        return True
    return any(table.index_stats(index.name).num_unindexed_rows for index in table.list_indices())


def build_indexes(table, policy: IndexPolicy, *, fts: bool = True, rebuild: bool = False) -> FinalizeReport:
    """Compact the table (past `compact_above_fragments`), fold new rows into the existing indexes,
    then create the vector index (if big enough) and the full-text index where missing.

    An index is only created when missing or when `rebuild` asks for retraining (after large growth).
    """
    started = time.perf_counter()
    before = _fragments(table)
    few = not rebuild and before <= policy.compact_above_fragments
    if few and not table.list_indices():
        pass  # a first build: the indexes created below cover every row; nothing to fold or compact
    else:
        dataset = None
        if few:
            try:
                dataset = table.to_lance()  # needs pylance (the dev and interop extras install it)
            except ImportError:
                dataset = None  # lancedb alone offers only the whole optimize()
        if dataset is None:
            table.optimize()  # compaction, the new rows into the indexes, versions older than 7 days
        else:
            dataset.optimize.optimize_indices()
            dataset.cleanup_old_versions(older_than=timedelta(days=7))  # what optimize() prunes
    rows = table.count_rows()
    indexed = _indexed_columns(table)
    vector_state, fts_state = "none", "none"
    if rows >= policy.min_rows:
        if rebuild or "vector" not in indexed:
            table.create_index("vector", config=policy.config(), replace=True)
            vector_state = "created"
        else:
            vector_state = "kept"
    if fts and rows:
        fts_state = "created" if build_fts(table, rebuild=rebuild) else "kept"
    return FinalizeReport(rows, before, _fragments(table), vector_state, fts_state, time.perf_counter() - started)


def _query_vector(table, query_vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    dim = table.schema.field("vector").type.list_size
    if vector.shape[0] != dim or not np.isfinite(vector).all():
        raise ConfigError(
            f"query vector has {vector.shape[0]} dimensions (or non-finite values); the table holds {dim}: "
            "embed the query with the table's recipe",
            got=int(vector.shape[0]), expected=dim,
        )
    return vector


def search_table(
    table,
    query_vector: np.ndarray | None,
    k: int = 10,
    *,
    text: str | None = None,
    hybrid: bool = False,
    policy: IndexPolicy | None = None,
    weights: FusionWeights | tuple[float, float] | str | None = None,
) -> list[Hit]:
    """Top-k chunks: by vector, by text (query_vector None), or both fused with RRF (`hybrid`, `weights`)."""
    policy = policy or IndexPolicy()
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}", k=k)
    if hybrid and (query_vector is None or not text):
        raise ConfigError("hybrid search needs both a query vector and query text")
    if query_vector is None and not text:
        raise ConfigError("search needs a query vector, query text, or both")
    columns = fts_indexed(table) if text else []
    if text and "text" not in columns:
        raise StoreError(
            "text search needs the full-text index on 'text', which is built when indexing finishes; "
            "run `indexflow index` again to build it",
            table=table.name,
        )
    if hybrid:  # each side fetched to depths fixed independently of k, then fused (tasks.fusion)
        fusion = FusionWeights.of(weights)
        fetch = lambda depth: (_vector_query(table, query_vector, depth, policy).to_arrow().to_pylist(),
                               fts_query(table, text, depth, columns).select(HIT_COLUMNS).to_arrow().to_pylist())
        rows = tiered_fusion(fetch, k, fusion)
        kind, score_of = "rrf", lambda row: row["_rrf"]
    elif query_vector is None:
        query = fts_query(table, text, k, columns).select([*HIT_COLUMNS, "_score"])
        kind, score_of = "bm25", lambda row: row["_score"]
        rows = query.to_arrow().to_pylist()
    else:
        query = _vector_query(table, query_vector, k, policy)
        kind, score_of = "cosine", lambda row: 1.0 - row["_distance"]
        rows = query.to_arrow().to_pylist()
    return [
        Hit(rank, float(score_of(row)), kind, row["id"], row["doc_id"], row["ordinal"],
            row["title"] or "", row["text"] or "", row["source"] or "")
        for rank, row in enumerate(rows, start=1)
    ]


def _vector_query(table, query_vector: np.ndarray, k: int, policy: IndexPolicy):
    query = table.search(_query_vector(table, query_vector), vector_column_name="vector")
    return _tuned(query, policy).limit(k).select([*HIT_COLUMNS, "_distance"])


def explain_vector_search(table, query_vector: np.ndarray, k: int = 10, policy: IndexPolicy | None = None) -> str:
    """The physical plan of a vector search; `ANNSubIndex ... metric=Dot` means the index is used."""
    return _vector_query(table, query_vector, k, policy or IndexPolicy()).explain_plan(True)


def _tuned(query, policy: IndexPolicy):
    query = query.distance_type(DISTANCE).nprobes(policy.nprobes)
    return query.refine_factor(policy.refine_factor) if policy.refine_factor else query
