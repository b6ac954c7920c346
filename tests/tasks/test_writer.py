"""The group writer's promises: the documented group size and age (2,000 rows or 5 s), exact
boundaries, and that it touches the dead-letter table only when there are dead letters to clear."""

from __future__ import annotations

import pytest

from indexflow.tasks.errors import StoreError
from indexflow.tasks.dead_letters import FailedItem
from indexflow.tasks.store import VectorStore
from indexflow.tasks.writer import GroupWriter
from tests.fakes import FakeClock
from tests.tasks.test_store import RECIPE, make_chunks, unit


@pytest.fixture
def store(tmp_path):
    return VectorStore.open(str(tmp_path), "idx", RECIPE)


def test_default_groups_are_the_documented_2000_rows_or_5_seconds(store):
    # README "Crash-safe writes": rows are upserted in groups (2,000 rows or 5 s).
    clock = FakeClock()
    writer = GroupWriter(store, clock=clock)
    chunks, vectors = make_chunks(2_000), unit(2_000)
    assert writer.add(chunks[:1_999], vectors[:1_999]) == 0
    assert writer.add(chunks[1_999:], vectors[1_999:]) == 2_000, "the 2,000th row commits the group"

    assert writer.add(make_chunks(1, doc_prefix="late"), unit(1)) == 0
    clock.now += 4.999
    assert writer.commit_if_due() == 0
    clock.now += 0.001
    assert writer.commit_if_due() == 1, "a group 5 s old is committed"
    assert (writer.commits, writer.committed_rows, store.count_rows()) == (2, 2_001, 2_001)


def test_a_group_is_committed_when_it_reaches_group_rows_exactly(store):
    writer = GroupWriter(store, group_rows=10, group_seconds=60, clock=FakeClock())
    assert writer.buffered == 0
    chunks, vectors = make_chunks(10), unit(10)
    assert writer.add(chunks[:9], vectors[:9]) == 0
    assert (writer.buffered, store.count_rows()) == (9, 0)
    assert writer.add(chunks[9:], vectors[9:]) == 10
    assert (writer.buffered, writer.commits) == (0, 1)


def test_an_empty_writer_commits_nothing(store):
    writer = GroupWriter(store, group_rows=1, clock=FakeClock())
    version = store.table.version
    assert writer.add([], unit(0)) == 0
    assert writer.flush() == 0
    assert (writer.commits, writer.committed_rows, writer.deleted_rows) == (0, 0, 0)
    assert store.table.version == version


def test_a_group_of_one_row_and_a_fraction_of_a_second_are_allowed(store):
    clock = FakeClock()
    writer = GroupWriter(store, group_rows=1, group_seconds=0.5, clock=clock)
    assert writer.add(make_chunks(1), unit(1)) == 1
    writer = GroupWriter(store, group_rows=100, group_seconds=0.5, clock=clock)
    writer.add(make_chunks(2, start=1), unit(2))
    clock.now += 0.5
    assert writer.commit_if_due() == 2


@pytest.mark.parametrize(("rows", "seconds"), [(0, 5.0), (-1, 5.0), (5_000, 0), (5_000, -1.0), (0, 0)])
def test_a_group_size_below_one_row_or_an_age_not_above_zero_is_refused(store, rows, seconds):
    with pytest.raises(StoreError) as info:
        GroupWriter(store, group_rows=rows, group_seconds=seconds)
    assert str(info.value) == f"group_rows must be >= 1 and group_seconds > 0, got {rows}, {seconds}"


def test_a_single_dead_letter_is_cleared_once_its_chunk_is_indexed(store):
    chunk = make_chunks(1)[0]
    store.record_failures([FailedItem.from_chunk(chunk, "503", 8)])
    writer = GroupWriter(store, group_rows=100, clock=FakeClock())
    writer.add([chunk], unit(1))
    writer.flush()
    assert store.dead_letters() == []
    assert store.count_dead_letters() == 0


def test_without_dead_letters_the_writer_never_writes_to_their_table(store):
    # The dead-letter table exists (a failure once, since cleared) but is empty: a delete on it
    # would still be a commit, one per group, so the writer must not issue any.
    chunk = make_chunks(1, doc_prefix="x")[0]
    store.record_failures([FailedItem.from_chunk(chunk, "503", 8)])
    store.clear_dead_letters([chunk.id])
    dead = store.failures.table(create=False)
    version = dead.version
    writer = GroupWriter(store, group_rows=5, clock=FakeClock())
    chunks, vectors = make_chunks(12), unit(12)
    for start in range(0, 12, 5):
        writer.add(chunks[start : start + 5], vectors[start : start + 5])
    writer.flush()
    assert writer.commits == 3
    assert dead.version == version
