"""Chunks vs table -> what to embed, skip and delete; and the cost and time forecast of a run.

The planner is a filter over the chunk stream: it yields only the chunks whose (id, content hash)
is not already in the table, so texts stream through and only ids and hashes are held (about
150 bytes per indexed chunk). What is left of the table's ids at the end is stale.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from indexflow.tasks.settings import Limits

if TYPE_CHECKING:  # types only: the chunker, its readers and LanceDB load when a plan runs
    from indexflow.tasks.chunk import Chunk
    from indexflow.tasks.problems import ProblemLog
    from indexflow.tasks.settings import Settings
    from indexflow.tasks.store import VectorStore

# gemini-embedding-001, USD per million input tokens (https://ai.google.dev/gemini-api/docs/pricing).
PRICE_PER_MILLION_TOKENS = {"online": 0.15, "batch": 0.075}


def doc_id_of(chunk_id: str) -> str:
    """The document id inside a chunk id `{doc_id}#{ordinal}` (document ids may contain '#')."""
    return chunk_id.rsplit("#", 1)[0]


@dataclass
class PlanCounts:
    """What a run found; filled while the chunk stream is consumed."""

    docs_seen: int = 0
    docs_new: int = 0
    docs_changed: int = 0
    docs_unchanged: int = 0
    docs_deleted: int = 0
    chunks_seen: int = 0
    chunks_new: int = 0
    chunks_changed: int = 0
    chunks_unchanged: int = 0
    chunks_stale: int = 0
    chunks_dead_skipped: int = 0
    tokens_to_embed: int = 0
    deletion_skipped_reason: str | None = None

    @property
    def chunks_to_embed(self) -> int:
        return self.chunks_new + self.chunks_changed

    def as_dict(self) -> dict:
        return asdict(self) | {"chunks_to_embed": self.chunks_to_embed}


@dataclass
class Planner:
    """Compare a stream of chunks with the table's (id -> content hash) and the dead letters."""

    existing: dict[str, str]
    dead: Mapping[str, str] = field(default_factory=dict)
    retry_failed: bool = False
    counts: PlanCounts = field(default_factory=PlanCounts)

    def __post_init__(self) -> None:
        self._existing_per_doc: Counter[str] = Counter(doc_id_of(i) for i in self.existing)
        self._seen_docs: set[str] = set()

    def select(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Yield the chunks that must be embedded; count the rest."""
        doc: str | None = None
        doc_chunks = doc_changed = 0
        for chunk in chunks:
            if chunk.doc_id != doc:
                if doc is not None:
                    self._close_doc(doc, doc_chunks, doc_changed)
                doc, doc_chunks, doc_changed = chunk.doc_id, 0, 0
            doc_chunks += 1
            self.counts.chunks_seen += 1
            stored = self.existing.pop(chunk.id, None)
            if stored == chunk.content_hash:
                self.counts.chunks_unchanged += 1
                continue
            doc_changed += 1
            if not self.retry_failed and self.dead.get(chunk.id) == chunk.content_hash:
                # Failed before with this exact content: paying again would fail again.
                self.counts.chunks_dead_skipped += 1
                continue
            if stored is None:
                self.counts.chunks_new += 1
            else:
                self.counts.chunks_changed += 1
            self.counts.tokens_to_embed += chunk.tokens
            yield chunk
        if doc is not None:
            self._close_doc(doc, doc_chunks, doc_changed)

    def _close_doc(self, doc: str, n_chunks: int, n_changed: int) -> None:
        self._seen_docs.add(doc)
        self.counts.docs_seen += 1
        before = self._existing_per_doc.get(doc, 0)
        if before == 0:
            self.counts.docs_new += 1
        elif n_changed == 0 and before == n_chunks:
            self.counts.docs_unchanged += 1
        else:
            self.counts.docs_changed += 1

    def stale_ids(self, *, delete_missing: bool, protected_docs: set[str] = frozenset(),
                  unknown_problems: int = 0) -> list[str]:
        """Ids to delete once the stream is consumed: shrunk documents' tails and, if allowed, missing documents.

        A document that could not be read this run is protected: a read error must never delete
        what is indexed. Problems whose document id is unknown (a malformed JSONL line) protect
        every missing document, since any of them might be that line.
        """
        stale: list[str] = []
        missing_docs: set[str] = set()
        for chunk_id in self.existing:
            doc = doc_id_of(chunk_id)
            if doc in self._seen_docs:
                stale.append(chunk_id)
            elif doc not in protected_docs:
                missing_docs.add(doc)
                if delete_missing and not unknown_problems:
                    stale.append(chunk_id)
        if missing_docs and not delete_missing:
            self.counts.deletion_skipped_reason = "delete_missing is off"
        elif missing_docs and unknown_problems:
            self.counts.deletion_skipped_reason = (
                f"{unknown_problems} corpus record(s) could not be read or identified; "
                "missing documents are kept until the corpus reads cleanly"
            )
        else:
            self.counts.docs_deleted = len(missing_docs)
        self.counts.chunks_stale = len(stale)
        return stale


@dataclass(frozen=True)
class Forecast:
    """Cost and duration of embedding `texts` texts of `tokens` tokens in total."""

    texts: int
    tokens: int
    calls: int
    online_cost_usd: float
    batch_cost_usd: float
    online_seconds: float | None  # None: no limit makes the quota the bottleneck
    days: int  # calendar days the per-day quota needs (1 when it fits in one)


def forecast(texts: int, tokens: int, *, batch_size: int, limits: Limits) -> Forecast:
    """The money and the time a run needs under `limits`, before any API call."""
    calls = math.ceil(texts / batch_size) if texts else 0
    requests = texts if limits.count == "texts" else calls
    minutes = [0.0]
    if limits.rpm:
        minutes.append(requests / limits.rpm)
    if limits.tpm:
        minutes.append(tokens / limits.tpm)
    seconds = 60 * max(minutes) if len(minutes) > 1 else None
    days = max(1, math.ceil(requests / limits.rpd)) if limits.rpd and requests else 1
    return Forecast(
        texts=texts,
        tokens=tokens,
        calls=calls,
        online_cost_usd=tokens * PRICE_PER_MILLION_TOKENS["online"] / 1e6,
        batch_cost_usd=tokens * PRICE_PER_MILLION_TOKENS["batch"] / 1e6,
        online_seconds=seconds,
        days=days,
    )


# -- the plan stage both routes share -------------------------------------------------------


def corpus_chunks(settings: Settings, problems: ProblemLog) -> Iterator[Chunk]:
    """The corpus as a stream of chunks under the recipe; bad input goes to `problems`."""
    from indexflow.tasks.chunk import chunk_documents
    from indexflow.tasks.corpus import read_corpus

    docs = read_corpus(
        settings.corpus,
        format=settings.corpus_format,
        id_field=settings.id_field,
        title_field=settings.title_field,
        text_field=settings.text_field,
        on_problem=problems,
    )
    return chunk_documents(docs, settings.recipe, max_tokens=settings.max_chunk_tokens,
                           overlap_tokens=settings.overlap_tokens)


def make_planner(store: VectorStore, settings: Settings) -> Planner:
    """A planner over the table's ids and hashes and its dead letters, as the settings ask."""
    dead = {item.chunk_id: item.content_hash for item in store.dead_letters()}
    return Planner(store.existing_hashes(), dead, retry_failed=settings.retry_failed)


def plan_run(settings: Settings) -> tuple[PlanCounts, ProblemLog]:
    """Read and chunk the corpus against the table without calling the API: what a run would do."""
    from indexflow.tasks.errors import StoreError
    from indexflow.tasks.problems import ProblemLog
    from indexflow.tasks.store import VectorStore

    store = None
    if not settings.rebuild:
        try:
            store = VectorStore.open(settings.db_uri, settings.table, settings.recipe, create=False)
        except StoreError:
            pass  # no table yet: everything is new (planning never creates one)
    problems = ProblemLog()
    planner = make_planner(store, settings) if store else Planner({})
    for _ in planner.select(corpus_chunks(settings, problems)):
        pass
    planner.stale_ids(delete_missing=settings.delete_missing, protected_docs=problems.protected_docs,
                      unknown_problems=problems.unidentified)
    return planner.counts, problems
