"""L2 normalization of embedding batches, vectorized, with guards against unusable vectors.

gemini-embedding-001 returns unit vectors only at 3072 dimensions; truncated outputs (768, 1536)
must be normalized before dot-product search treats them as cosine similarity.
"""

from __future__ import annotations

import numpy as np

from indexflow.tasks.errors import BadResponseError

# A vector this short carries no direction worth trusting: after float32 rounding its
# normalized form is noise, and a real embedding model never returns one.
MIN_NORM = 1e-6


def _as_matrix(vectors: np.ndarray, expected_dim: int) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] != expected_dim:
        raise BadResponseError(
            f"embedding batch has shape {array.shape}, expected (n, {expected_dim}); "
            "the model or output_dimensionality does not match the recipe",
            rows=list(range(array.shape[0])) if array.ndim >= 1 else [],
            reason="shape",
            shape=tuple(array.shape),
            expected_dim=expected_dim,
        )
    if not np.issubdtype(array.dtype, np.number):
        raise BadResponseError(
            f"embedding batch has dtype {array.dtype}, expected numbers",
            rows=list(range(array.shape[0])),
            reason="dtype",
            shape=tuple(array.shape),
            expected_dim=expected_dim,
        )
    return array


def find_bad_rows(vectors: np.ndarray) -> dict[int, str]:
    """Row index -> reason ("non-finite" or "zero norm") for every row that cannot be normalized."""
    array = np.asarray(vectors, dtype=np.float64)
    finite = np.isfinite(array).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(array), array, 0.0), axis=1)
    bad: dict[int, str] = {int(i): "non-finite" for i in np.flatnonzero(~finite)}
    bad.update({int(i): "zero norm" for i in np.flatnonzero(finite & (norms < MIN_NORM))})
    return dict(sorted(bad.items()))


def l2_normalize(vectors: np.ndarray, *, expected_dim: int) -> np.ndarray:
    """Return the rows scaled to unit length as float32; raise BadResponseError naming the bad rows.

    The error's facts: `rows` (indices), `reasons` (index -> reason), `reason` (the first one).
    Callers that want to keep the good rows call `find_bad_rows` first and normalize the rest.
    """
    array = _as_matrix(vectors, expected_dim)
    bad = find_bad_rows(array)
    if bad:
        rows = list(bad)
        raise BadResponseError(
            f"{len(rows)} of {array.shape[0]} embeddings are unusable (first: row {rows[0]}, "
            f"{bad[rows[0]]}); these items must be embedded again",
            rows=rows,
            reasons=bad,
            reason=bad[rows[0]],
        )
    # Norms in float64: float32 sums of 3072 squares lose the last digits that unit length needs.
    wide = array.astype(np.float64, copy=False)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / norms).astype(np.float32)
