"""Weighted reciprocal-rank fusion of ranked lists, and the per-side depth that keeps it independent of k.

Over-fetch rule: each side (vector, full text) is fetched to `depth_for(k) = max(k, HYBRID_DEPTH)`.
What it guarantees:
- For every k <= HYBRID_DEPTH both candidate lists are the same (fetched to HYBRID_DEPTH), so the
  fused ranking is the same list and `hybrid(k) == hybrid(HYBRID_DEPTH)[:k]`: the top-n is the
  same for every k in [n, HYBRID_DEPTH].
- For k > HYBRID_DEPTH the lists grow. A document keeps its score from the top-D of each side and
  can only gain, by at most `max_gain(weights)` = sum(w) / (c + D + 1) (a side where it ranked
  beyond D now counts it). So a top-n in which every score exceeds the next one by more than that
  gain is unchanged; closer scores may reorder. (This assumes a deeper fetch keeps each side's
  top-D, true of exact and BM25 search; an ANN index with refine may differ slightly.)
Ties break by id, so the fused order is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from indexflow.tasks.errors import ConfigError

RRF_C = 60  # the constant of Cormack et al. (2009), also LanceDB's RRFReranker default
HYBRID_DEPTH = 100  # candidates per side for any k up to this; see the module docstring

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
    """How many candidates each side fetches for a hybrid top-k: a constant, unless k is larger."""
    return max(k, depth)


def max_gain(weights: FusionWeights, depth: int = HYBRID_DEPTH, c: int = RRF_C) -> float:
    """The most a document's fused score can rise when the sides are fetched deeper than `depth`."""
    return (weights.vector + weights.text) / (c + depth + 1)


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
