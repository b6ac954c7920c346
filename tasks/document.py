"""The `Document` a corpus reader yields, and the per-read state every reader shares:
problem reports, and the checks (non-empty, no NUL, id not seen before) each document must pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from indexflow.tasks.errors import InputError

ProblemHandler = Callable[[InputError], None]


@dataclass(frozen=True, slots=True)
class Document:
    """One source document, as read; `source` says where it came from (path, and line if any)."""

    id: str
    title: str
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Fields:
    id: str | None
    title: str
    text: str


class ReadRun:
    """What one `read_corpus` call shares across files: the problem handler and the ids seen."""

    def __init__(self, fields: Fields, on_problem: ProblemHandler) -> None:
        self.fields = fields
        self._on_problem = on_problem
        self._seen: set[str] = set()

    def problem(self, source: str, line: int | None, reason: str, what: str, doc_id: str | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        error = InputError(f"{where}: {what}", source=source, line=line, reason=reason, doc_id=doc_id)
        self._on_problem(error)

    def accept(self, doc: Document, source: str, line: int | None) -> Document | None:
        """Check what every reader needs of a document; report and drop it otherwise."""
        if not doc.text.strip():
            self.problem(source, line, "empty", f"document {doc.id!r} has empty text; skipped", doc.id)
            return None
        if "\x00" in doc.text:
            self.problem(source, line, "binary", f"document {doc.id!r} contains NUL characters; skipped", doc.id)
            return None
        if doc.id in self._seen:
            what = f"duplicate document id {doc.id!r}; the first one is kept, this one skipped"
            self.problem(source, line, "duplicate_id", what)
            return None
        self._seen.add(doc.id)
        return doc
