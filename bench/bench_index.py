"""Which vector index, if any, pays at indexflow's table sizes: build time, recall@10 vs exact, p50 latency.

Data (768-dim, unit length, distance "dot", as the product stores them):
  scifact   the 5,183 SciFact documents embedded with the emulator's lexical embedding, queried with
            300 SciFact queries — the size of the project's end-to-end test;
  sentences the same corpus split into sentences plus the documents (~50k rows), same queries;
  clustered synthetic Gaussian clusters in a 64-dim subspace plus noise (structure like real
            embeddings, which the lexical emulator vectors lack), queries are perturbed rows.
Every search goes through `tasks.search.search_table`, the product's query path.

Run: .venv/bin/python bench/bench_index.py [--data scifact,sentences,clustered] [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lancedb.index import IvfPq, IvfRq, IvfSq  # noqa: E402

from indexflow.tasks.chunk import Chunk  # noqa: E402
from indexflow.tasks.normalize import l2_normalize  # noqa: E402
from indexflow.tasks.recipe import Recipe  # noqa: E402
from indexflow.tasks.search import IndexPolicy, search_table  # noqa: E402
from indexflow.tasks.store import VectorStore, rows_from  # noqa: E402

DIM = 768
K = 10
from tests.datasets import scifact_dir  # noqa: E402

SCIFACT = scifact_dir()

# (label, index config, [(nprobes, refine_factor), ...])
CANDIDATES = [
    ("IVF_RQ", IvfRq(distance_type="dot"), [(10, 10), (20, 20), (50, 20), (50, 50)]),
    ("IVF_SQ", IvfSq(distance_type="dot"), [(10, None), (20, None), (20, 5), (50, 5)]),
    ("IVF_PQ", IvfPq(distance_type="dot"), [(20, None), (20, 50)]),
]


def _scifact_texts() -> tuple[list[dict], list[str]]:
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()][:300]
    return docs, queries


def _emulator_vectors(texts: list[str], titles: list[str] | None = None) -> np.ndarray:
    from indexflow.emulator.embedding import embed_texts

    return l2_normalize(embed_texts(texts, DIM, titles=titles), expected_dim=DIM)


def data_scifact() -> tuple[list[str], np.ndarray, np.ndarray]:
    docs, queries = _scifact_texts()
    vectors = _emulator_vectors([d["text"] for d in docs], [d["title"] for d in docs])
    return [d["text"] for d in docs], vectors, _emulator_vectors(queries)


def data_sentences() -> tuple[list[str], np.ndarray, np.ndarray]:
    docs, queries = _scifact_texts()
    texts = [d["text"] for d in docs]
    texts += [s for d in docs for s in re.split(r"(?<=[.!?])\s+", d["text"]) if len(s) > 20]
    return texts, _emulator_vectors(texts), _emulator_vectors(queries)


def data_clustered(rows: int, seed: int = 7) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(16, rows // 200), 64))
    latent = centers[rng.integers(len(centers), size=rows)] + 0.5 * rng.normal(size=(rows, 64))
    basis = rng.normal(size=(64, DIM))
    vectors = l2_normalize(latent @ basis + 2.0 * rng.normal(size=(rows, DIM)), expected_dim=DIM)
    picks = rng.choice(rows, size=300, replace=False)
    queries = l2_normalize(vectors[picks] + 0.03 * rng.normal(size=(300, DIM)), expected_dim=DIM)
    return [f"row {i}" for i in range(rows)], vectors, queries


def load(store: VectorStore, texts: list[str], vectors: np.ndarray) -> None:
    for start in range(0, len(texts), 10_000):
        part = range(start, min(start + 10_000, len(texts)))
        chunks = [Chunk(f"r{i}#0", f"r{i}", 0, texts[i], "", "bench", 0, f"h{i}") for i in part]
        store.upsert(rows_from(chunks, vectors[part.start : part.stop]))
    store.table.optimize()


def measure(store: VectorStore, queries: np.ndarray, truth: list[set[str]], policy: IndexPolicy) -> tuple[float, float]:
    search_table(store.table, queries[0], K, policy=policy)  # warm caches
    recalls, latencies = [], []
    for query, expected in zip(queries, truth):
        started = time.perf_counter()
        hits = search_table(store.table, query, K, policy=policy)
        latencies.append(time.perf_counter() - started)
        recalls.append(len({h.id for h in hits} & expected) / K)
    return statistics.fmean(recalls), statistics.median(latencies) * 1000


def run(name: str, texts: list[str], vectors: np.ndarray, queries: np.ndarray, candidates) -> None:
    top = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    truth = [{f"r{i}#0" for i in row} for row in top]
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore.open(tmp, "bench", Recipe(dimensions=DIM))
        started = time.perf_counter()
        load(store, texts, vectors)
        print(f"\n## {name}: {len(texts):,} rows x {DIM} dims, {len(queries)} queries (load {time.perf_counter() - started:.1f} s)")
        print("| index | build s | nprobes | refine | recall@10 | p50 ms |")
        print("|---|---|---|---|---|---|")
        recall, p50 = measure(store, queries, truth, IndexPolicy())
        print(f"| exact (no index) | — | — | — | {recall:.3f} | {p50:.1f} |", flush=True)
        for label, config, settings in candidates:
            started = time.perf_counter()
            store.table.create_index("vector", config=config, replace=True)
            build = time.perf_counter() - started
            for nprobes, refine in settings:
                recall, p50 = measure(store, queries, truth, IndexPolicy(nprobes=nprobes, refine_factor=refine or 0))  # 0: no refine
                print(f"| {label} | {build:.1f} | {nprobes} | {refine or '—'} | {recall:.3f} | {p50:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="scifact,sentences,clustered")
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the clustered data set")
    parser.add_argument("--with-pq", action="store_true", help="also IVF_PQ (45 s to build at 50k rows, poor recall without refine)")
    args = parser.parse_args()
    candidates = [c for c in CANDIDATES if args.with_pq or c[0] != "IVF_PQ"]
    for name in args.data.split(","):
        if name == "scifact":
            run("SciFact documents (emulator vectors)", *data_scifact(), candidates)
        elif name == "sentences":
            run("SciFact documents + sentences (emulator vectors)", *data_sentences(), candidates)
        elif name == "clustered":
            run("clustered synthetic", *data_clustered(args.rows), candidates)
        else:
            parser.error(f"unknown data set {name!r}")


if __name__ == "__main__":
    main()
