"""`Document` -> `Chunk`: split under the token limit with stable ids and content hashes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of embedding; `id` is `{doc_id}#{ordinal}`, stable across runs."""

    id: str
    doc_id: str
    ordinal: int
    text: str
    title: str
    source: str
    tokens: int
    content_hash: str
