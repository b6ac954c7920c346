"""Batch API jobs of the emulator: `asyncBatchEmbedContent`, get, list, cancel, delete.

A job moves PENDING → RUNNING → SUCCEEDED on a timeline computed lazily from timestamps (no
background thread): `emulator.batch_queue` decides when it starts (after `pending_seconds`, later
if BatchConfig `paused` or `max_running` hold it back, higher `priority` first),
`emulator.batch_timeline` what state it is in at a given time. `pending_seconds` and
`running_seconds` are frozen into the job when it is created, so a restarted emulator
(`state_dir`) continues the same timeline. Injected outcomes (`fail_next_jobs`,
`expire_next_jobs` in BatchConfig, decremented IN the live config object, so the admin endpoint
sees what is left): a FAILED job fails when it would start running (the operation carries a
top-level `error`); an EXPIRED job stays PENDING, like the jobs users see stuck in the queue,
then ends EXPIRED. Neither has output. Cancel → CANCELLED with the stats frozen; cancelling a
CANCELLED job is a no-op, cancelling any other finished job answers 400 FAILED_PRECONDITION (an
emulator choice; Google does not document it). Delete forgets the job (404 afterwards) without
touching its output file.

`batch.priority` (int64, a JSON string or number, default 0, negative allowed) is read on
creation for inline and file input alike, persisted with the job and reported back as
`metadata.priority` (a string, absent when 0); anything but an integer is 400 INVALID_ARGUMENT
(emulator.batch_resource).

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
Input parsing lives in `emulator.batch_items`, the job record in `emulator.batch_record`, the
operation JSON in `emulator.batch_resource`, result computation in `emulator.batch_output`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from . import jobstate
from .auth import require_api_key
from .batch_output import JobOutputs
from .batch_queue import JobQueue
from .batch_record import new_record, read_create_request, upgrade
from .batch_resource import operation
from .batch_timeline import TERMINAL, state_at
from .config import EmulatorConfig
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

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


class BatchStore:
    """Batch jobs: create, read, cancel, delete and count them; persisted under config.state_dir when set."""

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
        self._folder = jobstate.RecordFolder(config.state_dir, "batches")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._outputs = JobOutputs(files)
        self._seq = 0
        for job in map(upgrade, self._folder.load()):
            self._jobs[job["id"]] = job
            self._seq = max(self._seq, job["seq"])
        self._queue = JobQueue(self._jobs, config.batch, self._folder.save, clock())

    def configure(self, config: EmulatorConfig) -> None:
        """Use `config` from now on; queue settings (paused, max_running) change at this instant."""
        with self._lock:
            self.config = config
            self._queue.configure(config.batch, self._clock())

    def reset(self) -> None:
        """Forget every job, on disk too."""
        with self._lock:
            for job_id in list(self._jobs):
                self._folder.remove(job_id)
            self._jobs.clear()
            self._outputs.forget()

    def _now(self) -> float:
        """The time of this request, with the queue advanced to it (call with the lock held)."""
        return self._queue.advance(self._clock())

    # -- create ---------------------------------------------------------------------------

    async def create(self, version: str, model: str, body: dict) -> dict:
        """Handle `POST /{version}/models/{model}:asyncBatchEmbedContent`; returns the operation JSON."""
        with _counting_errors(self.stats):
            return self._create(version, model, body)

    def _create(self, version: str, model: str, body: dict) -> dict:
        request = read_create_request(body, self.config, self.files)
        with self._lock:
            now = self._now()
            active = sum(1 for job in self._jobs.values() if self._observe(job, now) not in TERMINAL)
            if active >= self.config.batch.max_concurrent_jobs:
                raise bare_resource_exhausted()
            self._seq += 1
            job = new_record(request, job_id=_new_id(self._jobs), seq=self._seq, version=version, model=model,
                             now=now, config=self.config)
            self._queue.admit(job)
            self._jobs[job["id"]] = job
            self._folder.save(job)
            self.stats.add("batches.created")
            self.stats.add("batches.items", len(job["items"]))
            return self._operation(job, now)

    # -- finishing ------------------------------------------------------------------------

    def _observe(self, job: dict[str, Any], now: float) -> str:
        """The job's state at `now`, finishing it (stats, output) the first time it is terminal."""
        state = state_at(job, now)[0]
        if state in TERMINAL and not job["finished"]:
            job["finished"] = True
            self.stats.add(f"batches.state.{state}")
            if state == "SUCCEEDED":
                for name, value in self._outputs.finish(job).items():
                    self.stats.add(name, value)
            self._folder.save(job)
        return state

    def refresh(self) -> None:
        """Notice every job that has reached a terminal state (stats) without a client reading it."""
        with self._lock:
            now = self._now()
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
        with _counting_errors(self.stats), self._lock:
            job = self._job(job_id)
            return self._operation(job, self._now())

    def list_page(self, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        """`{"operations": [...], "nextPageToken"?}`, newest first, every job seen at the same instant."""
        with _counting_errors(self.stats), self._lock:
            size = DEFAULT_PAGE_SIZE if not page_size or page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
            try:
                page, next_token = jobstate.page_newest_first(list(self._jobs.values()), size, page_token)
            except ValueError:
                raise invalid_argument(f"Invalid page token {page_token!r}.") from None
            now = self._now()
            body: dict[str, Any] = {"operations": [self._operation(job, now) for job in page]}
            if next_token:
                body["nextPageToken"] = next_token
            return body

    def cancel(self, job_id: str) -> None:
        """Cancel a PENDING or RUNNING job (freeing its place for the next); a no-op on a CANCELLED one."""
        with _counting_errors(self.stats), self._lock:
            job = self._job(job_id)
            now = self._now()
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
        with _counting_errors(self.stats), self._lock:
            self._job(job_id)
            self._now()  # the queue's past is settled before the job leaves it
            del self._jobs[job_id]
            self._outputs.forget(job_id)
            self._folder.remove(job_id)

    def _operation(self, job: dict[str, Any], now: float) -> dict[str, Any]:
        self._observe(job, now)
        return operation(job, now, self._outputs.output)


def _new_id(taken: dict[str, Any]) -> str:
    while True:
        job_id = secrets.token_hex(10)
        if job_id not in taken:
            return job_id


@contextmanager
def _counting_errors(stats: Stats) -> Iterator[None]:
    """Add `errors.batch.<code>` for a GoogleError passing through."""
    try:
        yield
    except GoogleError as exc:
        stats.add(f"errors.batch.{exc.code}")
        raise


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
