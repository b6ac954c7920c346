"""indexflow: keep a LanceDB vector index of a corpus fresh with Gemini embeddings.

    import indexflow
    summary = indexflow.index("data/corpus")              # or: await indexflow.aindex(...)
    for hit in indexflow.query("parse command line arguments", k=3):
        print(hit.rank, hit.score, hit.doc_id, hit.title)

Without GEMINI_API_KEY both use the built-in Gemini API emulator, as the `indexflow` command does;
GOOGLE_GEMINI_BASE_URL points them at another compatible server. The flow itself is
`indexflow.index_corpus` (a Prefect flow), and the stages are under `indexflow.tasks`.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import TYPE_CHECKING, Any

# Before anything loads LanceDB: its Rust logger warns about its own future defaults on every
# hybrid query, which users cannot act on. An explicit LANCEDB_LOG still wins.
os.environ.setdefault("LANCEDB_LOG", "error")

try:
    __version__ = metadata.version("indexflow")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use, so `import indexflow` stays cheap (no Prefect, LanceDB or SDK import).
_LAZY = {
    "index": "indexflow.api", "aindex": "indexflow.api", "query": "indexflow.api", "aquery": "indexflow.api",
    "index_corpus": "indexflow.flows.index_corpus",
    "Hit": "indexflow.tasks.search", "RunSummary": "indexflow.tasks.report", "PlanCounts": "indexflow.tasks.plan",
    "Settings": "indexflow.tasks.settings", "Endpoint": "indexflow.tasks.settings",
    "IndexflowError": "indexflow.tasks.errors", "ConfigError": "indexflow.tasks.errors",
    "InputError": "indexflow.tasks.errors", "StoreError": "indexflow.tasks.errors",
    "TableBusyError": "indexflow.tasks.errors", "RecipeMismatchError": "indexflow.tasks.errors",
    "EmbedError": "indexflow.tasks.errors", "DailyQuotaError": "indexflow.tasks.errors",
    "AuthError": "indexflow.tasks.errors", "BatchJobError": "indexflow.tasks.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from indexflow.api import aindex, aquery, index, query
    from indexflow.flows.index_corpus import index_corpus
    from indexflow.tasks.errors import (AuthError, BatchJobError, ConfigError, DailyQuotaError, EmbedError,
                                        IndexflowError, InputError, RecipeMismatchError, StoreError,
                                        TableBusyError)
    from indexflow.tasks.plan import PlanCounts
    from indexflow.tasks.report import RunSummary
    from indexflow.tasks.search import Hit
    from indexflow.tasks.settings import Endpoint, Settings


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'indexflow' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
