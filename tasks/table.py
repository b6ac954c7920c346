"""The run's table before anything is written: open or create it, tell a first run, recover a killed run's vectors.

Each check is as cheap as it can be: a first run is known from the file system without importing
LanceDB, so its first call is on the wire while LanceDB loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexflow.tasks.errors import StoreError
from indexflow.tasks.settings import Settings
from indexflow.tasks.writer_lock import is_local, local_root

DEAD_LETTER_SUFFIX = "__dead_letters"  # tasks.dead_letters's, kept here so checking for it imports no LanceDB

if TYPE_CHECKING:
    from indexflow.tasks.store import VectorStore


def open_store(settings: Settings, *, rebuild: bool | None = None) -> VectorStore:
    """The run's table, created for the settings' recipe if missing (RecipeMismatchError if another)."""
    from indexflow.tasks.store import VectorStore

    return VectorStore.open(settings.db_uri, settings.table, settings.recipe,
                            rebuild=settings.rebuild if rebuild is None else rebuild, policy=settings.index_policy)


def nothing_written_yet(settings: Settings) -> bool:
    """True only for a local database where neither the table nor its dead letters exist on disk:
    no run (nor an earlier attempt of this one) committed anything to compare with."""
    if settings.rebuild or not is_local(settings.db_uri):
        return False
    from indexflow.tasks.spill import leftovers, spill_dir

    if leftovers(spill_dir(settings.db_uri, settings.table)):  # vectors paid for, to be recovered
        return False
    root = local_root(settings.db_uri)
    return not any((root / f"{name}.lance").exists()
                   for name in (settings.table, f"{settings.table}{DEAD_LETTER_SUFFIX}"))


def table_is_empty(settings: Settings) -> bool:
    """True when the run's table does not exist yet or holds no row: a first run, where everything is new."""
    if settings.rebuild:
        return True
    if nothing_written_yet(settings):  # known without importing LanceDB
        return True
    from indexflow.tasks.store import VectorStore

    try:
        store = VectorStore.open(settings.db_uri, settings.table, settings.recipe, create=False)
    except StoreError:
        return True
    return store.table.count_rows() == 0


def recover_spilled(settings: Settings) -> int:
    """Commit the vectors an interrupted run paid for but never committed; returns how many rows.

    Costs one directory listing (no LanceDB) when there is nothing to recover. A rebuild throws
    them away with the table. Call it holding the table's writer lock, before planning.
    """
    from indexflow.tasks.spill import discard, leftovers, recover, spill_dir

    directory = spill_dir(settings.db_uri, settings.table)
    if not leftovers(directory):
        return 0
    if settings.rebuild:
        discard(directory)
        return 0
    rows, _ = recover(open_store(settings, rebuild=False), directory, group_rows=settings.write_group_rows)
    return rows
