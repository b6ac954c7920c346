"""Group (chunk, vector) pairs into few, large commits; deletes follow their replacements.

With a `SpillLog` every row is on disk from the moment it arrives, so a crash loses no group: the
next run recovers it (`tasks.spill`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import StoreError
from indexflow.tasks.settings import Settings
from indexflow.tasks.spill import SpillLog, spill_for
from indexflow.tasks.store import VectorStore, rows_from


class GroupWriter:
    """Buffers (chunk, vector) pairs and commits them in groups of `group_rows` rows or `group_seconds`.

    A crash loses at most the group in flight, and the table gets few large fragments instead of
    many tiny ones. Stale ids queued with `delete` are removed only at `flush`, after the rows that
    replace them are written, so a document is never briefly missing from the index.
    """

    def __init__(
        self,
        store: VectorStore,
        *,
        group_rows: int = 2_000,
        group_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        spill: SpillLog | None = None,
    ) -> None:
        if group_rows < 1 or group_seconds <= 0:
            raise StoreError(f"group_rows must be >= 1 and group_seconds > 0, got {group_rows}, {group_seconds}")
        self.store = store
        self.group_rows = group_rows
        self.group_seconds = group_seconds
        self.clock = clock
        self.spill = spill
        self._batches: list[pa.RecordBatch] = []
        self._buffered = 0
        self._first_at: float | None = None
        self._deletes: list[str] = []
        self._had_dead_letters = store.count_dead_letters() > 0
        self.committed_rows = 0
        self.commits = 0
        self.deleted_rows = 0

    @property
    def buffered(self) -> int:
        return self._buffered

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        """Buffer rows (vectors[i] belongs to chunks[i]); returns rows committed by this call."""
        written = self.add_batch(rows_from(chunks, vectors)) if len(chunks) else 0
        return written + self.commit_if_due()

    def add_batch(self, batch: pa.RecordBatch, *, spilled: bool = False) -> int:
        """Buffer ready-made rows (spilled first unless `spilled` says they are); commits a full group;
        returns rows committed."""
        if self.spill is not None and not spilled:
            self.spill.append(batch)  # paid for: on disk before it waits for its group
        self._batches.append(batch)
        self._buffered += batch.num_rows
        if self._first_at is None:
            self._first_at = self.clock()
        return self._commit() if self._buffered >= self.group_rows else 0

    def commit_if_due(self) -> int:
        """Commit the buffer if it is big or old enough; call it when idle so time limits hold."""
        if self._buffered >= self.group_rows or (
            self._first_at is not None and self.clock() - self._first_at >= self.group_seconds
        ):
            return self._commit()
        return 0

    def delete(self, chunk_ids: Iterable[str]) -> None:
        """Queue stale chunk ids; they are deleted at `flush`, after the buffered rows are written."""
        self._deletes.extend(chunk_ids)

    def flush(self) -> int:
        """Commit what is buffered, then apply queued deletes; returns rows committed."""
        written = self._commit()
        if self._deletes:
            self.deleted_rows += self.store.delete_chunks(self._deletes)
            self._deletes = []
        return written

    def _commit(self) -> int:
        if not self._buffered:
            return 0
        # Batches are joined here, not by callers, so one group is one commit whatever the batch sizes.
        group = pa.Table.from_batches(self._batches)
        ids = group.column("id").to_pylist()
        last = {chunk_id: i for i, chunk_id in enumerate(ids)}
        if len(last) < len(ids):  # a chunk re-sent after a retry: its latest vector wins
            group = group.take(sorted(last.values()))
        written = self.store.upsert(group)
        if self._had_dead_letters:
            self.store.clear_dead_letters(list(last))
        taken = self._buffered  # rows as appended (a retried chunk twice), as the spill counts them
        self._batches, self._buffered, self._first_at = [], 0, None
        if self.spill is not None:
            self.spill.committed(taken)
        self.committed_rows += written
        self.commits += 1
        return written


def writer_for(store: VectorStore, settings: Settings, spill: SpillLog | None = None) -> GroupWriter:
    """The run's GroupWriter: its group limits, and `spill` (by default the run's own, see `spill_for`)."""
    spill = spill if spill is not None else spill_for(settings)
    return GroupWriter(store, group_rows=settings.write_group_rows, group_seconds=settings.write_group_seconds,
                       spill=spill)
