"""Batch job items → results: injected per-item failures, the embeddings of the valid items,
the shuffled JSONL body of a file-input job's responses file, and where finished results live."""

from __future__ import annotations

from collections import defaultdict
from hashlib import blake2b
from typing import Any

import orjson

from .embedding import count_tokens, embed_texts
from .files import FileStore

INJECTED_ITEM_ERROR = {"code": 13, "message": "Internal error encountered while embedding this request."}


def _digest(text: str) -> bytes:
    return blake2b(text.encode(), digest_size=8).digest()


def _uniform(seed: int, job_id: str, index: int) -> float:
    return int.from_bytes(_digest(f"{seed}:{job_id}:{index}"), "big") / 2**64


def mark_injected_failures(items: list[dict[str, Any]], seed: int, job_id: str, rate: float) -> None:
    """Give INJECTED_ITEM_ERROR to valid items drawn (deterministically) with probability `rate`."""
    if rate <= 0:
        return
    for index, item in enumerate(items):
        if item["error"] is None and _uniform(seed, job_id, index) < rate:
            item["error"] = dict(INJECTED_ITEM_ERROR)


def compute_results(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One `{"response": ...}` or `{"error": ...}` per item, in input order."""
    results: list[dict[str, Any]] = [{"error": item["error"]} for item in items]
    groups: dict[tuple[int, str | None], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item["error"] is None:
            groups[(item["dim"], item["taskType"])].append(index)
    for (dim, task_type), indices in groups.items():
        group = [items[i] for i in indices]
        titles = [item["title"] for item in group]
        vectors = embed_texts(
            [item["text"] for item in group], dim, task_type,
            titles if any(titles) else None,
        )
        for index, vector in zip(indices, vectors):
            results[index] = {"response": {"embedding": {"values": vector}}}
    return results


def output_jsonl(job_id: str, items: list[dict[str, Any]], results: list[dict[str, Any]]) -> bytes:
    """The responses file: one `{"key"?, "response"|"error"}` line per item, in a stable shuffle."""
    lines = []
    for item, result in zip(items, results):
        line = {"key": item["key"]} if item["key"] is not None else {}
        line.update(result)
        lines.append(line)
    # A stable shuffle keyed on the job: clients must match lines by key, never by position.
    order = sorted(range(len(lines)), key=lambda i: _digest(f"{job_id}:{i}"))
    return b"".join(orjson.dumps(lines[i], option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for i in order)


class JobOutputs:
    """Results of SUCCEEDED jobs: inline ones in memory, file ones as generated files."""

    def __init__(self, files: FileStore) -> None:
        self.files = files
        self._inline: dict[str, list[dict[str, Any]]] = {}

    def finish(self, job: dict[str, Any]) -> dict[str, int]:
        """Compute and keep a SUCCEEDED job's results (a file-input job gets `job["outputFile"]`);
        returns what it adds to the stats: failed items and the tokens billed."""
        items = job["items"]
        results = compute_results(items)
        if job["inputFile"] is None:
            self._inline[job["id"]] = results
        else:
            data = output_jsonl(job["id"], items, results)
            record = self.files.put_bytes(f"{job['displayName'] or job['id']}-output", "application/jsonl", data)
            job["outputFile"] = f"files/{record['id']}"
        return {
            "batches.items_failed": sum(1 for r in results if "error" in r),
            "tokens.batch": sum(count_tokens(item["text"]) for item in items if item["error"] is None),
        }

    def output(self, job: dict[str, Any]) -> dict[str, Any]:
        """`metadata.output` of a SUCCEEDED job."""
        if job["outputFile"] is not None:
            return {"responsesFile": job["outputFile"]}
        results = self._inline.get(job["id"])
        if results is None:  # restarted emulator: vectors are a pure function of the inputs
            results = self._inline[job["id"]] = compute_results(job["items"])
        return {"inlinedResponses": {"inlinedResponses": results}}

    def forget(self, job_id: str | None = None) -> None:
        """Drop one job's inline results, or everyone's."""
        if job_id is None:
            self._inline.clear()
        else:
            self._inline.pop(job_id, None)
