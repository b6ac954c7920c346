"""Corpus readers: directory trees, JSONL, Parquet and CSV -> a stream of `Document`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Document:
    """One source document, as read; `source` says where it came from (path, and line if any)."""

    id: str
    title: str
    text: str
    source: str
