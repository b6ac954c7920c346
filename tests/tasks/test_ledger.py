"""The batch-job ledger: durable rows beside the index, read fresh by every handle."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import StoreError
from indexflow.tasks.batch.ledger import (
    CANCELLED, COLLECTED, CREATED, FAILED, INTENT, ITEMS_SUFFIX, JOBS_SUFFIX, RUNNING, JobRecord, Ledger, job_key,
)


def chunks(n: int, prefix: str = "d", content: str = "h") -> list[Chunk]:
    return [Chunk(f"{prefix}{i}#0", f"{prefix}{i}", 0, f"text {i}", f"title {i}", "c.jsonl", 3, f"{content}{i}")
            for i in range(n)]


def intent(key: str, n: int = 3, **kw) -> JobRecord:
    return JobRecord(key, "run1", 1, INTENT, "inline", n, 9, **kw)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger.open(str(tmp_path / "db"), "idx")


def test_job_key_names_table_run_and_part():
    assert job_key("corpus", "abc123", 4) == "indexflow:corpus:abc123:part-4"


def test_tables_live_beside_the_index_with_a_primary_key(ledger, tmp_path):
    names = set(ledger.db.list_tables().tables)
    assert {"idx" + JOBS_SUFFIX, "idx" + ITEMS_SUFFIX} <= names
    metadata = ledger._jobs.schema.field("key").metadata or {}
    assert any(k.startswith(b"lance-schema:unenforced-primary-key") for k in metadata)


def test_intent_then_name_survive_a_reopen_by_another_handle(ledger, tmp_path):
    ledger.record_intent(intent("k1"), chunks(3))
    other = Ledger.open(str(tmp_path / "db"), "idx")  # what a re-run after a crash sees
    (row,) = other.jobs()
    assert (row.state, row.job_name, row.live, row.open) == (INTENT, None, True, True)
    ledger.update("k1", state=CREATED, job_name="batches/abc")
    assert other.get("k1").job_name == "batches/abc" and other.get("k1").updated_at >= row.updated_at
    assert other.find("batches/abc").key == "k1" and other.find("abc").key == "k1" and other.find("k1").key == "k1"
    assert other.find("nope") is None


def test_items_come_back_in_submission_order_and_rewrite_replaces(ledger):
    items = chunks(5)[::-1]
    ledger.record_intent(intent("k1", 5), items)
    assert [c.id for c in ledger.items("k1")] == [c.id for c in items]
    assert ledger.items("k1")[0] == items[0]
    ledger.record_intent(intent("k1", 2), items[:2])  # an interrupted earlier attempt is replaced
    assert [c.id for c in ledger.items("k1")] == [c.id for c in items[:2]]
    assert len(ledger.jobs()) == 1


def test_open_and_live_follow_state_and_resolution(ledger):
    for key, state, resolution in [("a", RUNNING, None), ("b", FAILED, None), ("c", FAILED, "resubmitted"),
                                   ("d", COLLECTED, None), ("e", CANCELLED, "reported"), ("f", INTENT, "not_created")]:
        ledger.record_intent(intent(key), [])
        ledger.update(key, state=state, resolution=resolution)
    assert [r.key for r in ledger.jobs(open_only=True)] == ["a", "b"]
    assert [r.key for r in ledger.jobs() if r.live] == ["a"]


def test_covered_maps_chunks_to_their_latest_job(ledger):
    ledger.record_intent(intent("old"), chunks(3, content="old"))
    ledger.record_intent(intent("new"), chunks(2, content="new"))
    covered = ledger.covered(["old", "new"])
    assert covered["d0#0"] == ("new0", "new") and covered["d2#0"] == ("old2", "old")
    assert ledger.covered(["old"])["d0#0"] == ("old0", "old")
    assert ledger.covered([]) == {}


def test_prune_drops_items_of_closed_jobs_only(ledger):
    ledger.record_intent(intent("live"), chunks(2))
    ledger.record_intent(intent("done"), chunks(2, prefix="e"))
    ledger.update("done", state=COLLECTED)
    assert ledger.prune() == 1
    assert len(ledger.items("live")) == 2 and ledger.items("done") == []


def test_unknown_state_and_missing_job_are_refused(ledger):
    ledger.record_intent(intent("k"), [])
    with pytest.raises(StoreError):
        ledger.update("k", state="SOMETHING")
    with pytest.raises(StoreError) as info:
        ledger.update("missing", state=CREATED)
    assert info.value.key == "missing"


def test_open_without_create_names_the_table(tmp_path):
    with pytest.raises(StoreError) as info:
        Ledger.open(str(tmp_path / "db"), "nothing", create=False)
    assert info.value.table == "nothing"


# -- exact schemas, whole records, a ledger without its items table -----------------------

UTC = pa.timestamp("us", tz="UTC")
PK = {b"lance-schema:unenforced-primary-key:position": b"1"}


def test_the_jobs_table_has_exactly_the_documented_columns_and_nullability(ledger):
    expected = pa.schema([
        pa.field("key", pa.string(), nullable=False, metadata=PK),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("route", pa.string(), nullable=False),
        pa.field("items", pa.int32(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("created_at", UTC, nullable=False),
        pa.field("updated_at", UTC, nullable=False),
        pa.field("job_name", pa.string()),
        pa.field("input_file", pa.string()),
        pa.field("output_file", pa.string()),
        pa.field("parent", pa.string()),
        pa.field("generation", pa.int32(), nullable=False),
        pa.field("resolution", pa.string()),
        pa.field("succeeded", pa.int32(), nullable=False),
        pa.field("failed", pa.int32(), nullable=False),
        pa.field("retried_online", pa.int32(), nullable=False),
        pa.field("dead_lettered", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("priority", pa.int64(), nullable=False),  # added with job priorities (issue 12)
    ])
    assert ledger._jobs.schema.equals(expected, check_metadata=True), ledger._jobs.schema


def test_a_ledger_written_before_priorities_existed_gets_the_column_and_keeps_its_jobs(tmp_path):
    """Tables written by an earlier version: the job rows survive, read as priority 0, and take new ones."""
    import lancedb

    from indexflow.tasks.batch.ledger import JOBS_SCHEMA, JOBS_SUFFIX

    old_schema = pa.schema([f for f in JOBS_SCHEMA if f.name != "priority"])
    old = JobRecord("k-old", "r0", 1, CREATED, "inline", 3, 30, job_name="batches/old")
    row = {f.name: getattr(old, f.name) for f in old_schema}
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("idx" + JOBS_SUFFIX, pa.Table.from_pylist([row], schema=old_schema))
    for create in (False, True):  # `indexflow batches` opens without creating; a run opens creating
        ledger = Ledger.open(str(tmp_path / "db"), "idx", create=create)
        assert "priority" in ledger._jobs.schema.names
        assert ledger.get("k-old").priority == 0 and ledger.get("k-old").job_name == "batches/old"
    ledger.record_intent(JobRecord("k-new", "r1", 1, INTENT, "inline", 1, 10, priority=9), [])
    assert {r.key: r.priority for r in ledger.jobs()} == {"k-old": 0, "k-new": 9}


def test_the_items_table_has_exactly_the_documented_columns_and_nullability(ledger):
    expected = pa.schema([
        pa.field("job_key", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int32(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source", pa.string()),
        pa.field("tokens", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ])
    assert ledger._items.schema.equals(expected, check_metadata=True), ledger._items.schema


def test_a_new_intent_reads_back_whole_with_zero_counts_and_no_name(ledger, tmp_path):
    recorded = ledger.record_intent(JobRecord("k1", "run1", 2, INTENT, "file", 3, 9), chunks(3))
    read = Ledger.open(str(tmp_path / "db"), "idx").get("k1")
    assert read == JobRecord("k1", "run1", 2, INTENT, "file", 3, 9, created_at=recorded.created_at,
                             updated_at=recorded.updated_at, job_name=None, input_file=None, output_file=None,
                             parent=None, generation=0, resolution=None, succeeded=0, failed=0, retried_online=0,
                             dead_lettered=0, error=None)


def test_a_record_is_a_snapshot_that_only_update_changes(ledger):
    record = ledger.record_intent(intent("k1"), [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.state = CREATED
    assert ledger.update("k1", state=CREATED).state == CREATED and record.state == INTENT


@pytest.fixture
def without_items(tmp_path) -> Ledger:
    """A ledger whose items table is gone (dropped by hand, or never written by an older version)."""
    Ledger.open(str(tmp_path / "db"), "idx").db.drop_table("idx" + ITEMS_SUFFIX)
    return Ledger.open(str(tmp_path / "db"), "idx", create=False)


def test_a_ledger_without_its_items_table_reads_empty_and_prunes_nothing(without_items):
    assert without_items.items("k") == []
    assert without_items.covered(["k"]) == {}
    without_items.forget_items(["k"])
    assert without_items.prune() == 0
    assert "idx" + ITEMS_SUFFIX not in set(without_items.db.list_tables().tables)


def test_a_ledger_without_its_items_table_gets_it_back_on_the_next_intent(without_items, tmp_path):
    without_items.record_intent(intent("k1", 2), chunks(2))
    assert [c.id for c in without_items.items("k1")] == ["d0#0", "d1#0"]
    assert [c.id for c in Ledger.open(str(tmp_path / "db"), "idx").items("k1")] == ["d0#0", "d1#0"]


def test_covered_and_forget_items_reach_every_key_past_a_window_of_500(ledger):
    # 500 keys without items first: the job with items is the 501st
    keys = [f"none{i}" for i in range(500)] + ["k"]
    ledger.record_intent(intent("k", 2), chunks(2))
    assert ledger.covered(keys) == {"d0#0": ("h0", "k"), "d1#0": ("h1", "k")}
    ledger.forget_items(keys)
    assert ledger.items("k") == []
