"""A crash-safe log of paid-for vectors: rows wait on disk, not only in memory, until their group commits.

`GroupWriter` appends every batch of rows to an Arrow IPC stream as it arrives, before the batch
waits for its grouped `merge_insert`, and removes the file once the group is committed. A
process killed in between leaves the file behind; the next run on the table `recover`s it into
the table before planning (upserts by id: replaying twice is harmless), so a SIGKILL re-pays
only the calls that were on the wire, not a write group. A killed write leaves a torn last
message: the batches before it are read, the torn one was never acknowledged to anybody.

Writes are flushed to the OS at once (what a killed process needs) and fsynced at most every
`fsync_seconds` and at close (what a power cut needs).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from indexflow.tasks.recipe import Recipe
    from indexflow.tasks.settings import Settings
    from indexflow.tasks.store import VectorStore

SPILL_DIR = ".indexflow-spill"
SUFFIX = ".arrow"
RECIPE_KEY = b"indexflow.recipe"


def spill_dir(db_uri: str, table: str) -> Path:
    """Where the table's spill files live: beside a local table; in the user's cache for object storage."""
    from indexflow.tasks.writer_lock import is_local, local_root

    if is_local(db_uri):
        return local_root(db_uri) / SPILL_DIR / table
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "indexflow" / "spill"
    return cache / hashlib.sha256(f"{db_uri}\0{table}".encode()).hexdigest()[:16] / table


def spill_for(settings: Settings) -> SpillLog | None:
    """The run's spill beside its table, or None when `spill_vectors` is off."""
    if not settings.spill_vectors:
        return None
    return SpillLog(spill_dir(settings.db_uri, settings.table), settings.recipe)


def leftovers(directory: Path) -> list[Path]:
    """Spill files a run left behind (oldest first); cheap, imports nothing."""
    try:
        return sorted((p for p in directory.iterdir() if p.suffix == SUFFIX), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


class SpillLog:
    """The open spill file of one writer; `append` before buffering, `committed` after each commit."""

    def __init__(self, directory: Path, recipe: Recipe, *, fsync_seconds: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.recipe = recipe
        self.fsync_seconds = fsync_seconds
        self.clock = clock
        self._file = None
        self._writer = None
        self._path: Path | None = None
        self._synced_at = 0.0
        self._serial = 0
        self.rows = 0  # rows in the open file
        self.committed_rows = 0  # of them, rows a commit has taken

    def append(self, batch: pa.RecordBatch) -> None:
        """Write `batch` through to the OS (safe from a killed process once this returns)."""
        if self._writer is None:
            self._open(batch.schema)
        self._writer.write_batch(batch)
        self._file.flush()
        self.rows += batch.num_rows
        if self.clock() - self._synced_at >= self.fsync_seconds:
            os.fsync(self._file.fileno())
            self._synced_at = self.clock()

    def committed(self, rows: int) -> None:
        """A commit took `rows` appended rows; once it has taken them all, the file goes.

        Rows may be appended ahead of the writer's buffer (a first run spills while its table
        opens), so one commit need not cover the whole file.
        """
        self.committed_rows += rows
        if self.committed_rows < self.rows:
            return
        path = self._close()
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close, keeping the file: what was not committed is recovered by the next run."""
        self._close()

    def _open(self, schema: pa.Schema) -> None:
        import pyarrow as pa

        self.directory.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        # Unique across processes and attempts; names sort in write order for recovery.
        self._path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{self._serial}{SUFFIX}"
        self._file = open(self._path, "wb")
        schema = schema.with_metadata({**(schema.metadata or {}), RECIPE_KEY: self.recipe.to_json().encode()})
        self._writer = pa.ipc.new_stream(self._file, schema)
        self._synced_at = self.clock()

    def _close(self) -> Path | None:
        path, self._path = self._path, None
        if self._writer is not None:
            self._writer.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._writer = self._file = None
        self.rows = self.committed_rows = 0
        return path


def read_spill(path: Path) -> tuple[str | None, Iterator[pa.RecordBatch]]:
    """(the recipe JSON it was written with, its complete batches); a torn tail is left out."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError):  # killed before the schema was whole: nothing in it
        return None, iter(())
    recipe = (reader.schema.metadata or {}).get(RECIPE_KEY)

    def batches() -> Iterator[pa.RecordBatch]:
        while True:
            try:
                # The recipe rode on the file's schema; the rows go to the table without it.
                yield reader.read_next_batch().replace_schema_metadata(None)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError):  # the torn last message of a killed write
                return

    return recipe.decode() if recipe else None, batches()


def recover(store: VectorStore, directory: Path, *, group_rows: int = 2_000) -> tuple[int, int]:
    """Commit every spill file left in `directory` into `store`, then remove them; returns (rows, files).

    Files written with another recipe (the table was rebuilt since) are removed unread.
    """
    from indexflow.tasks.writer import GroupWriter

    files = leftovers(directory)
    if not files:
        return 0, 0
    writer = GroupWriter(store, group_rows=group_rows, group_seconds=float("inf"))
    wanted = store.recipe.to_json()
    for path in files:
        recipe, batches = read_spill(path)
        if recipe == wanted:
            for batch in batches:
                writer.add_batch(batch)
    writer.flush()
    for path in files:
        path.unlink(missing_ok=True)
    return writer.committed_rows, len(files)


def discard(directory: Path) -> int:
    """Remove every spill file (a rebuild: they hold vectors of what is being thrown away); returns how many."""
    files = leftovers(directory)
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)
