"""A batch job's record: what a create request becomes, kept in memory and under `state_dir`.

The record freezes everything the job's timeline needs at creation (`pendingSeconds`,
`runningSeconds`, the injected `outcome`, `priority`), so settings changed later, or a restart,
never rewrite a job's past. The queue adds `readyAt`, `pausedAt` and `started`
(emulator.batch_queue); `cancelled`, `finished` and `outputFile` are set as the job moves on.
"""

from __future__ import annotations

from typing import Any

import orjson

from .batch_items import parse_input
from .batch_output import mark_injected_failures
from .batch_resource import parse_priority
from .config import BatchConfig, EmulatorConfig
from .files import FileStore
from .google_errors import GoogleError, invalid_argument


def read_create_request(body: dict, config: EmulatorConfig, files: FileStore) -> dict[str, Any]:
    """The validated parts of an `asyncBatchEmbedContent` body; 400 INVALID_ARGUMENT when malformed."""
    limit = config.batch.inline_limit_bytes
    size = len(orjson.dumps(body))
    if size > limit:
        raise invalid_argument(
            f"Request payload size exceeds the limit: {limit} bytes (this request has {size}). Upload "
            "larger inputs as a JSONL file through the Files API and pass its name as inputConfig.fileName."
        )

    def read_file(file_name: str) -> bytes:
        try:
            return files.get_bytes(file_name)
        except GoogleError:
            raise invalid_argument(
                f"* EmbedContentBatch.input_config.file_name: file {file_name} does not exist; "
                "upload it through the Files API first."
            ) from None

    batch, file_name, items = parse_input(body, config.max_input_tokens, read_file)
    return {
        "displayName": batch.get("displayName") or batch.get("display_name") or "",
        "priority": parse_priority(batch),
        "inputFile": file_name,
        "items": items,
    }


def new_record(
    request: dict[str, Any], *, job_id: str, seq: int, version: str, model: str, now: float,
    config: EmulatorConfig,
) -> dict[str, Any]:
    """The record of a job created at `now` from `read_create_request`'s result (consumes an injected outcome)."""
    batch_config = config.batch
    mark_injected_failures(request["items"], config.seed, job_id, batch_config.item_failure_rate)
    return {
        "id": job_id,
        "seq": seq,
        "version": version,
        "model": model if model.startswith("models/") else f"models/{model}",
        **request,
        "created": now,
        "pendingSeconds": batch_config.pending_seconds,
        "runningSeconds": batch_config.running_seconds,
        "outcome": take_outcome(batch_config),
        "cancelled": None,
        "finished": False,
        "outputFile": None,
    }


def take_outcome(batch_config: BatchConfig) -> str:
    """The injected outcome of the next job, consuming one of the counters."""
    # Counters live in the live config object, so the admin endpoint reads what is left and a
    # config replaced by the admin endpoint starts from the counts it was given.
    if batch_config.fail_next_jobs > 0:
        batch_config.fail_next_jobs -= 1
        return "FAILED"
    if batch_config.expire_next_jobs > 0:
        batch_config.expire_next_jobs -= 1
        return "EXPIRED"
    return "SUCCEEDED"


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A loaded record with the fields older emulators did not write (their jobs join the queue as new)."""
    record.setdefault("priority", 0)
    record.setdefault("readyAt", record["created"] + record["pendingSeconds"])
    record.setdefault("started", None)
    record.setdefault("pausedAt", None)
    return record
