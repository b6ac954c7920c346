"""The index policy on real LanceDB tables: its parameters reach queries, retrain and compaction follow their rules."""

import numpy as np
import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import ConfigError
from indexflow.tasks.index_policy import compaction_due, query_params, retrain_due
from indexflow.tasks.index_state import trained_rows
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.search import IndexPolicy, explain_vector_search
from indexflow.tasks.store import VectorStore, rows_from

DIM = 32


def corpus(n, start=0, seed=3):
    rng = np.random.default_rng(seed + start)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(f"d{i}#0", f"d{i}", 0, f"text {i}", "", "s", 2, f"h{i}") for i in range(start, start + n)]
    return chunks, vectors


def add(store, n, start):
    chunks, vectors = corpus(n, start)
    store.upsert(rows_from(chunks, vectors))
    return vectors


def test_the_rule_probes_a_share_of_the_partitions_and_overrides_win():
    assert query_params(1_000_000, 768).nprobes == 25  # 2.5 % of sqrt(1M) = 1000 partitions
    assert query_params(100_000, 768).nprobes == 20  # at least 20
    assert query_params(16_000_000, 768).nprobes == 100
    assert query_params(1_000_000, 768, num_bits=1).refine_factor == 50
    assert query_params(1_000_000, 768).refine_factor == 10
    given = query_params(1_000_000, 768, nprobes=7, refine_factor=0)
    assert (given.nprobes, given.refine_factor) == (7, None)
    assert query_params(400, 768, num_partitions=4, nprobes=50).nprobes == 4  # never more than exist
    with pytest.raises(ConfigError):
        IndexPolicy(retrain_factor=1.0)
    with pytest.raises(ConfigError):
        IndexPolicy(num_bits=3)


def test_the_policys_nprobes_and_refine_reach_the_query_plan(tmp_path):
    store = VectorStore.open(str(tmp_path), "t", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, num_partitions=4, nprobes=3, refine_factor=7))
    vectors = add(store, 300, 0)
    assert store.finalize().vector_index == "created"
    plan = explain_vector_search(store.table, vectors[0], 10, store.policy)
    assert "ANNSubIndex" in plan and "metric=Dot" in plan
    # refine 7 x k 10: the index returns 70 candidates, re-ranked by exact distance (KNNVectorDistance)
    assert "minimum_nprobes=3, maximum_nprobes=Some(3)" in plan and "k=70" in plan and "KNNVectorDistance" in plan
    other = explain_vector_search(store.table, vectors[0], 10, IndexPolicy(min_rows=100, nprobes=2, refine_factor=0))
    assert "minimum_nprobes=2," in other and "k=10," in other and "KNNVectorDistance" not in other, other


def test_a_table_grown_past_the_retrain_factor_is_retrained_at_finalize(tmp_path):
    store = VectorStore.open(str(tmp_path), "t", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, num_partitions=2, retrain_factor=2.0))
    add(store, 200, 0)
    assert store.finalize().vector_index == "created"
    assert trained_rows(store.table) == 200
    add(store, 150, 200)  # 350 < 2 x 200: new rows are folded into the old centroids
    report = store.finalize()
    assert report.vector_index == "kept" and trained_rows(store.table) == 200
    assert store.table.index_stats("vector_idx").num_unindexed_rows == 0
    add(store, 50, 350)  # 400 = 2 x 200
    assert store.finalize_due()
    report = store.finalize()
    # compacted first (how far Lance merges fragments is its own business; that it ran is the rule)
    assert report.vector_index == "retrained" and report.fragments_after < report.fragments_before
    assert trained_rows(store.table) == 400
    assert store.table.index_stats("vector_idx").num_indexed_rows == 400
    assert not store.finalize_due()


def test_compaction_happens_exactly_when_fragments_pass_the_threshold(tmp_path):
    assert not compaction_due(3, 3, above_fragments=3) and compaction_due(4, 0, above_fragments=3)
    store = VectorStore.open(str(tmp_path), "t", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, compact_above_fragments=3, retrain_factor=100))
    add(store, 150, 0)
    store.finalize()
    for start in (150, 160):
        add(store, 10, start)
    report = store.finalize()
    assert (report.fragments_before, report.fragments_after) == (3, 3)  # at the threshold: folded only
    add(store, 10, 170)
    report = store.finalize()
    assert report.fragments_before == 4 and report.fragments_after < 4  # past it: compacted


def test_queries_scan_a_bounded_unindexed_tail_then_only_indexed_rows(tmp_path):
    store = VectorStore.open(str(tmp_path), "t", Recipe(dimensions=DIM),
                             policy=IndexPolicy(min_rows=100, refine_factor=100, unindexed_tail_rows=50,
                                                retrain_factor=100))
    add(store, 200, 0)
    store.finalize()
    tail = add(store, 40, 200)  # within the tail: scanned exactly, found at once
    assert store.search(tail[5], k=1)[0].id == "d205#0"
    more = add(store, 40, 240)  # 80 unindexed rows > 50: a run is writing; indexed rows only
    assert all(int(h.id[1:-2]) < 200 for h in store.search(more[3], k=5))
    store.finalize()  # the run's rows are committed and folded in: found
    assert store.search(more[3], k=1)[0].id == "d243#0"
    assert retrain_due(400, 200, 2.0) and not retrain_due(399, 200, 2.0) and not retrain_due(400, None, 2.0)


def test_settings_set_the_policy_a_run_opens_its_table_with(tmp_path):
    from indexflow.tasks.settings import Settings
    from indexflow.tasks.table import open_store

    settings = Settings(corpus=tmp_path, db_uri=str(tmp_path / "db"), dimensions=128, index_nprobes=7, index_bits=1)
    store = open_store(settings)
    assert store.policy.nprobes == 7
    assert store.policy.params(1_000_000, 768).refine_factor == 50  # the 1-bit rule
    assert store.policy.config(1_000_000, 768).num_bits == 1
