import pickle
import threading
from dataclasses import FrozenInstanceError
from datetime import datetime, timezone

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.dead_letters import DEAD_LETTER_SUFFIX, FailedItem
from indexflow.tasks.errors import RecipeMismatchError, StoreError
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.search import IndexPolicy
from indexflow.tasks.store import (
    METADATA_TYPE,
    RECIPE_KEY,
    ChunkKey,
    StoreStats,
    VectorStore,
    chunk_schema,
    rows_from,
)
from indexflow.tasks.writer import GroupWriter

DIM = 16
RECIPE = Recipe(dimensions=DIM)


def make_chunks(n, doc_prefix="d", start=0, text="some text"):
    return [
        Chunk(f"{doc_prefix}{i}#0", f"{doc_prefix}{i}", 0, f"{text} {i}", f"title {i}", "src.jsonl", 3, f"h{i}")
        for i in range(start, start + n)
    ]


def unit(n, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def all_ids(store):
    return store.table.search().select(["id"]).to_arrow().column("id").to_pylist()


@pytest.fixture
def store(tmp_path):
    return VectorStore.open(str(tmp_path), "idx", RECIPE)


# -- schema, key and recipe ------------------------------------------------------------------



def at_once(n: int, action) -> list[Exception]:
    """Run `action` in n threads released together; the exceptions they raised."""
    errors: list[Exception] = []
    barrier = threading.Barrier(n)

    def run():
        barrier.wait()
        try:
            action()
        except Exception as exc:  # returned for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors

def test_schema_key_and_recipe_survive_upsert_delete_optimize_and_indexes(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", RECIPE, policy=IndexPolicy(min_rows=50))
    chunks = make_chunks(120)
    store.upsert(rows_from(chunks, unit(120)))
    store.upsert(rows_from(chunks[:10], unit(10, seed=1)))
    store.delete_chunks(["d0#0"])
    report = store.finalize()
    assert (report.vector_index, report.fts_index) == ("created", "created")

    reopened = lancedb.connect(str(tmp_path)).open_table("idx")
    schema = reopened.schema
    assert Recipe.from_json(schema.metadata[RECIPE_KEY.encode()].decode()) == RECIPE
    assert schema.field("id").nullable is False
    assert b"lance-schema:unenforced-primary-key:position" in schema.field("id").metadata
    assert schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert schema.field("ordinal").type == pa.int32()
    assert schema.field("indexed_at").type == pa.timestamp("us", tz="UTC")
    assert schema.names == [
        "id", "doc_id", "ordinal", "text", "title", "source", "content_hash", "vector", "indexed_at", "metadata"
    ]
    assert reopened.count_rows() == 119


def test_writer_open_declares_a_missing_primary_key(tmp_path):
    schema = chunk_schema(RECIPE)
    bare = pa.schema([f.remove_metadata() for f in schema], metadata=schema.metadata)
    lancedb.connect(str(tmp_path)).create_table("old", schema=bare)
    VectorStore.open(str(tmp_path), "old")  # a reader leaves the table alone
    assert not lancedb.connect(str(tmp_path)).open_table("old").schema.field("id").metadata
    VectorStore.open(str(tmp_path), "old", RECIPE)
    field = lancedb.connect(str(tmp_path)).open_table("old").schema.field("id")
    assert b"lance-schema:unenforced-primary-key:position" in field.metadata


def test_other_recipe_is_refused_with_facts(tmp_path):
    VectorStore.open(str(tmp_path), "idx", RECIPE)
    wanted = Recipe(dimensions=DIM, send_title=False)
    with pytest.raises(RecipeMismatchError) as info:
        VectorStore.open(str(tmp_path), "idx", wanted)
    err = pickle.loads(pickle.dumps(info.value))
    assert err.table == "idx"
    assert Recipe.from_json(err.stored) == RECIPE
    assert Recipe.from_json(err.wanted) == wanted
    assert "--rebuild" in str(err)


def test_table_without_recipe_is_refused(tmp_path):
    lancedb.connect(str(tmp_path)).create_table("foreign", schema=pa.schema([pa.field("id", pa.string())]))
    with pytest.raises(RecipeMismatchError) as info:
        VectorStore.open(str(tmp_path), "foreign", RECIPE)
    assert info.value.stored is None


def test_rebuild_drops_rows_and_dead_letters_and_stores_new_recipe(tmp_path, store):
    store.upsert(rows_from(make_chunks(5), unit(5)))
    store.record_failures([FailedItem.from_chunk(make_chunks(1, "x")[0], "400 bad", 1)])
    new = Recipe(dimensions=DIM * 2)
    rebuilt = VectorStore.open(str(tmp_path), "idx", new, rebuild=True)
    assert rebuilt.count_rows() == 0
    assert rebuilt.dead_letters() == []
    assert VectorStore.open(str(tmp_path), "idx").recipe == new


def test_query_open_adopts_recipe_and_missing_table_is_an_error(tmp_path, store):
    assert VectorStore.open(str(tmp_path), "idx").recipe == RECIPE
    with pytest.raises(StoreError) as info:
        VectorStore.open(str(tmp_path), "nope", RECIPE, create=False)
    assert info.value.table == "nope"


# -- the metadata column and its migration ----------------------------------------------------

# The index table's schema before the `metadata` column (indexflow at commit 12d4b21), spelled out
# rather than derived from the current one, so the migration is tested against what was shipped.
OLD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"lance-schema:unenforced-primary-key:position": "1"}),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int32(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source", pa.string()),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False),
        pa.field("indexed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={RECIPE_KEY: RECIPE.to_json()},
)


def metadata_by_id(table) -> dict[str, dict]:
    rows = table.search().select(["id", "metadata"]).to_arrow().to_pylist()
    return {row["id"]: row["metadata"] for row in rows}


def expected_metadata(chunks) -> dict[str, dict]:
    return {
        c.id: {"id": c.id, "doc_id": c.doc_id, "ordinal": c.ordinal, "title": c.title, "source": c.source}
        for c in chunks
    }


def old_table(tmp_path, chunks, vectors):
    """A table as indexflow wrote it before the metadata column: rows, key, recipe, full-text index."""
    rows = pa.Table.from_batches([rows_from(chunks, vectors)]).drop_columns(["metadata"])
    lancedb.connect(str(tmp_path)).create_table("old", data=rows.cast(OLD_SCHEMA.remove_metadata()), schema=OLD_SCHEMA)
    VectorStore.open(str(tmp_path), "old").finalize()  # the query path's open: reads, never migrates
    table = current(tmp_path, "old")
    assert table.schema == OLD_SCHEMA
    return table


def current(tmp_path, name):
    """A fresh handle (a cached one would show an old version)."""
    return lancedb.connect(str(tmp_path)).open_table(name)


def test_metadata_column_repeats_the_chunk_fields_and_follows_updates(store):
    chunks = make_chunks(5) + [Chunk("n#0", "n", 0, "no title", None, "n.md", 1, "hn")]
    store.upsert(rows_from(chunks, unit(6)))
    assert store.table.schema.field("metadata").type == METADATA_TYPE
    assert metadata_by_id(store.table) == expected_metadata(chunks)
    renamed = Chunk("d2#0", "d2", 0, "some text 2", "a new title", "moved.md", 3, "h2b")
    store.upsert(rows_from([renamed], unit(1, seed=5)))
    assert metadata_by_id(store.table)["d2#0"] == expected_metadata([renamed])["d2#0"]


def test_writer_open_adds_the_metadata_column_to_an_old_table_once(tmp_path):
    chunks, vectors = make_chunks(40), unit(40)
    table = old_table(tmp_path, chunks, vectors)
    before = table.version

    VectorStore.open(str(tmp_path), "old", RECIPE, create=False)  # `plan`: leaves it alone too
    assert "metadata" not in current(tmp_path, "old").schema.names
    assert current(tmp_path, "old").version == before

    store = VectorStore.open(str(tmp_path), "old", RECIPE)
    assert store.table.version == before + 1  # one commit
    fresh = VectorStore.open(str(tmp_path / "new"), "new", RECIPE).table.schema
    assert store.table.schema == fresh  # names, types, key, recipe: as if created today
    assert metadata_by_id(store.table) == expected_metadata(chunks)
    got = store.table.search().select(["id", "vector"]).to_arrow().to_pylist()
    np.testing.assert_array_equal(
        np.array([r["vector"] for r in sorted(got, key=lambda r: int(r["id"][1:-2]))]), vectors
    )
    assert "text" in {i.columns[0] for i in store.table.list_indices()}  # the FTS index survives

    again = VectorStore.open(str(tmp_path), "old", RECIPE)
    assert again.table.version == before + 1  # idempotent: no second commit

    changed = Chunk("d7#0", "d7", 0, "edited", "retitled", "src.jsonl", 2, "h7b")
    assert again.upsert(rows_from([changed] + make_chunks(1, start=40), unit(2, seed=3))) == 2
    assert metadata_by_id(again.table)["d7#0"]["title"] == "retitled"
    assert metadata_by_id(again.table)["d40#0"] == expected_metadata(make_chunks(1, start=40))["d40#0"]
    assert again.count_rows() == 41


def test_writers_opening_an_old_table_at_once_migrate_it_once(tmp_path):
    old_table(tmp_path, make_chunks(10), unit(10))
    assert at_once(4, lambda: VectorStore.open(str(tmp_path), "old", RECIPE)) == []
    schema = current(tmp_path, "old").schema
    assert schema.names.count("metadata") == 1 and schema.field("metadata").type == METADATA_TYPE


def test_a_metadata_column_of_another_shape_is_refused(tmp_path):
    schema = OLD_SCHEMA.append(pa.field("metadata", pa.struct([pa.field("page", pa.int32())])))
    lancedb.connect(str(tmp_path)).create_table("odd", schema=schema)
    with pytest.raises(StoreError) as info:
        VectorStore.open(str(tmp_path), "odd", RECIPE)
    assert (info.value.table, info.value.wanted) == ("odd", str(METADATA_TYPE))


# -- upserts -----------------------------------------------------------------------------------


def test_upsert_is_idempotent_and_replaces_by_id(store):
    chunks = make_chunks(30)
    assert store.upsert(rows_from(chunks, unit(30))) == 30
    assert store.upsert(rows_from(chunks, unit(30))) == 30
    changed = [Chunk(c.id, c.doc_id, 0, "new text", c.title, c.source, 2, "new-hash") for c in chunks[:3]]
    store.upsert(rows_from(changed, unit(3, seed=9)))
    ids = all_ids(store)
    assert len(ids) == len(set(ids)) == 30
    hashes = store.existing_hashes()
    assert [hashes[c.id] for c in chunks[:4]] == ["new-hash", "new-hash", "new-hash", "h3"]


def test_upsert_refuses_repeated_ids_and_wrong_dimensions(store):
    chunks = make_chunks(2)
    with pytest.raises(StoreError) as info:
        store.upsert(rows_from([chunks[0], chunks[0]], unit(2)))
    assert info.value.rows == 2
    with pytest.raises(StoreError) as info:
        store.upsert(rows_from(chunks, np.ones((2, DIM + 1), dtype=np.float32)))
    assert info.value.wanted == str(pa.list_(pa.float32(), DIM))
    with pytest.raises(StoreError) as info:
        rows_from(chunks, unit(3))
    assert info.value.chunks == 2
    assert store.count_rows() == 0


def test_concurrent_upserts_of_the_same_new_ids_leave_no_duplicates(tmp_path, store):
    # The lancedb 0.40 trap: without the declared primary key this inserts hundreds of duplicates.
    chunks = make_chunks(1_200)
    vectors = unit(1_200)
    handles = [VectorStore.open(str(tmp_path), "idx", RECIPE) for _ in range(3)]
    errors = []

    def write(handle):
        try:
            for start in range(0, 1_200, 200):
                handle.upsert(rows_from(chunks[start : start + 200], vectors[start : start + 200]))
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = all_ids(VectorStore.open(str(tmp_path), "idx", RECIPE))
    assert len(ids) == 1_200
    assert len(set(ids)) == 1_200


# -- reading what is indexed -----------------------------------------------------------------------


def test_existing_hashes_reads_every_batch_of_a_table_larger_than_one_scan_batch(store):
    chunks = make_chunks(20_000)
    for start in range(0, 20_000, 5_000):
        store.upsert(rows_from(chunks[start:start + 5_000], unit(5_000, seed=start)))
    assert store.existing_hashes() == {f"d{i}#0": f"h{i}" for i in range(20_000)}
    wanted = [f"d{i}" for i in range(0, 20_000, 7)]  # more ids than one IN (...) filter holds
    assert store.existing_hashes(wanted) == {f"d{i}#0": f"h{i}" for i in range(0, 20_000, 7)}


def test_existing_hashes_doc_ids_and_keys_by_document(store):
    store.upsert(rows_from(make_chunks(4) + make_chunks(2, doc_prefix="e"), unit(6)))
    assert store.doc_ids() == {"d0", "d1", "d2", "d3", "e0", "e1"}
    assert store.existing_hashes(["d1", "e0", "missing"]) == {"d1#0": "h1", "e0#0": "h0"}
    assert len(store.existing_hashes()) == 6
    keys = sorted(store.iter_chunk_keys(["d2"]))
    assert [(k.id, k.doc_id, k.content_hash) for k in keys] == [("d2#0", "d2", "h2")]


# -- deletes -------------------------------------------------------------------------------------


def test_delete_ids_with_quotes_and_sql_looking_text(store):
    odd = ["it's#0", 'say "hi"#0', "back\\slash#0", "x' OR '1'='1#0", "ünï%_#0"]
    chunks = [Chunk(i, i.rsplit("#", 1)[0], 0, "t", "", "s", 1, "h") for i in odd] + make_chunks(3)
    store.upsert(rows_from(chunks, unit(len(chunks))))
    assert store.delete_chunks(odd[:4]) == 4
    assert sorted(all_ids(store)) == sorted(["ünï%_#0", "d0#0", "d1#0", "d2#0"])
    assert store.delete_docs(["ünï%_", "d1"]) == 2
    assert sorted(all_ids(store)) == ["d0#0", "d2#0"]


def test_delete_in_batches_larger_than_one_filter(store, monkeypatch):
    import indexflow.tasks.lance_tables as lance_tables

    monkeypatch.setattr(lance_tables, "ID_BATCH", 7)
    store.upsert(rows_from(make_chunks(30), unit(30)))
    assert store.delete_chunks(c.id for c in make_chunks(20)) == 20
    assert store.count_rows() == 10


# -- group writer ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_group_writer_commits_by_size(store):
    writer = GroupWriter(store, group_rows=10, group_seconds=60, clock=FakeClock())
    chunks, vectors = make_chunks(25), unit(25)
    committed = [writer.add(chunks[i : i + 5], vectors[i : i + 5]) for i in range(0, 25, 5)]
    assert committed == [0, 10, 0, 10, 0]
    assert store.count_rows() == 20
    assert writer.buffered == 5
    assert writer.flush() == 5
    assert (store.count_rows(), writer.commits, writer.committed_rows) == (25, 3, 25)


def test_group_writer_commits_by_age_of_first_buffered_row(store):
    clock = FakeClock()
    writer = GroupWriter(store, group_rows=1_000, group_seconds=5, clock=clock)
    chunks, vectors = make_chunks(6), unit(6)
    assert writer.add(chunks[:2], vectors[:2]) == 0
    clock.now += 4.9
    assert writer.add(chunks[2:4], vectors[2:4]) == 0
    assert writer.commit_if_due() == 0
    clock.now += 0.1
    assert writer.commit_if_due() == 4
    assert store.count_rows() == 4
    clock.now += 4.0
    assert writer.add(chunks[4:], vectors[4:]) == 0  # the clock restarts with the next buffered row


def test_group_writer_loses_only_the_group_in_flight(tmp_path, store):
    writer = GroupWriter(store, group_rows=10, clock=FakeClock())
    chunks, vectors = make_chunks(14), unit(14)
    writer.add(chunks, vectors)
    writer.add(make_chunks(3, doc_prefix="late"), unit(3))
    # no flush: the process "crashes" here
    fresh = VectorStore.open(str(tmp_path), "idx", RECIPE)
    assert fresh.count_rows() == 14


def test_group_writer_deletes_stale_chunks_after_writing_and_dedups(store):
    old = [Chunk(f"doc#{k}", "doc", k, f"old {k}", "", "s", 1, f"old{k}") for k in range(4)]
    store.upsert(rows_from(old, unit(4)))
    writer = GroupWriter(store, group_rows=100, clock=FakeClock())
    new = [Chunk(f"doc#{k}", "doc", k, f"new {k}", "", "s", 1, f"new{k}") for k in range(2)]
    writer.delete(["doc#2", "doc#3"])
    writer.add(new, unit(2, seed=3))
    writer.add(new[:1], unit(1, seed=4))  # resent after a retry: the later vector wins
    assert store.existing_hashes() == {f"doc#{k}": f"old{k}" for k in range(4)}
    assert writer.flush() == 2
    assert store.existing_hashes() == {"doc#0": "new0", "doc#1": "new1"}
    assert writer.deleted_rows == 2
    row = store.table.search().where("id = 'doc#0'").select(["vector"]).to_arrow().to_pylist()[0]
    np.testing.assert_allclose(row["vector"], unit(1, seed=4)[0])


def test_group_writer_commits_replacements_before_it_deletes_stale_rows(tmp_path, store):
    # A shrunk document: 4 chunks become 2. Each commit of the flush is a table version a crash
    # could leave behind; in none of them may the stale rows be gone before the new rows are in.
    old = [Chunk(f"doc#{k}", "doc", k, f"old {k}", "", "s", 1, f"old{k}") for k in range(4)]
    store.upsert(rows_from(old, unit(4)))
    start = store.table.version
    writer = GroupWriter(store, group_rows=100, clock=FakeClock())
    writer.delete(["doc#2", "doc#3"])
    writer.add([Chunk(f"doc#{k}", "doc", k, f"new {k}", "", "s", 1, f"new{k}") for k in range(2)], unit(2, seed=3))
    writer.flush()

    snapshot = lancedb.connect(str(tmp_path)).open_table("idx")
    states = []
    for version in range(start + 1, store.table.version + 1):
        snapshot.checkout(version)
        data = snapshot.to_arrow()
        states.append(dict(zip(data.column("id").to_pylist(), data.column("content_hash").to_pylist())))
    assert len(states) >= 2, "the rows and the deletes are separate commits"
    replaced = {"doc#0": "new0", "doc#1": "new1"}
    for version, state in enumerate(states, start + 1):
        if "doc#2" not in state or "doc#3" not in state:
            assert replaced.items() <= state.items(), f"version {version} lost stale rows before their replacements: {state}"
    assert states[0] == replaced | {"doc#2": "old2", "doc#3": "old3"}, "the first commit writes the replacements"
    assert states[-1] == replaced


def test_group_writer_clears_dead_letters_of_indexed_chunks(store):
    chunks = make_chunks(3)
    store.record_failures([FailedItem.from_chunk(c, "503", 8) for c in chunks])
    writer = GroupWriter(store, group_rows=100)
    writer.add(chunks[:2], unit(2))
    writer.flush()
    assert [d.chunk_id for d in store.dead_letters()] == ["d2#0"]


# -- dead letters ----------------------------------------------------------------------------------


def test_dead_letters_round_trip_and_replace_by_chunk_id(tmp_path, store):
    chunk = Chunk("it's#3", "it's", 3, "bad text", "T", "a.md", 9, "hh")
    first = FailedItem.from_chunk(chunk, "400 INVALID_ARGUMENT", 1, datetime(2025, 1, 2, 3, 4, 5, 678901, timezone.utc))
    other = FailedItem.from_chunk(make_chunks(1)[0], "timeout", 8, datetime(2025, 1, 1, tzinfo=timezone.utc))
    assert store.record_failures([first, other]) == 2
    again = FailedItem.from_chunk(chunk, "400 again", 2, datetime(2025, 1, 3, tzinfo=timezone.utc))
    store.record_failures([again])
    items = VectorStore.open(str(tmp_path), "idx", RECIPE).dead_letters()
    assert items == [other, again]
    assert items[1].to_chunk() == Chunk("it's#3", "it's", 3, "bad text", "T", "a.md", 0, "hh")
    assert lancedb.connect(str(tmp_path)).open_table("idx" + DEAD_LETTER_SUFFIX).count_rows() == 2
    assert store.clear_dead_letters(["it's#3"]) == 1
    assert [d.chunk_id for d in store.dead_letters()] == ["d0#0"]
    assert store.stats().dead_letters == 1


def test_dead_letters_accept_the_batchers_failure_records(store):
    from indexflow.tasks.embed_options import EmbedFailure

    chunk = make_chunks(1)[0]
    when = datetime(2025, 5, 5, tzinfo=timezone.utc)
    store.record_failures([EmbedFailure(chunk, "400 bad text", "BadRequestError", 3, when)])
    assert store.dead_letters() == [FailedItem.from_chunk(chunk, "400 bad text", 3, when, "BadRequestError")]


def test_no_dead_letter_table_until_needed(tmp_path, store):
    assert store.dead_letters() == []
    assert store.clear_dead_letters(["x"]) == 0
    assert not any(name.endswith(DEAD_LETTER_SUFFIX) for name in lancedb.connect(str(tmp_path)).list_tables().tables)


# -- exact schemas, reads that see every commit, and the edges of open ---------------------------

PK = {"lance-schema:unenforced-primary-key:position": "1"}
CHUNK_COLUMNS = [
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("ordinal", pa.int32(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("title", pa.string()),
    pa.field("source", pa.string()),
    pa.field("content_hash", pa.string(), nullable=False),
]


def test_index_and_dead_letter_tables_have_exactly_the_documented_schemas(tmp_path, store):
    metadata = pa.struct([pa.field("id", pa.string()), pa.field("doc_id", pa.string()),
                          pa.field("ordinal", pa.int32()), pa.field("title", pa.string()),
                          pa.field("source", pa.string())])
    index = pa.schema(
        [pa.field("id", pa.string(), nullable=False, metadata=PK), *CHUNK_COLUMNS,
         pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False),
         pa.field("indexed_at", pa.timestamp("us", tz="UTC"), nullable=False),
         pa.field("metadata", metadata)],
        metadata={RECIPE_KEY: RECIPE.to_json()},
    )
    dead = pa.schema(
        [pa.field("chunk_id", pa.string(), nullable=False, metadata=PK), *CHUNK_COLUMNS,
         pa.field("error", pa.string(), nullable=False),
         pa.field("attempts", pa.int32(), nullable=False),
         pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
         pa.field("error_type", pa.string())],
    )
    store.record_failures([FailedItem.from_chunk(make_chunks(1)[0], "400 bad", 1)])
    db = lancedb.connect(str(tmp_path))
    for name, want in (("idx", index), ("idx" + DEAD_LETTER_SUFFIX, dead)):
        got = db.open_table(name).schema
        assert got.equals(want, check_metadata=True), f"{name}:\n{got}\n!=\n{want}"
        assert [f.nullable for f in got] == [f.nullable for f in want]
        assert [f.metadata for f in got] == [f.metadata for f in want]


def test_a_second_handle_sees_a_commit_at_once(tmp_path, store):
    # Two processes on one table (a run and a query, two workers): reads never lag behind commits.
    other = VectorStore.open(str(tmp_path), "idx", RECIPE)
    assert other.count_rows() == 0
    store.upsert(rows_from(make_chunks(3), unit(3)))
    assert other.count_rows() == 3
    assert other.existing_hashes() == {"d0#0": "h0", "d1#0": "h1", "d2#0": "h2"}


def test_rebuild_of_a_table_that_does_not_exist_yet_creates_it(tmp_path):
    store = VectorStore.open(str(tmp_path), "fresh", RECIPE, rebuild=True)
    assert store.count_rows() == 0 and store.recipe == RECIPE


def test_a_file_uri_is_a_local_database_a_read_never_creates(tmp_path):
    from indexflow.tasks.errors import TableNotFoundError
    from indexflow.tasks.lance_tables import local_path

    missing = tmp_path / "no-such-db"
    assert local_path(f"file://{missing}") == missing
    assert local_path(str(missing)) == missing
    assert local_path("s3://bucket/db") is None
    with pytest.raises(TableNotFoundError) as info:
        VectorStore.open(f"file://{missing}", "idx", RECIPE, create=False)
    assert "no such directory" in str(info.value) and info.value.uri == f"file://{missing}"
    assert not missing.exists()


def test_a_foreign_table_is_refused_with_what_it_holds_and_what_the_run_wants(tmp_path):
    lancedb.connect(str(tmp_path)).create_table("foreign", schema=pa.schema([pa.field("id", pa.string())]))
    with pytest.raises(RecipeMismatchError) as info:
        VectorStore.open(str(tmp_path), "foreign", RECIPE)
    assert str(info.value) == (
        f"table 'foreign' in {tmp_path} was built with recipe (none: not an indexflow table), "
        f"this run wants {RECIPE.to_json()}; vectors from two recipes must not mix: "
        "index into a new table name (--table) or pass --rebuild to re-embed everything"
    )
    with pytest.raises(RecipeMismatchError) as info:
        VectorStore.open(str(tmp_path), "foreign")
    assert "this run wants (any);" in str(info.value) and info.value.wanted is None


@pytest.mark.parametrize("stored", ["{not json", '{"dimensions": 16, "from_a_later_version": 1}'])
def test_a_recipe_this_version_cannot_read_is_a_mismatch_never_a_guess(tmp_path, stored):
    schema = chunk_schema(RECIPE)
    lancedb.connect(str(tmp_path)).create_table("later", schema=schema.with_metadata({RECIPE_KEY: stored}))
    with pytest.raises(RecipeMismatchError) as info:
        VectorStore.open(str(tmp_path), "later", RECIPE)
    assert info.value.stored == stored


def test_empty_writes_commit_nothing(store):
    version = store.table.version
    assert store.upsert(rows_from([], np.zeros((0, DIM), dtype=np.float32))) == 0
    assert store.record_failures([]) == 0
    assert store.table.version == version
    assert store.dead_letters() == []


def test_replacing_a_dead_letter_counts_one_row_written(store):
    chunk = make_chunks(1)[0]
    assert store.record_failures([FailedItem.from_chunk(chunk, "503", 1)]) == 1
    assert store.record_failures([FailedItem.from_chunk(chunk, "503 again", 2)]) == 1
    assert [(d.error, d.attempts) for d in store.dead_letters()] == [("503 again", 2)]


def test_reading_counting_and_stats_never_create_the_dead_letter_table(tmp_path, store):
    assert store.count_dead_letters() == 0
    assert store.stats() == StoreStats(table="idx", rows=0, fragments=0, small_fragments=0, dead_letters=0,
                                       indexes=(), version=1)
    assert store.clear_dead_letters(["x"]) == 0 and store.dead_letters() == []
    assert lancedb.connect(str(tmp_path)).list_tables().tables == ["idx"]


def test_records_are_immutable_and_hashable(store):
    item = FailedItem.from_chunk(make_chunks(1)[0], "503", 1, datetime(2025, 1, 1, tzinfo=timezone.utc))
    key = ChunkKey("d0#0", "d0", "h0")
    stats = store.stats()
    for record, name in ((item, "error"), (key, "content_hash"), (stats, "rows")):
        with pytest.raises(FrozenInstanceError):
            setattr(record, name, None)
    assert len({item, item, key, key, stats}) == 3


def test_search_defaults_to_the_10_nearest_by_vector_only(store):
    vectors = unit(12)
    store.upsert(rows_from(make_chunks(12), vectors))
    hits = store.search(vectors[3])
    assert len(hits) == 10
    assert hits[0].id == "d3#0"


def test_finalize_keeps_the_indexes_it_built_unless_asked_to_rebuild(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", RECIPE, policy=IndexPolicy(min_rows=50))
    store.upsert(rows_from(make_chunks(60), unit(60)))
    first = store.finalize()
    assert (first.vector_index, first.fts_index) == ("created", "created")
    again = store.finalize()
    assert (again.vector_index, again.fts_index) == ("kept", "kept")
    rebuilt = store.finalize(rebuild_indexes=True)
    assert (rebuilt.vector_index, rebuilt.fts_index) == ("retrained", "created")


class RacingConnection:
    """A real connection to `path`; another writer creates `name` right after this one found it missing."""

    def __init__(self, path, name, schema):
        self._db, self._path, self._name, self._schema = lancedb.connect(path), path, name, schema
        self.raced = False

    def open_table(self, name):
        try:
            return self._db.open_table(name)
        except ValueError:
            if not self.raced and name == self._name:
                self.raced = True
                lancedb.connect(self._path).create_table(name, schema=self._schema)
            raise

    def __getattr__(self, attr):
        return getattr(self._db, attr)


def test_a_table_another_writer_creates_first_is_opened_not_refused(tmp_path):
    from indexflow.tasks.lance_tables import open_or_create

    db = RacingConnection(str(tmp_path), "idx", chunk_schema(RECIPE))
    table = open_or_create(db, "idx", chunk_schema(RECIPE), "id")
    assert db.raced and table.count_rows() == 0
    assert table.schema == chunk_schema(RECIPE)


def test_writers_opening_a_new_table_at_once_all_get_it(tmp_path):
    # Two first runs at once: create_table then fails with "already exists" or, when both commits
    # race, Lance's "retryable commit conflict"; either way the table is the other writer's.
    for trial in range(3):
        def open_writer(trial=trial):
            VectorStore.open(str(tmp_path / str(trial)), "idx", RECIPE).record_failures(
                [FailedItem.from_chunk(make_chunks(1)[0], "503", 1)])

        assert at_once(6, open_writer) == []
        assert VectorStore.open(str(tmp_path / str(trial)), "idx", RECIPE).count_dead_letters() == 1


class ConflictingTable:
    """A real table whose next `conflicts` migrations lose to another writer's commit, as Lance reports it."""

    def __init__(self, table, conflicts):
        self._table, self.left, self.attempts = table, conflicts, 0

    def add_columns(self, columns):
        self.attempts += 1
        if self.left:
            self.left -= 1
            raise RuntimeError("lance error: Retryable commit conflict for version 3: preempted. Please retry.")
        return self._table.add_columns(columns)

    def __getattr__(self, attr):
        return getattr(self._table, attr)


@pytest.mark.parametrize(("conflicts", "migrated"), [(4, True), (5, False)])
def test_a_migration_outlasts_four_conflicting_commits_and_gives_up_at_the_fifth(tmp_path, conflicts, migrated):
    from indexflow.tasks.lance_tables import ensure_metadata

    table = ConflictingTable(old_table(tmp_path, make_chunks(3), unit(3)), conflicts)
    if migrated:
        ensure_metadata(table)
        assert metadata_by_id(current(tmp_path, "old")) == expected_metadata(make_chunks(3))
    else:
        with pytest.raises(RuntimeError, match="commit conflict"):
            ensure_metadata(table)
        assert "metadata" not in current(tmp_path, "old").schema.names
    assert table.attempts == 5


def test_deleting_fewer_ids_than_one_filter_holds_is_one_commit(store):
    # ID_BATCH ids go into one `IN (...)` filter: a run's stale ids are one commit, not one per id.
    store.upsert(rows_from(make_chunks(30), unit(30)))
    version = store.table.version
    assert store.delete_chunks(c.id for c in make_chunks(20)) == 20
    assert store.table.version == version + 1
    assert store.delete_docs(["d20", "d21", "d22"]) == 3
    assert store.table.version == version + 2
