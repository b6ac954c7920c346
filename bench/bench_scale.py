"""The vector index at scale: build time, p50/p95 latency, recall@10 vs exact, before and after incremental runs.

    .venv/bin/python bench/bench_scale.py [--rows 100000] [--data random,clustered] [--runs 2]
                                          [--grow 0.1] [--sweep 20:20,80:50] [--workdir /tmp/scale] [--json]
    BENCH_ROWS=1000000 make bench     (the full size; --rows defaults to $BENCH_ROWS, else 100,000)

Tables are indexflow's own: created by `VectorStore.open` with the chunk schema, written as
10k-row batches of that schema, indexed by `VectorStore.finalize`, queried by `VectorStore.search`
(the policy's nprobes/refine by size). Truth is exact top-10 by numpy over the same vectors.

Data (deterministic, seed 7), 768-dim unit vectors:
  random     i.i.d. normal, normalized (the hardest case for an IVF index: no structure)
  clustered  300 random unit centers; each vector = normalize(center + 0.6 * g / sqrt(768)),
             g standard normal (cosine to its center ~0.86); queries drawn the same way, not in the table.
Each incremental run upserts `--grow` x the initial rows of new vectors (10k-row merge_inserts),
measures queries while those rows are written but not finalized ("writing"), then finalizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa


from indexflow.tasks.recipe import Recipe  # noqa: E402
from indexflow.tasks.rows import METADATA_KEYS, METADATA_TYPE, UTC_US, chunk_schema  # noqa: E402
from indexflow.tasks.search import IndexPolicy  # noqa: E402
from indexflow.tasks.store import VectorStore  # noqa: E402

DIM, K, BATCH, CENTERS, NOISE, QUERIES = 768, 10, 10_000, 300, 0.6, 200


class Data:
    """A deterministic stream of unit vectors of one kind; `take(n)` continues where it stopped."""

    def __init__(self, kind: str, seed: int = 7) -> None:
        self.kind, self.rng = kind, np.random.default_rng(seed)
        centers = self.rng.standard_normal((CENTERS, DIM))
        self.centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)

    def take(self, n: int) -> np.ndarray:
        noise = self.rng.standard_normal((n, DIM), dtype=np.float32)
        if self.kind == "clustered":
            picks = self.rng.integers(CENTERS, size=n)
            noise = self.centers[picks].astype(np.float32) + (NOISE / np.sqrt(DIM)) * noise
        return (noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32)


def batch(start: int, vectors: np.ndarray) -> pa.RecordBatch:
    """Rows of indexflow's chunk schema for vectors numbered from `start`."""
    n = len(vectors)
    ids = pa.array([f"r{i}#0" for i in range(start, start + n)], pa.string())
    docs = pa.array([f"r{i}" for i in range(start, start + n)], pa.string())
    cols = {"id": ids, "doc_id": docs, "ordinal": pa.array(np.zeros(n, np.int32)),
            "text": docs, "title": pa.nulls(n, pa.string()), "source": pa.array(["bench"] * n),
            "content_hash": docs,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            "indexed_at": pa.array([datetime.now(timezone.utc)] * n, UTC_US)}
    cols["metadata"] = pa.StructArray.from_arrays([cols[k] for k in METADATA_KEYS], fields=list(METADATA_TYPE))
    schema = chunk_schema(Recipe(dimensions=DIM)).remove_metadata()
    return pa.RecordBatch.from_arrays([cols[f] for f in schema.names], schema=schema)


def truth(vectors: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    """Exact top-K ids by dot product (= cosine on unit vectors), in blocks to bound memory."""
    best = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    for start in range(0, len(vectors), 200_000):
        scores = queries @ vectors[start : start + 200_000].T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        merged = np.concatenate([best, np.take_along_axis(scores, top, 1)], 1)
        merged_ids = np.concatenate([best_ids, top + start], 1)
        keep = np.argsort(-merged, axis=1)[:, :K]
        best, best_ids = np.take_along_axis(merged, keep, 1), np.take_along_axis(merged_ids, keep, 1)
    return [{f"r{i}#0" for i in row} for row in best_ids]


def measure(store: VectorStore, queries: np.ndarray, expected: list[set[str]] | None) -> dict:
    """p50/p95 of `store.search` in process, and recall@K against `expected`."""
    for q in queries[:5]:
        store.search(q, K)  # warm the index and file caches
    latencies, recalls = [], []
    for i, q in enumerate(queries):
        started = time.perf_counter()
        hits = store.search(q, K)
        latencies.append((time.perf_counter() - started) * 1000)
        if expected is not None:
            recalls.append(len({h.id for h in hits} & expected[i]) / K)
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
            "recall": round(statistics.fmean(recalls), 3) if recalls else None}


