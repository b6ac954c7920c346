import numpy as np
import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import ConfigError, StoreError
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.search import Hit, IndexPolicy, explain_vector_search
from indexflow.tasks.store import VectorStore, rows_from

DIM = 32
WORDS = ["protein", "galaxy", "river", "vaccine", "neuron", "glacier", "enzyme", "comet"]


def corpus(n=400, seed=5):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [
        Chunk(f"doc{i}#0", f"doc{i}", 0, f"a note on the {WORDS[i % len(WORDS)]} number {i}", f"Title {i}", "c.jsonl", 8, f"h{i}")
        for i in range(n)
    ]
    return chunks, vectors


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """400 rows with a vector index forced by a low threshold, plus the full-text index."""
    path = str(tmp_path_factory.mktemp("search"))
    # refine 100 x k=5 re-ranks every one of the 400 rows exactly: the neighbours are exact by
    # construction. At refine 50 a quantized shortlist of random vectors, whose similarities
    # differ by hundredths, once missed a true top-5 (1 run in about 25).
    store = VectorStore.open(path, "idx", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, nprobes=50, refine_factor=100, compact_above_fragments=1))
    chunks, vectors = corpus()
    store.upsert(rows_from(chunks[:200], vectors[:200]))
    store.upsert(rows_from(chunks[200:], vectors[200:]))
    report = store.finalize()
    return store, vectors, report


def test_finalize_builds_vector_and_text_indexes_on_a_big_enough_table(indexed):
    store, _, report = indexed
    assert (report.rows, report.vector_index, report.fts_index) == (400, "created", "created")
    assert (report.fragments_before, report.fragments_after) == (2, 1)
    kinds = {i.columns[0]: i.index_type for i in store.table.list_indices()}
    assert kinds == {"vector": "IvfRq", "text": "FTS", "title": "FTS"}
    vector_index = store.table.index_stats("vector_idx")
    assert (vector_index.index_type, vector_index.distance_type) == ("IVF_RQ", "dot")
    again = store.finalize()
    assert (again.vector_index, again.fts_index) == ("kept", "kept")


def test_a_few_new_fragments_are_folded_into_the_indexes_without_rewriting_the_table(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, compact_above_fragments=3))
    chunks, vectors = corpus(310)
    store.upsert(rows_from(chunks[:250], vectors[:250]))
    assert store.finalize().fts_index == "created"
    files_before = {f.data_files()[0].path for f in store.table.to_lance().get_fragments()}
    store.upsert(rows_from(chunks[250:300], vectors[250:300]))  # an edit: one more fragment
    report = store.finalize()
    assert (report.fragments_before, report.fragments_after, report.rows) == (2, 2, 300)
    files_after = {f.data_files()[0].path for f in store.table.to_lance().get_fragments()}
    assert files_before < files_after  # the first 250 rows were not rewritten
    for name in ("vector_idx", "text_idx", "title_idx"):
        assert store.table.index_stats(name).num_unindexed_rows == 0  # the new rows are indexed
    hits = store.search(None, k=3, text=chunks[280].text)
    assert hits[0].id == chunks[280].id
    for start in (300, 305):  # past the threshold, optimize() compacts (Lance merges the small ones)
        store.upsert(rows_from(chunks[start:start + 5], vectors[start:start + 5]))
    report = store.finalize()
    assert report.fragments_before == 4 and report.fragments_after < 4 and report.rows == 310


def test_without_pylance_finalize_compacts_and_indexes_as_lancedb_alone_can(tmp_path):
    import subprocess
    import sys

    # lancedb does not depend on pylance; a plain `pip install indexflow` has no `lance` module.
    probe = f"""
import importlib.abc, sys

class NoPylance(importlib.abc.MetaPathFinder):  # `import lance` fails as it does without pylance
    def find_spec(self, name, path, target=None):
        if name == "lance" or name.startswith("lance."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NoPylance())
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.search import IndexPolicy
from indexflow.tasks.store import VectorStore, rows_from
from tests.tasks.test_search import corpus
store = VectorStore.open({str(tmp_path)!r}, "idx", Recipe(dimensions={DIM}), policy=IndexPolicy(min_rows=10_000))
chunks, vectors = corpus(60)
store.upsert(rows_from(chunks[:30], vectors[:30]))
store.upsert(rows_from(chunks[30:], vectors[30:]))
first = store.finalize()  # a first build indexes every row: no compaction needed
store.upsert(rows_from(chunks[:1], vectors[:1] * -1))  # an edit
edit = store.finalize()  # without pylance, folding the edit in means optimize(): compaction
print(first.rows, first.fragments_before, first.fragments_after, first.fts_index,
      edit.fragments_before, edit.fragments_after, store.table.index_stats("text_idx").num_unindexed_rows)
"""
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    first_rows, first_before, first_after, fts, edit_before, edit_after, unindexed = out.stdout.split()
    assert (first_rows, first_before, first_after, fts) == ("60", "2", "2", "created")
    assert int(edit_after) < int(edit_before) and unindexed == "0"


