"""Which columns the full-text (BM25) side covers, and their indexes: one FTS index per column.

LanceDB 0.40's native FTS indexes one column each (`create_fts_index` refuses a list); a query
names several with `fts_columns` and scores them as a multi-match. So titles get an index of their
own beside `text`: no combined column, no schema change. A table built before titles were indexed
is searched on the columns it has and gets the title index at its next finalize.
"""

from __future__ import annotations

from lancedb.index import FTS

FTS_COLUMNS: tuple[str, ...] = ("text", "title")


def fts_indexed(table) -> list[str]:
    """The FTS columns with a full-text index on `table`, in FTS_COLUMNS order."""
    indexed = {index.columns[0] for index in table.list_indices() if index.index_type == "FTS"}
    return [column for column in FTS_COLUMNS if column in indexed]


def missing_fts(table) -> list[str]:
    """FTS columns still without an index (a new table, or one from before titles were indexed)."""
    have = set(fts_indexed(table))
    return [column for column in FTS_COLUMNS if column not in have]


def build_fts(table, *, rebuild: bool = False) -> bool:
    """Create the missing full-text indexes (all of them with `rebuild`); whether any was created."""
    todo = list(FTS_COLUMNS) if rebuild else missing_fts(table)
    for column in todo:
        table.create_index(column, config=FTS(), replace=True)
    return bool(todo)


def fts_query(table, text: str, limit: int, columns: list[str]):
    """BM25 top-`limit` over `columns` (a multi-match when there are several), with `_score`."""
    return table.search(text, query_type="fts", fts_columns=columns).limit(limit)
