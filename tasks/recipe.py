"""The embedding recipe: everything that changes a vector, and the content hash it defines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache

CHUNKER_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Recipe:
    """How a chunk becomes a vector; two chunks share a vector only if they share a recipe."""

    model: str = "gemini-embedding-001"
    dimensions: int = 768
    task_type: str = "RETRIEVAL_DOCUMENT"
    send_title: bool = True
    normalize: bool = True
    chunker_version: str = CHUNKER_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls(**json.loads(text))

    def fingerprint(self) -> str:
        """A short stable digest of the recipe; part of every content hash."""
        return _fingerprint(self)

    def content_hash(self, title: str, text: str) -> str:
        """The hash that decides whether a chunk must be embedded again."""
        h = hashlib.sha256()
        h.update(_fingerprint(self).encode())
        h.update(b"\x00")
        h.update((title if self.send_title else "").encode("utf-8"))
        h.update(b"\x00")
        h.update(text.encode("utf-8"))
        return h.hexdigest()


@lru_cache(maxsize=64)
def _fingerprint(recipe: Recipe) -> str:
    # Once per recipe, not once per chunk: asdict + JSON per chunk was a quarter of planning.
    return hashlib.sha256(recipe.to_json().encode()).hexdigest()[:16]
