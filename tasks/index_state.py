"""What the vector index was trained on, kept in the Lance dataset's config beside the table.

The retrain rule needs the row count at the last training; neither LanceDB nor the index records
it (folding new rows in raises `num_indexed_rows`), so indexflow writes it at each training.
"""

from __future__ import annotations

TRAINED_ROWS_KEY = "indexflow.vector_trained_rows"


def _dataset(table):
    try:
        return table.to_lance()  # needs pylance (the dev and interop extras install it)
    except ImportError:
        return None


def trained_rows(table) -> int | None:
    """Rows the vector index was last trained on; None when unknown (no record, or no pylance)."""
    dataset = _dataset(table)
    value = dataset.config().get(TRAINED_ROWS_KEY) if dataset is not None else None
    return int(value) if value else None


def record_trained_rows(table, rows: int) -> bool:
    """Record `rows` as the training size (one small commit); False when pylance is missing."""
    dataset = _dataset(table)
    if dataset is None:
        return False
    dataset.update_config({TRAINED_ROWS_KEY: str(rows)})
    table.checkout_latest()  # the handle sees the config commit, so its next write is not stale
    return True
