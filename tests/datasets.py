"""The datasets tests and benchmarks use, shipped in `data/`: SciFact unpacked once, on first use."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCIFACT_SOURCE = REPO / "data" / "scifact"
SCIFACT_CACHE = REPO / ".indexflow" / "datasets" / "scifact"


class MissingDataset(RuntimeError):
    """A dataset the repository should ship is not there."""


def scifact_dir() -> Path:
    """A directory with SciFact's `corpus.jsonl`, `queries.jsonl` and `qrels.tsv`, unpacked from data/scifact."""
    packed = SCIFACT_SOURCE / "corpus.jsonl.gz"
    if not packed.exists():
        raise MissingDataset(f"{packed} is missing: restore data/scifact/ from git (git checkout -- data/scifact)")
    corpus = SCIFACT_CACHE / "corpus.jsonl"
    if not corpus.exists() or corpus.stat().st_mtime < packed.stat().st_mtime:
        SCIFACT_CACHE.mkdir(parents=True, exist_ok=True)
        # Unpack beside the target and rename: a concurrent or killed unpack never leaves half a file.
        fd, tmp = tempfile.mkstemp(dir=SCIFACT_CACHE, prefix=".corpus-")
        with os.fdopen(fd, "wb") as out, gzip.open(packed, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, corpus)
    for name in ("queries.jsonl", "qrels.tsv"):
        target = SCIFACT_CACHE / name
        if not target.exists():
            shutil.copyfile(SCIFACT_SOURCE / name, target)
    return SCIFACT_CACHE


def scifact_corpus() -> Path:
    """SciFact's corpus.jsonl (5,183 abstracts)."""
    return scifact_dir() / "corpus.jsonl"


def scifact_judged() -> tuple[list[dict], dict[str, set[str]]]:
    """SciFact's test queries that have a relevant document, and each query id's relevant document ids."""
    import json
    from collections import defaultdict

    qrels: dict[str, set[str]] = defaultdict(set)
    for line in (scifact_dir() / "qrels.tsv").read_text().splitlines()[1:]:
        qid, doc, score = line.split("\t")
        if int(score) > 0:
            qrels[qid].add(doc)
    queries = [json.loads(line) for line in (scifact_dir() / "queries.jsonl").read_text().splitlines()]
    return [q for q in queries if q["_id"] in qrels], dict(qrels)
