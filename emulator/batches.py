"""Batch API jobs of the emulator: `asyncBatchEmbedContent`, get, list, cancel, delete.

Lifecycle, computed lazily from timestamps (no background thread): a job is PENDING for
`pending_seconds`, RUNNING for `running_seconds` while `batchStats` advance in proportion to the
elapsed time (items finish in input order), then SUCCEEDED. Both durations are frozen into the
job when it is created, so a restarted emulator (`state_dir`) continues the same timeline.
Injected outcomes (`fail_next_jobs`, `expire_next_jobs` in BatchConfig, decremented IN the live
config object, so the admin endpoint sees what is left): a FAILED job fails when it would start
running (the operation carries a top-level `error`); an EXPIRED job stays PENDING for its whole
duration, like the jobs users see stuck in the queue, then ends EXPIRED. Neither has output.
Cancel → CANCELLED with the stats frozen; cancelling a CANCELLED job is a no-op, cancelling any
other finished job answers 400 FAILED_PRECONDITION (an emulator choice; Google does not document
it). Delete forgets the job (404 afterwards) without touching its output file.

Per-item errors do not fail the job: an empty text, a text over 2,048 tokens, a dimensionality
outside 128..3072, an unknown task type or (file input) a malformed line becomes
`{"error": {"code": 3, ...}}` (INVALID_ARGUMENT, terminal); an item failed by
`item_failure_rate` becomes `{"error": {"code": 13, ...}}` (INTERNAL, worth retrying). Injected
failures are drawn deterministically from (config.seed, job id, item index).

Output once SUCCEEDED: inline input → `output.inlinedResponses.inlinedResponses` in input order;
file input → `output.responsesFile: "files/ID"`, a JSONL file of `{"key", "response"|"error"}`
lines in a deterministic SHUFFLED order (clients must match by key). Lines of the input file
without a parsable key come back without one, their message naming the line.
`batchStats` counts are int64 strings, and zero counts are left out as proto3 JSON does.

Stats: `batches.created`, `batches.items` (items submitted), `batches.state.<STATE>` (once per job
on reaching SUCCEEDED/FAILED/CANCELLED/EXPIRED), `batches.items_failed` (error entries of
SUCCEEDED jobs), `tokens.batch` (count_tokens of the texts embedded by SUCCEEDED jobs, billed at
the batch price), `errors.batch.<http code>` (errors answered by create/get/list/cancel/delete).
Terminal transitions are noticed when a job is read; `refresh()` notices them all at once.
Input parsing lives in `emulator.batch_items`, result computation in `emulator.batch_output`.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from . import jobstate
from .auth import require_api_key
from .batch_items import parse_input
from .batch_output import compute_results, mark_injected_failures, output_jsonl
from .config import EmulatorConfig
from .embedding import count_tokens
from .files import FileStore, check_version
from .google_errors import (
    GoogleError,
    bare_resource_exhausted,
    invalid_argument,
    json_response,
    not_found,
)
from .stats import Stats

router = APIRouter()

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
FAILED_JOB_ERROR = {"code": 13, "message": "Batch job failed: an internal error has occurred."}


class BatchStore:
    """Batch jobs and their lifecycle; persisted under config.state_dir when set."""

    def __init__(
        self,
        config: EmulatorConfig,
        stats: Stats,
        files: FileStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = stats
        self.files = files
        self._clock = clock  # wall clock: timestamps are persisted and compared across restarts
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._inline_output: dict[str, list[dict[str, Any]]] = {}
        self._seq = 0
        self._load()

    # -- persistence ----------------------------------------------------------------------

    def _folder(self) -> Path | None:
        state_dir = self.config.state_dir
        return Path(state_dir) / "batches" if state_dir is not None else None

    def _load(self) -> None:
        folder = self._folder()
        if folder is None:
            return
        for job in jobstate.read_json_records(folder):
            if "id" in job and "seq" in job:
                self._jobs[job["id"]] = job
                self._seq = max(self._seq, job["seq"])

    def _persist(self, job: dict[str, Any]) -> None:
        folder = self._folder()
        if folder is not None:
            jobstate.write_json(folder / f"{job['id']}.json", job)

    def reset(self) -> None:
        """Forget every job, on disk too."""
        with self._lock:
            folder = self._folder()
            for job_id in list(self._jobs):
                if folder is not None:
                    jobstate.remove(folder / f"{job_id}.json")
            self._jobs.clear()
            self._inline_output.clear()

    # -- create ---------------------------------------------------------------------------

    async def create(self, version: str, model: str, body: dict) -> dict:
        """Handle `POST /{version}/models/{model}:asyncBatchEmbedContent`; returns the operation JSON."""
        with self._counting_errors():
            return self._create(version, model, body)

    def _create(self, version: str, model: str, body: dict) -> dict:
        batch_config = self.config.batch
        size = len(orjson.dumps(body))
        if size > batch_config.inline_limit_bytes:
            raise invalid_argument(
                f"Request payload size exceeds the limit: {batch_config.inline_limit_bytes} bytes "
                f"(this request has {size}). Upload larger inputs as a JSONL file through the Files "
                "API and pass its name as inputConfig.fileName."
            )
        batch, file_name, items = parse_input(body, self.config.max_input_tokens, self._read_input_file)

        with self._lock:
            now = self._clock()
            active = sum(1 for job in self._jobs.values() if self._observe(job, now) not in TERMINAL)
            if active >= batch_config.max_concurrent_jobs:
                raise bare_resource_exhausted()
            self._seq += 1
            job_id = self._new_id()
            job = {
                "id": job_id,
                "seq": self._seq,
                "version": version,
                "model": model if model.startswith("models/") else f"models/{model}",
                "displayName": batch.get("displayName") or batch.get("display_name") or "",
                "created": now,
                "pendingSeconds": batch_config.pending_seconds,
                "runningSeconds": batch_config.running_seconds,
                "outcome": self._take_outcome(),
                "cancelled": None,
                "inputFile": file_name,
                "items": items,
                "finished": False,
                "outputFile": None,
            }
            mark_injected_failures(items, self.config.seed, job_id, batch_config.item_failure_rate)
            self._jobs[job_id] = job
            self._persist(job)
            self.stats.add("batches.created")
            self.stats.add("batches.items", len(items))
            return self._operation(job, now)

    def _read_input_file(self, file_name: str) -> bytes:
        try:
            return self.files.get_bytes(file_name)
        except GoogleError:
            raise invalid_argument(
                f"* EmbedContentBatch.input_config.file_name: file {file_name} does not exist; "
                "upload it through the Files API first."
            ) from None

    def _take_outcome(self) -> str:
        # Counters live in the live config object, so the admin endpoint reads what is left and a
        # config replaced by the admin endpoint starts from the counts it was given.
        batch_config = self.config.batch
        if batch_config.fail_next_jobs > 0:
            batch_config.fail_next_jobs -= 1
            return "FAILED"
        if batch_config.expire_next_jobs > 0:
            batch_config.expire_next_jobs -= 1
            return "EXPIRED"
        return "SUCCEEDED"

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(10)
            if job_id not in self._jobs:
                return job_id

    # -- lifecycle ------------------------------------------------------------------------

    def _timeline(self, job: dict[str, Any], now: float) -> tuple[str, float, int]:
        """(state, time of entering it, items processed) at `now`."""
        start = job["created"] + job["pendingSeconds"]
        end = start + job["runningSeconds"]
        n = len(job["items"])
        cancelled = job["cancelled"]
        if cancelled is not None and now >= cancelled:
            return "CANCELLED", cancelled, self._processed(job, cancelled)
        if job["outcome"] == "FAILED" and now >= start:
            return "FAILED", start, 0
        if job["outcome"] == "EXPIRED":
            return ("EXPIRED", end, 0) if now >= end else ("PENDING", job["created"], 0)
        if now < start:
            return "PENDING", job["created"], 0
        if now < end:
            return "RUNNING", start, self._processed(job, now)
        return "SUCCEEDED", end, n

    def _processed(self, job: dict[str, Any], at: float) -> int:
        start = job["created"] + job["pendingSeconds"]
        n = len(job["items"])
        if at < start or job["outcome"] != "SUCCEEDED":
            return 0
        if job["runningSeconds"] <= 0:
            return n
        return min(n, math.floor(n * (at - start) / job["runningSeconds"]))

    def _observe(self, job: dict[str, Any], now: float) -> str:
        """The job's state at `now`, finishing it (stats, output) the first time it is terminal."""
        state = self._timeline(job, now)[0]
        if state in TERMINAL and not job["finished"]:
            self._finish(job, state)
        return state

    def _finish(self, job: dict[str, Any], state: str) -> None:
        job["finished"] = True
        self.stats.add(f"batches.state.{state}")
        if state == "SUCCEEDED":
            results = compute_results(job["items"])
            failed = sum(1 for r in results if "error" in r)
            self.stats.add("batches.items_failed", failed)
            self.stats.add("tokens.batch", sum(
                count_tokens(item["text"]) for item in job["items"] if item["error"] is None
            ))
            if job["inputFile"] is not None:
                job["outputFile"] = self._write_output_file(job, results)
            else:
                self._inline_output[job["id"]] = results
        self._persist(job)

    def _write_output_file(self, job: dict[str, Any], results: list[dict[str, Any]]) -> str:
        data = output_jsonl(job["id"], job["items"], results)
        record = self.files.put_bytes(f"{job['displayName'] or job['id']}-output", "application/jsonl", data)
        return f"files/{record['id']}"

    def refresh(self) -> None:
        """Notice every job that has reached a terminal state (stats) without a client reading it."""
        with self._lock:
            now = self._clock()
            for job in self._jobs.values():
                self._observe(job, now)

    # -- read, cancel, delete -------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise not_found(f"Batch batches/{job_id} was not found.")
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        """The operation JSON of `batches/{job_id}`."""
        with self._counting_errors(), self._lock:
            job = self._job(job_id)
            return self._operation(job, self._clock())

    def list_page(self, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        """`{"operations": [...], "nextPageToken"?}`, newest first."""
        with self._counting_errors(), self._lock:
            size = DEFAULT_PAGE_SIZE if not page_size or page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
            try:
                page, next_token = jobstate.page_newest_first(list(self._jobs.values()), size, page_token)
            except ValueError:
                raise invalid_argument(f"Invalid page token {page_token!r}.") from None
            now = self._clock()
            body: dict[str, Any] = {"operations": [self._operation(job, now) for job in page]}
            if next_token:
                body["nextPageToken"] = next_token
            return body

    def cancel(self, job_id: str) -> None:
        """Cancel a PENDING or RUNNING job; a no-op on a CANCELLED one."""
        with self._counting_errors(), self._lock:
            job = self._job(job_id)
            now = self._clock()
            state = self._observe(job, now)
            if state == "CANCELLED":
                return
            if state in TERMINAL:
                raise GoogleError(
                    400, "FAILED_PRECONDITION",
                    f"Batch batches/{job_id} is already in state BATCH_STATE_{state} and cannot be cancelled.",
                )
            job["cancelled"] = now
            self._observe(job, now)

    def delete(self, job_id: str) -> None:
        """Forget `batches/{job_id}`."""
        with self._counting_errors(), self._lock:
            self._job(job_id)
            del self._jobs[job_id]
            self._inline_output.pop(job_id, None)
            folder = self._folder()
            if folder is not None:
                jobstate.remove(folder / f"{job_id}.json")

    # -- rendering ------------------------------------------------------------------------

    def _operation(self, job: dict[str, Any], now: float) -> dict[str, Any]:
        self._observe(job, now)
        state, since, processed = self._timeline(job, now)
        items = job["items"]
        failed = sum(1 for item in items[:processed] if item["error"] is not None)
        stats = {
            "requestCount": len(items),
            "successfulRequestCount": processed - failed,
            "failedRequestCount": failed,
            "pendingRequestCount": len(items) - processed,
        }
        name = f"batches/{job['id']}"
        metadata: dict[str, Any] = {
            "@type": f"type.googleapis.com/google.ai.generativelanguage.{job['version']}.EmbedContentBatch",
            "model": job["model"],
            "name": name,
            "createTime": jobstate.rfc3339(job["created"]),
            "updateTime": jobstate.rfc3339(since),
            # int64 as strings; zero counts are omitted as in proto3 JSON.
            "batchStats": {k: str(v) for k, v in stats.items() if v},
            "state": f"BATCH_STATE_{state}",
        }
        if job["displayName"]:
            metadata["displayName"] = job["displayName"]
        if job["inputFile"] is not None:
            metadata["inputConfig"] = {"fileName": job["inputFile"]}
        if state in TERMINAL:
            metadata["endTime"] = jobstate.rfc3339(since)
        if state == "SUCCEEDED":
            metadata["output"] = self._output(job)
        operation: dict[str, Any] = {"name": name, "metadata": metadata, "done": state in TERMINAL}
        if state == "FAILED":
            operation["error"] = dict(FAILED_JOB_ERROR)
        return operation

    def _output(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["outputFile"] is not None:
            return {"responsesFile": job["outputFile"]}
        results = self._inline_output.get(job["id"])
        if results is None:  # restarted emulator: vectors are a pure function of the inputs
            results = self._inline_output[job["id"]] = compute_results(job["items"])
        return {"inlinedResponses": {"inlinedResponses": results}}

    def _counting_errors(self) -> _ErrorCounter:
        return _ErrorCounter(self.stats)


class _ErrorCounter:
    """Context manager adding `errors.batch.<code>` for a GoogleError passing through."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, GoogleError):
            self.stats.add(f"errors.batch.{exc.code}")
        return False


# -- routes -----------------------------------------------------------------------------------


def _store(request: Request) -> BatchStore:
    return request.app.state.emulator.batches


@router.get("/{version}/batches", dependencies=[Depends(require_api_key)])
async def list_batches(
    version: str, request: Request, pageSize: int | None = None, pageToken: str | None = None
) -> Response:
    """`batches.list`: newest first."""
    check_version(version, request)
    return json_response(_store(request).list_page(pageSize, pageToken))


@router.get("/{version}/batches/{job_id}", dependencies=[Depends(require_api_key)])
async def get_batch(version: str, job_id: str, request: Request) -> Response:
    """`batches.get`: the long-running operation of one job."""
    check_version(version, request)
    return json_response(_store(request).get(job_id))


@router.post("/{version}/batches/{job_ref}", dependencies=[Depends(require_api_key)])
async def batch_method(version: str, job_ref: str, request: Request) -> Response:
    """`batches/{id}:cancel` (the only POST method on a job)."""
    check_version(version, request)
    job_id, _, method = job_ref.partition(":")
    if method != "cancel":
        raise not_found(f"Method batches.{method or '(none)'} is not supported by the emulator.")
    _store(request).cancel(job_id)
    return json_response({})


@router.delete("/{version}/batches/{job_id}", dependencies=[Depends(require_api_key)])
async def delete_batch(version: str, job_id: str, request: Request) -> Response:
    """`batches.delete` → `{}`."""
    check_version(version, request)
    _store(request).delete(job_id)
    return json_response({})