def test_small_table_gets_only_the_text_index(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM), policy=IndexPolicy(min_rows=1_000))
    chunks, vectors = corpus(50)
    store.upsert(rows_from(chunks, vectors))
    report = store.finalize()
    assert (report.vector_index, report.fts_index) == ("none", "created")
    assert sorted((i.columns[0], i.index_type) for i in store.table.list_indices()) == [("text", "FTS"), ("title", "FTS")]


def test_vector_search_returns_exact_neighbours_with_cosine_scores(indexed):
    store, vectors, _ = indexed
    for q in (3, 250, 399):
        query = vectors[q] + 0.05 * np.random.default_rng(q).normal(size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        hits = store.search(query, k=5)
        sims = vectors @ query
        expected = np.argsort(-sims)[:5]
        assert [h.id for h in hits] == [f"doc{i}#0" for i in expected]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([h.score for h in hits], sims[expected], atol=1e-3)
        assert hits[0].kind == "cosine"
        assert hits[0].title == f"Title {expected[0]}"


def test_queries_use_the_index_with_its_distance_type(indexed):
    # A query with another distance type than the index silently searches by brute force.
    store, vectors, _ = indexed
    plan = explain_vector_search(store.table, vectors[0], 10, store.policy)
    assert "ANNSubIndex" in plan
    assert "metric=Dot" in plan


def test_hybrid_fuses_both_sides_fetched_to_the_fixed_depth_not_to_k(indexed):
    store, vectors, _ = indexed
    # RRF by hand over each side's own top-100 (HYBRID_DEPTH): what hybrid must return at any k <= 100.
    sides = [[h.id for h in store.search(vectors[11], k=100)], [h.id for h in store.search(None, k=100, text="glacier")]]
    expected: dict[str, float] = {}
    for side in sides:
        for rank, chunk_id in enumerate(side, start=1):
            expected[chunk_id] = expected.get(chunk_id, 0.0) + 1 / (60 + rank)
    best = sorted(expected, key=lambda c: (-expected[c], c))
    for k in (3, 10, 100):
        hits = store.search(vectors[11], k=k, text="glacier", hybrid=True)
        assert [h.id for h in hits] == best[:k]
        np.testing.assert_allclose([h.score for h in hits], [expected[c] for c in best[:k]], rtol=1e-9)
        assert {h.kind for h in hits} == {"rrf"} and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    # doc11 tops the vector side only (1/61); glacier chunks on both sides' top-100 outrank it,
    # which fusing lists cut to k=10 (the old behaviour) missed.
    assert sides[0][0] == "doc11#0" and best[0] != "doc11#0" and "glacier" in hits[0].text
    # Past 100 the next tier (each side's top-200) fills ranks 101-200: every k's top-n is the same.
    longest = [h.id for h in store.search(vectors[11], k=400, text="glacier", hybrid=True)]
    assert len(longest) == len(set(longest)) == 400  # every row, each once
    for k in (10, 100, 150, 250):
        assert [h.id for h in store.search(vectors[11], k=k, text="glacier", hybrid=True)] == longest[:k]


def test_hybrid_weights_lean_the_fusion_to_one_side(indexed):
    store, vectors, _ = indexed
    vector_only = [h.id for h in store.search(vectors[11], k=10)]
    text_only = [h.id for h in store.search(None, k=10, text="glacier")]
    lean = lambda w: [h.id for h in store.search(vectors[11], k=10, text="glacier", hybrid=True, weights=w)]
    assert lean((1, 0)) == vector_only
    assert lean("0,1") == text_only
    plain = lean(None)
    assert plain not in (vector_only, text_only)
    assert lean((5, 5)) == plain  # only the ratio matters
    vector_100 = [h.id for h in store.search(vectors[11], k=100)]
    text_100 = [h.id for h in store.search(None, k=100, text="glacier")]
    for hit in store.search(vectors[11], k=5, text="glacier", hybrid=True, weights=(0.7, 0.3)):
        weighted = sum(w / (60 + side.index(hit.id) + 1) for w, side in ((0.7, vector_100), (0.3, text_100))
                       if hit.id in side)
        assert hit.score == pytest.approx(weighted, rel=1e-9)


def test_text_only_search_uses_bm25(indexed):
    store, _, _ = indexed
    hits = store.search(None, k=5, text="comet")
    assert len(hits) == 5
    assert all("comet" in h.text and h.kind == "bm25" for h in hits)


def test_rows_written_after_finalize_are_found_before_the_next_one(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM), policy=IndexPolicy(min_rows=100))
    chunks, vectors = corpus(150)
    store.upsert(rows_from(chunks[:140], vectors[:140]))
    store.finalize()
    late = Chunk("late#0", "late", 0, "a platypus appears", "", "s", 3, "x")
    store.upsert(rows_from([late], vectors[140:141]))
    assert store.search(vectors[140], k=1)[0].id == "late#0"
    assert [h.id for h in store.search(None, k=3, text="platypus")] == ["late#0"]


