"""Weighted reciprocal-rank fusion of the vector and full-text candidates, at depths fixed independently of k.

Over-fetch rule: positions 1..D of a hybrid result (D = HYBRID_DEPTH = 100) are the RRF fusion of
each side's top-D; positions D+1..2D come from fusing each side's top-2D (skipping what is already
placed), 2D+1..4D from the top-4D, and so on. A query for k fetches the tiers up to the first
depth >= k (`depth_for`), each side at most ~4k rows in all. Which tier fills a position depends on
the position only, never on k, so `hybrid(k) == hybrid(k')[:k]` for every k <= k': the top-n does
not change as k grows (given each side returns the same rows for the same depth, as exact, BM25
and LanceDB's index search do). Within a tier hits are in fused-score order; ties break by id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from indexflow.tasks.errors import ConfigError

RRF_C = 60  # the constant of Cormack et al. (2009), also LanceDB's RRFReranker default
HYBRID_DEPTH = 100  # candidates per side for any k up to this, doubled per tier beyond; see above

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Weight of the vector side and of the full-text side in RRF; equal weights are plain RRF."""

    vector: float = 1.0
    text: float = 1.0

    def __post_init__(self) -> None:
        for side in (self.vector, self.text):
            if not math.isfinite(side) or side < 0:
                raise ConfigError(f"fusion weights must be finite and >= 0, got {self.vector},{self.text}",
                                  weights=(self.vector, self.text))
        if self.vector == 0 and self.text == 0:
            raise ConfigError("fusion weights cannot both be 0", weights=(self.vector, self.text))

    @classmethod
    def parse(cls, text: str) -> FusionWeights:
        """`"0.7,0.3"` -> vector 0.7, text 0.3 (the CLI's --weights)."""
        parts = text.split(",")
        try:
            vector, full_text = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--weights takes VECTOR,TEXT (two numbers, e.g. 0.7,0.3), got {text!r}",
                              weights=text) from None
        return cls(vector, full_text)

    @classmethod
    def of(cls, weights: FusionWeights | tuple[float, float] | str | None) -> FusionWeights:
        """Weights from the forms the surfaces accept: None (equal), a (vector, text) pair, or "0.7,0.3"."""
        if weights is None:
            return cls()
        if isinstance(weights, FusionWeights):
            return weights
        if isinstance(weights, str):
            return cls.parse(weights)
        vector, full_text = weights
        return cls(float(vector), float(full_text))


def depth_for(k: int, depth: int = HYBRID_DEPTH) -> int:
    """The deepest tier a hybrid top-k fetches: `depth`, doubled until it covers k."""
    while depth < k:
        depth *= 2
    return depth


def rrf(rankings: Sequence[Sequence[Key]], weights: Sequence[float], c: int = RRF_C) -> list[tuple[Key, float]]:
    """Fuse best-first lists: score(d) = sum of w / (c + rank) over the lists holding d (rank from 1)."""
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[Key, float] = {}
    for ranking, weight in zip(rankings, weights):
        if weight == 0:
            continue  # a side weighted 0 is off: its candidates must not pad the list with score-0 rows
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (c + rank)
    # str(key) breaks ties: equal weights tie often (rank r on one side only, on either side).
    return sorted(scores.items(), key=lambda item: (-item[1], str(item[0])))


def fuse_rows(vector_rows: list[dict], text_rows: list[dict], k: int, weights: FusionWeights,
              c: int = RRF_C) -> list[dict]:
    """The top-k rows of both sides by weighted RRF on `id`, each with its fused score in `_rrf`."""
    by_id = {row["id"]: row for row in text_rows} | {row["id"]: row for row in vector_rows}
    fused = rrf([[r["id"] for r in vector_rows], [r["id"] for r in text_rows]], [weights.vector, weights.text], c)
    return [by_id[key] | {"_rrf": score} for key, score in fused[:k]]


Fetch = Callable[[int], tuple[list[dict], list[dict]]]  # depth -> (vector rows, text rows), best first


def tiered_fusion(fetch: Fetch, k: int, weights: FusionWeights, depth: int = HYBRID_DEPTH,
                  c: int = RRF_C) -> list[dict]:
    """The top-k of the tiered fusion in the module docstring; `fetch(d)` gives each side's top-d rows."""
    placed: list[dict] = []
    seen: set[str] = set()
    tier = depth
    while True:
        vector_rows, text_rows = fetch(tier)
        for row in fuse_rows(vector_rows, text_rows, tier, weights, c):
            if len(placed) == tier:
                break  # this tier fills positions up to `tier` only
            if row["id"] not in seen:
                seen.add(row["id"])
                placed.append(row)
        live = [rows for rows, weight in ((vector_rows, weights.vector), (text_rows, weights.text)) if weight]
        if len(placed) >= k or all(len(rows) < tier for rows in live):
            return placed[:k]  # k placed, or every side that counts exhausted: a deeper tier adds nothing
        tier *= 2
