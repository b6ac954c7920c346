"""The batch-job ledger: durable rows beside the index, read fresh by every handle."""

from __future__ import annotations

import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import StoreError
from indexflow.tasks.ledger import (
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
