"""Bad input seen during a run: counted, a sample kept for the report, and the documents it protects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from indexflow.tasks.errors import InputError


@dataclass
class ProblemLog:
    """Collects `InputError`s from the readers; memory is bounded by `keep`."""

    keep: int = 50
    count: int = 0
    by_reason: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    protected_docs: set[str] = field(default_factory=set)
    unidentified: int = 0

    def __call__(self, problem: InputError) -> None:
        self.count += 1
        self.by_reason[getattr(problem, "reason", "unknown")] += 1
        if len(self.samples) < self.keep:
            self.samples.append(str(problem))
        doc_id = getattr(problem, "doc_id", None)
        if doc_id is not None:
            # a document we could not read this time keeps whatever it had in the index
            self.protected_docs.add(str(doc_id))
        elif getattr(problem, "reason", None) != "duplicate_id":
            self.unidentified += 1
