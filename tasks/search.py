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
from indexflow.tasks.index_state import record_trained_rows, trained_rows
from indexflow.tasks.index_policy import (
    DEFAULT_KIND,
    IndexKind,
    QueryParams,
    compaction_due,
    index_config,
    query_params,
    retrain_due,
)

DISTANCE = "dot"
VECTOR_INDEX = "vector_idx"  # LanceDB's default name for an index on "vector", as build_indexes creates it
HIT_COLUMNS = ["id", "doc_id", "ordinal", "title", "text", "source"]


@dataclass(frozen=True, slots=True)
class IndexPolicy:
    """When to build, retrain and compact the vector index and how to query it; the rule by size is
    `tasks.index_policy` (figures: BENCHMARKS.md "Scale"). A field set here overrides the rule.

    Below `min_rows` exact search is fast (~50-65 ms at 50k rows, 768 dims) and exact, so no
    index is built.
    """

    min_rows: int = 50_000
    kind: IndexKind = DEFAULT_KIND
    num_partitions: int | None = None  # None: sqrt(rows), LanceDB's default
    num_bits: int | None = None  # IVF_RQ bits per dimension; None: the rule's
    nprobes: int | None = None  # None: 2.5 % of the partitions, at least 20 (index_policy.query_params)
    refine_factor: int | None = None  # None: by size; 0: no refine
    # Retrain (new centroids) once the table holds this many times the rows it was trained on.
    retrain_factor: float = 2.0
    # Compaction rewrites every small fragment, i.e. the whole table below a million rows; a
    # few dozen fragments scan as fast as one. So a finalize compacts exactly when the table has
    # more than this many fragments (or the index is retrained); otherwise it only folds new rows
    # into the indexes. (Folding alone needs pylance; with lancedb alone every finalize compacts.)
    compact_above_fragments: int = 64
    # While a run writes, its rows are outside the index and every query scans them exactly. Up
    # to this many such rows are scanned (~5 ms); past it queries search indexed rows only
    # until finalize folds the new rows in.
    unindexed_tail_rows: int = 4_000

    def __post_init__(self) -> None:
        checks = {
            "min_rows": self.min_rows >= 1, "retrain_factor": self.retrain_factor > 1.0,
            "num_partitions": self.num_partitions is None or self.num_partitions >= 1,
            "num_bits": self.num_bits is None or self.num_bits in (1, 2, 4, 8),
            "nprobes": self.nprobes is None or self.nprobes >= 1,
            "refine_factor": self.refine_factor is None or self.refine_factor >= 0,
            "compact_above_fragments": self.compact_above_fragments >= 1,
            "unindexed_tail_rows": self.unindexed_tail_rows >= 0,
            "kind": self.kind in ("IVF_RQ", "IVF_SQ"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid index policy field(s) {', '.join(bad)}: {self!r}", fields=bad)

    def config(self, rows: int, dim: int):
        """The LanceDB index config to train for `rows` vectors of `dim` dimensions."""
        chosen = index_config(rows, dim, kind=self.kind, num_partitions=self.num_partitions, num_bits=self.num_bits)
        if chosen.kind == "IVF_RQ":
            return IvfRq(distance_type=DISTANCE, num_partitions=chosen.num_partitions, num_bits=chosen.num_bits)
        return IvfSq(distance_type=DISTANCE, num_partitions=chosen.num_partitions)

    def params(self, rows: int, dim: int) -> QueryParams:
        """nprobes and refine for a table of `rows` vectors (the rule, or this policy's overrides)."""
        return query_params(rows, dim, num_partitions=self.num_partitions, num_bits=self.num_bits,
                            nprobes=self.nprobes,
                            refine_factor=self.refine_factor)


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
    vector_index: Literal["created", "retrained", "kept", "none"]
    fts_index: Literal["created", "kept", "none"]
    seconds: float


def _fragments(table) -> int:
    return _fragment_stats(table)[0]


def _fragment_stats(table) -> tuple[int, int]:
    """(fragments, small fragments), from `stats()` as a dict or as an object."""
    stats = table.stats()
    frag = stats["fragment_stats"] if isinstance(stats, dict) else stats.fragment_stats
    get = (lambda o, k: o[k]) if isinstance(frag, dict) else getattr
    return get(frag, "num_fragments"), get(frag, "num_small_fragments")


def _indexed_columns(table) -> dict[str, str]:
    return {index.columns[0]: index.index_type for index in table.list_indices()}


def finalize_due(table, policy: IndexPolicy, *, fts: bool = True) -> bool:
    """Whether `build_indexes` has work: an index missing, rows outside an index (written since the
    last build), fragments past the compaction threshold, or growth past the retrain factor.
    Reads metadata only."""
    rows = table.count_rows()
    if not rows:
        return False
    indexed = _indexed_columns(table)
    if (fts and missing_fts(table)) or (rows >= policy.min_rows and "vector" not in indexed):
        return True
    if _compaction_due(table, policy) or ("vector" in indexed and _retrain_due(table, rows, policy)):
        return True
    return any(table.index_stats(index.name).num_unindexed_rows for index in table.list_indices())


def _compaction_due(table, policy: IndexPolicy) -> bool:
    fragments, small = _fragment_stats(table)
    return compaction_due(fragments, small, above_fragments=policy.compact_above_fragments)


def _retrain_due(table, rows: int, policy: IndexPolicy) -> bool:
    return retrain_due(rows, trained_rows(table), policy.retrain_factor)


def build_indexes(table, policy: IndexPolicy, *, fts: bool = True, rebuild: bool = False) -> FinalizeReport:
    """Compact the table (past `compact_above_fragments`, or before a retrain), fold new rows into the
    existing indexes, then create the vector index (if big enough) and the full-text index where missing.

    The vector index is trained anew when missing, when `rebuild` asks, or when the table has grown
    `retrain_factor` times past the rows it was last trained on.
    """
    started = time.perf_counter()
    before = _fragments(table)
    has_vector = "vector" in _indexed_columns(table)
    retrain = rebuild or (has_vector and _retrain_due(table, table.count_rows(), policy))
    # A retrain reads every vector anyway; compacting first gives it (and later scans) few fragments.
    compact = retrain or _compaction_due(table, policy)
    if not compact and not table.list_indices():
        pass  # a first build: the indexes created below cover every row; nothing to fold or compact
    else:
        dataset = None
        if not compact:
            try:
                dataset = table.to_lance()  # needs pylance (the dev and interop extras install it)
            except ImportError:
                dataset = None  # lancedb alone offers only the whole optimize()
        if dataset is None:
            table.optimize()  # compaction, the new rows into the indexes, versions older than 7 days
        else:
            dataset.optimize.optimize_indices()
            dataset.cleanup_old_versions(older_than=timedelta(days=7))  # what optimize() prunes
            table.checkout_latest()
    rows = table.count_rows()
    indexed = _indexed_columns(table)
    vector_state, fts_state = "none", "none"
    if rows >= policy.min_rows:
        if retrain or "vector" not in indexed:
            dim = table.schema.field("vector").type.list_size
            table.create_index("vector", config=policy.config(rows, dim), replace=True, name=VECTOR_INDEX)
            record_trained_rows(table, rows)
            vector_state = "retrained" if "vector" in indexed else "created"
        else:
            if trained_rows(table) is None:  # an index from before the record existed: count from now
                record_trained_rows(table, rows)
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
    vector = _query_vector(table, query_vector)
    query = table.search(vector, vector_column_name="vector")
    return _tuned(query, policy, table, vector.shape[0]).limit(k).select([*HIT_COLUMNS, "_distance"])


def explain_vector_search(table, query_vector: np.ndarray, k: int = 10, policy: IndexPolicy | None = None) -> str:
    """The physical plan of a vector search; `ANNSubIndex ... metric=Dot` means the index is used."""
    return _vector_query(table, query_vector, k, policy or IndexPolicy()).explain_plan(True)


def _tuned(query, policy: IndexPolicy, table=None, dim: int | None = None):
    """The policy's nprobes/refine for the table's size, and indexed rows only past the unindexed tail."""
    table = table if table is not None else query._table  # the hybrid builder keeps its table there
    query = query.distance_type(DISTANCE)
    # One metadata read per query (~0.2 ms): the index's stats give the size and the unindexed tail.
    stats = _vector_index_stats(table)
    if stats is None:
        return query  # no vector index: an exact scan, which nprobes and refine do not touch
    rows = stats.num_indexed_rows + stats.num_unindexed_rows
    params = policy.params(rows, dim or table.schema.field("vector").type.list_size)
    query = query.nprobes(params.nprobes)
    if params.refine_factor:
        query = query.refine_factor(params.refine_factor)
    # (the hybrid builder has no fast_search in lancedb 0.40: hybrid queries still scan the tail)
    if hasattr(query, "fast_search") and stats.num_unindexed_rows > policy.unindexed_tail_rows:
        # a run is writing (or finished without finalize): scanning all its rows exactly would
        # cost 10-20x an indexed query; they are found once finalize folds them in
        query = query.fast_search()
    return query


def _vector_index_stats(table):
    """The vector index's statistics, None when the table has none."""
    return table.index_stats(VECTOR_INDEX)