def run(kind: str, rows: int, runs: int, grow: float, sweep: list[tuple[int, int]], workdir: Path,
        bits: int | None = None) -> list[dict]:
    data, out = Data(kind), []
    queries = Data(kind, seed=8)
    queries.centers = data.centers  # queries around the same centers, drawn apart from the table
    q = queries.take(QUERIES)
    db = workdir / f"{kind}-{rows}"
    shutil.rmtree(db, ignore_errors=True)
    store = VectorStore.open(str(db), "corpus", Recipe(dimensions=DIM), policy=IndexPolicy(num_bits=bits))
    started = time.perf_counter()
    vectors = np.empty((rows, DIM), np.float32)
    for s in range(0, rows, BATCH):
        vectors[s : s + BATCH] = data.take(min(BATCH, rows - s))
    reader = pa.RecordBatchReader.from_batches(
        batch(0, vectors[:1]).schema, (batch(s, vectors[s : s + BATCH]) for s in range(0, rows, BATCH)))
    store.table.add(reader)
    write_s = time.perf_counter() - started
    report = store.finalize()
    params = store.policy.params(rows, DIM)
    row = {"data": kind, "stage": "initial", "rows": rows, "write_s": round(write_s, 1),
           "build_s": round(report.seconds, 1), "vector_index": report.vector_index,
           "nprobes": params.nprobes, "refine": params.refine_factor, "fragments": report.fragments_after}
    row |= measure(store, q, truth(vectors, q))
    out.append(row)
    print(json.dumps(row), flush=True)
    policy = store.policy
    for probes, refine in sweep:
        store.policy = IndexPolicy(num_bits=policy.num_bits, nprobes=probes, refine_factor=refine)
        alt = {"data": kind, "stage": "sweep", "rows": rows, "nprobes": probes, "refine": refine}
        alt |= measure(store, q, truth(vectors, q))
        out.append(alt)
        print(json.dumps(alt), flush=True)
    store.policy = policy
    idle = row["p50_ms"]
    for r in range(1, runs + 1):
        add = int(rows * grow)
        new = np.concatenate([data.take(min(BATCH, add - s)) for s in range(0, add, BATCH)])
        base = len(vectors)
        for s in range(0, add, BATCH):
            store.upsert(batch(base + s, new[s : s + BATCH]))
        vectors = np.concatenate([vectors, new])
        writing = {"data": kind, "stage": f"run {r} writing", "rows": len(vectors), "idle_p50_ms": idle}
        writing |= measure(store, q, None)  # recall is not the point here: new rows are not all visible
        out.append(writing)
        print(json.dumps(writing), flush=True)
        report = store.finalize()
        params = store.policy.params(len(vectors), DIM)
        after = {"data": kind, "stage": f"run {r} finalized", "rows": len(vectors),
                 "build_s": round(report.seconds, 1), "vector_index": report.vector_index,
                 "nprobes": params.nprobes, "refine": params.refine_factor,
                 "fragments": f"{report.fragments_before}->{report.fragments_after}"}
        after |= measure(store, q, truth(vectors, q))
        out.append(after)
        print(json.dumps(after), flush=True)
    shutil.rmtree(db, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", 100_000)))
    parser.add_argument("--data", default="random,clustered")
    parser.add_argument("--runs", type=int, default=2, help="incremental runs after the initial build")
    parser.add_argument("--grow", type=float, default=0.1, help="new rows per run, as a share of --rows")
    parser.add_argument("--sweep", default="", help="extra nprobes:refine pairs to measure on the first index")
    parser.add_argument("--bits", type=int, default=None, help="IVF_RQ bits per dimension (default: the policy's)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print all rows as one JSON list at the end")
    args = parser.parse_args()
    sweep = [tuple(int(x) for x in pair.split(":")) for pair in args.sweep.split(",") if pair]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    for kind in args.data.split(","):
        rows += run(kind, args.rows, args.runs, args.grow, sweep, workdir, args.bits)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
