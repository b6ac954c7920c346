"""The vector-index rule as pure functions: (rows, dim, overrides) -> index config, query params, retrain, compact.

No LanceDB here, so the rule can be read, tested and benchmarked on its own. Figures behind each
choice are in BENCHMARKS.md ("Scale"); measured with bench/bench_scale.py on 768-dim unit vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["IVF_RQ", "IVF_SQ"]

# IVF_RQ (RaBitQ) with 4 bits per dimension: 4x the 1-bit build time (154 s at 1M x 768) but a
# refine of 10 instead of 50-100 for recall >= 0.95, which is what a query's latency pays for.
# LanceDB's own default of sqrt(rows) partitions is kept.
DEFAULT_KIND: IndexKind = "IVF_RQ"
DEFAULT_BITS = 4


@dataclass(frozen=True, slots=True)
class VectorIndexConfig:
    """What to train: the index kind and its partitions (None: LanceDB's default, sqrt(rows))."""

    kind: IndexKind
    num_partitions: int | None
    num_bits: int  # IVF_RQ bits per dimension (ignored by IVF_SQ)


@dataclass(frozen=True, slots=True)
class QueryParams:
    """How a vector query probes the index: partitions searched and the refine (re-rank) factor."""

    nprobes: int
    refine_factor: int | None


def partitions_for(rows: int) -> int:
    """The partitions LanceDB trains by default for `rows` (sqrt, at least 1)."""
    return max(1, int(math.sqrt(rows)))


def index_config(rows: int, dim: int, *, kind: IndexKind = DEFAULT_KIND,
                 num_partitions: int | None = None, num_bits: int | None = None) -> VectorIndexConfig:
    """The index to train for a table of `rows` vectors of `dim` dimensions; an override wins."""
    del rows, dim
    return VectorIndexConfig(kind, num_partitions, num_bits or DEFAULT_BITS)


def query_params(rows: int, dim: int, *, num_partitions: int | None = None, num_bits: int | None = None,
                 nprobes: int | None = None, refine_factor: int | None = None) -> QueryParams:
    """nprobes and refine for `rows`: 2.5 % of the partitions (at least 20), refine by the code's bits.

    Why: the 1-bit index lost recall with size (issue 13: 0.98 at 100k, 0.89 at 1M at 20/20)
    because its quantized distances, not nprobes, bound recall: 1-bit RaBitQ needs ~100 refine
    candidates per hit at 300k clustered (refine 50: 0.94), 4 bits need 10 (1.00 at 300k and 1M,
    where nprobes 20-80 made no recall difference, only latency). Probing a share of the sqrt(rows)
    partitions keeps the searched share from shrinking as the table grows past 1M.
    """
    del dim
    partitions = num_partitions or partitions_for(rows)
    probes = nprobes if nprobes is not None else max(20, math.ceil(partitions * 0.025))
    if refine_factor is not None:
        refine = refine_factor or None  # 0 turns refine off
    else:
        refine = 10 if (num_bits or DEFAULT_BITS) >= 4 else 50
    return QueryParams(min(probes, partitions), refine)


def retrain_due(rows: int, trained_rows: int | None, factor: float) -> bool:
    """Whether a table trained at `trained_rows` has grown past `factor` and needs new centroids.

    Folding new rows into an index assigns them to the old partitions: they grow, and a fixed share
    of nprobes then scans more rows for the same recall. Unknown training size: not due.
    """
    return trained_rows is not None and trained_rows > 0 and rows >= factor * trained_rows


def compaction_due(fragments: int, small_fragments: int, *, above_fragments: int) -> bool:
    """Compact when the table has more than `above_fragments` fragments, small or not.

    One rule on a number `stats()` reports, so whether a finalize compacts is known in advance.
    """
    del small_fragments  # reported, but a run's large adds leave big fragments that still count
    return fragments > above_fragments
