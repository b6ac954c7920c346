"""The spill: every row is on disk from the moment it arrives until its group commits; a later run
recovers what a killed one left, exactly once, and nothing from another recipe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexflow.tasks.recipe import Recipe
from indexflow.tasks.spill import SpillLog, discard, leftovers, read_spill, recover, spill_dir
from indexflow.tasks.store import VectorStore
from indexflow.tasks.writer import GroupWriter
from tests.fakes import FakeClock
from tests.tasks.test_store import RECIPE, make_chunks, unit


@pytest.fixture
def store(tmp_path):
    return VectorStore.open(str(tmp_path / "db"), "idx", RECIPE)


@pytest.fixture
def directory(tmp_path):
    return spill_dir(str(tmp_path / "db"), "idx")


def vectors_of(store) -> dict[str, np.ndarray]:
    table = store.table.to_arrow()
    return dict(zip(table.column("id").to_pylist(), np.asarray(table.column("vector").to_pylist(), np.float32)))


def killed_writer(store, directory, n: int, batch: int = 10) -> tuple[list, np.ndarray]:
    """A writer that took `n` rows (none committed: the group is big and young) and then died."""
    writer = GroupWriter(store, group_rows=10_000, group_seconds=3600, clock=FakeClock(),
                         spill=SpillLog(directory, RECIPE))
    chunks, vectors = make_chunks(n), unit(n)
    for i in range(0, n, batch):
        assert writer.add(chunks[i:i + batch], vectors[i:i + batch]) == 0
    return chunks, vectors  # no flush, no close: what SIGKILL leaves


def test_rows_are_on_disk_before_their_group_commits_and_the_file_goes_once_it_does(store, directory):
    writer = GroupWriter(store, group_rows=10_000, group_seconds=3600, clock=FakeClock(),
                         spill=SpillLog(directory, RECIPE))
    writer.add(make_chunks(25), unit(25))
    (path,) = leftovers(directory)
    recipe, batches = read_spill(path)
    assert recipe == RECIPE.to_json() and sum(b.num_rows for b in batches) == 25
    assert store.count_rows() == 0
    assert writer.flush() == 25
    assert leftovers(directory) == [] and store.count_rows() == 25


def test_a_killed_writers_rows_are_recovered_into_the_table_with_their_vectors(store, directory, tmp_path):
    chunks, vectors = killed_writer(store, directory, 40)
    assert store.count_rows() == 0
    fresh = VectorStore.open(str(tmp_path / "db"), "idx", RECIPE)  # the next run's handle
    assert recover(fresh, directory) == (40, 1)
    got = vectors_of(fresh)
    assert sorted(got) == sorted(c.id for c in chunks)
    for chunk, vector in zip(chunks, vectors):
        np.testing.assert_allclose(got[chunk.id], vector, rtol=0, atol=0)
    assert leftovers(directory) == []
    assert recover(fresh, directory) == (0, 0)


def test_a_torn_last_write_loses_only_that_batch(store, directory):
    killed_writer(store, directory, 30)
    (path,) = leftovers(directory)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)  # the process died inside the third batch's message
    assert recover(store, directory) == (20, 1)
    assert sorted(vectors_of(store)) == sorted(c.id for c in make_chunks(20))


def test_a_file_killed_before_its_schema_was_whole_is_dropped(store, directory):
    killed_writer(store, directory, 10)
    (path,) = leftovers(directory)
    with open(path, "r+b") as f:
        f.truncate(7)
    assert recover(store, directory) == (0, 1) and leftovers(directory) == []


def test_recovering_rows_that_were_committed_after_all_duplicates_nothing(store, directory, tmp_path):
    writer = GroupWriter(store, group_rows=10_000, group_seconds=3600, clock=FakeClock(),
                         spill=SpillLog(directory, RECIPE))
    writer.add(make_chunks(15), unit(15))
    (path,) = leftovers(directory)
    copy = shutil.copy(path, tmp_path / "copy.arrow")
    writer.flush()  # committed, and then the process died before the file was removed:
    shutil.copy(copy, path)
    assert recover(store, directory) == (15, 1)
    ids = store.table.to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 15


def test_rows_of_another_recipe_are_thrown_away_not_written(tmp_path, directory):
    other = Recipe(dimensions=RECIPE.dimensions, task_type="SEMANTIC_SIMILARITY")
    old = VectorStore.open(str(tmp_path / "db"), "idx", RECIPE)
    writer = GroupWriter(old, group_rows=10_000, group_seconds=3600, clock=FakeClock(),
                         spill=SpillLog(directory, RECIPE))
    writer.add(make_chunks(5), unit(5))
    rebuilt = VectorStore.open(str(tmp_path / "db"), "idx", other, rebuild=True)
    assert recover(rebuilt, directory) == (0, 1)
    assert rebuilt.count_rows() == 0 and leftovers(directory) == []


def test_discard_removes_every_file(store, directory):
    killed_writer(store, directory, 10)
    killed_writer(store, directory, 10)
    assert len(leftovers(directory)) == 2
    assert discard(directory) == 2 and leftovers(directory) == []


def test_object_storage_tables_spill_to_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one, two = spill_dir("s3://bucket/db", "idx"), spill_dir("s3://bucket/other", "idx")
    assert one != two and str(one).startswith(str(tmp_path / "cache" / "indexflow" / "spill"))
    assert spill_dir(str(tmp_path / "db"), "idx") == tmp_path / "db" / ".indexflow-spill" / "idx"


def test_rows_spilled_ahead_of_the_writer_keep_the_file_until_a_commit_takes_them_all(store, directory, tmp_path):
    # A first run spills answers while its table opens, then hands them to the writer one by one:
    # a kill between two of those commits must still find the rest on disk.
    from indexflow.tasks.rows import rows_from

    spill = SpillLog(directory, RECIPE)
    chunks, vectors = make_chunks(15), unit(15)
    batches = [rows_from(chunks[i:i + 5], vectors[i:i + 5]) for i in range(0, 15, 5)]
    for batch in batches:
        spill.append(batch)
    writer = GroupWriter(store, group_rows=5, group_seconds=3600, clock=FakeClock(), spill=spill)
    assert writer.add_batch(batches[0], spilled=True) == 5  # one group committed ...
    assert len(leftovers(directory)) == 1  # ... the file stays: two batches are not in the table
    fresh = VectorStore.open(str(tmp_path / "db"), "idx", RECIPE)  # killed here; the next run:
    assert recover(fresh, directory) == (15, 1)
    ids = fresh.table.to_arrow().column("id").to_pylist()
    assert sorted(ids) == sorted(c.id for c in chunks) and len(ids) == len(set(ids))


def test_no_spill_turns_it_off_from_the_cli_to_the_writer(tmp_path):
    from indexflow.flows.cli import RunOptions
    from indexflow.tasks.settings import Settings
    from indexflow.tasks.spill import spill_for

    assert RunOptions(spill=False).options() == {"spill_vectors": False}
    assert RunOptions().options() is None  # the default sends nothing: spilling is on
    on = Settings(corpus=tmp_path, db_uri=str(tmp_path / "db"), table="t")
    assert spill_for(on).directory == tmp_path / "db" / ".indexflow-spill" / "t"
    assert spill_for(on.model_copy(update={"spill_vectors": False})) is None