def test_search_guards(tmp_path, indexed):
    store, vectors, _ = indexed
    with pytest.raises(ConfigError) as info:
        store.search(np.ones(DIM + 1, dtype=np.float32))
    assert (info.value.got, info.value.expected) == (DIM + 1, DIM)
    with pytest.raises(ConfigError):
        store.search(vectors[0], hybrid=True)
    with pytest.raises(ConfigError):
        store.search(vectors[0], k=0)
    bare = VectorStore.open(str(tmp_path), "bare", Recipe(dimensions=DIM))
    chunks, vectors = corpus(10)
    bare.upsert(rows_from(chunks, vectors))
    with pytest.raises(StoreError) as info:
        bare.search(vectors[0], text="protein", hybrid=True)
    assert info.value.table == "bare"


def test_snippet_cuts_at_a_word_and_flattens_lines():
    hit = Hit(1, 0.9, "cosine", "a#0", "a", 0, "t", "alpha beta\n\ngamma " * 40, "s")
    snippet = hit.snippet(50)
    assert "\n" not in snippet
    assert snippet.endswith(" …")
    assert len(snippet) <= 52
    assert Hit(1, 0.9, "cosine", "a#0", "a", 0, "t", "short", "s").snippet() == "short"


def test_finalize_is_due_only_when_it_has_work(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM), policy=IndexPolicy(min_rows=10_000))
    assert not store.finalize_due()  # an empty table
    chunks, vectors = corpus(40)
    store.upsert(rows_from(chunks[:20], vectors[:20]))
    store.upsert(rows_from(chunks[20:30], vectors[20:30]))
    assert store.finalize_due()  # no full-text index yet
    store.finalize()
    assert not store.finalize_due()  # two fragments, every row indexed: an unchanged re-run does nothing
    store.upsert(rows_from(chunks[30:], vectors[30:]))
    assert store.finalize_due()  # ten rows outside the index
    store.finalize()
    assert not store.finalize_due()


def titled_corpus():
    """Chunks whose titles hold words their texts never use ('xylophone' is in one title only)."""
    chunks, vectors = corpus(40)
    chunks[7] = Chunk("doc7#0", "doc7", 0, "a note on the comet number 7", "Xylophone acoustics", "c.jsonl", 8, "h7")
    return chunks, vectors


def test_a_title_only_word_finds_its_document_through_full_text_search(tmp_path):
    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM), policy=IndexPolicy(min_rows=1_000))
    chunks, vectors = titled_corpus()
    store.upsert(rows_from(chunks, vectors))
    store.finalize()
    assert [h.id for h in store.search(None, k=5, text="xylophone")] == ["doc7#0"]
    hybrid = store.search(vectors[30], k=5, text="xylophones", hybrid=True)  # stemmed, like the text
    assert "doc7#0" in [h.id for h in hybrid]
    assert store.search(None, k=1, text="comet")[0].kind == "bm25"  # text still searched


def test_a_table_indexed_on_text_only_gets_the_title_index_at_the_next_finalize(tmp_path):
    from lancedb.index import FTS

    store = VectorStore.open(str(tmp_path), "idx", Recipe(dimensions=DIM), policy=IndexPolicy(min_rows=1_000))
    chunks, vectors = titled_corpus()
    store.upsert(rows_from(chunks, vectors))
    store.table.create_index("text", config=FTS(), replace=True)  # what finalize built before titles
    assert store.search(None, k=5, text="xylophone") == []  # searched on what it has: no error
    assert store.search(None, k=1, text="comet")[0].kind == "bm25"
    assert store.finalize_due()
    report = store.finalize()
    assert report.fts_index == "created"
    assert sorted(i.name for i in store.table.list_indices()) == ["text_idx", "title_idx"]
    assert [h.id for h in store.search(None, k=5, text="xylophone")] == ["doc7#0"]
    assert not store.finalize_due() and store.finalize().fts_index == "kept"
