"""The batch job on the wire: the `priority` of a create request, and the long-running operation
(`{"name", "metadata": EmbedContentBatch, "done", "error"?}`) that create, get and list answer."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from . import jobstate
from .batch_timeline import TERMINAL, state_at
from .google_errors import invalid_argument

FAILED_JOB_ERROR = {"code": 13, "message": "Batch job failed: an internal error has occurred."}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT64_STRING = re.compile(r"-?[0-9]+")


def parse_priority(batch: dict[str, Any]) -> int:
    """`batch.priority`, an int64 (a JSON string, or a number as proto3 JSON also accepts); absent = 0."""
    value = batch.get("priority")
    if value is None:
        return 0
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):  # JSON true is no integer
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT64_STRING.fullmatch(value):
        number = int(value)
    if number is None or not INT64_MIN <= number <= INT64_MAX:
        # The wording of Google's front end for a field that does not parse as its type.
        raise invalid_argument(f"Invalid value at 'batch.priority' (TYPE_INT64), {orjson.dumps(value).decode()}")
    return number


def operation(job: dict[str, Any], now: float, output: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The operation JSON of `job` at `now`; `output(job)` gives `metadata.output` once SUCCEEDED."""
    state, since, processed = state_at(job, now)
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
    if job["priority"]:
        # int64 as a string; proto3 JSON leaves out a field at its default, so priority 0 is absent.
        metadata["priority"] = str(job["priority"])
    if state in TERMINAL:
        metadata["endTime"] = jobstate.rfc3339(since)
    if state == "SUCCEEDED":
        metadata["output"] = output(job)
    body: dict[str, Any] = {"name": name, "metadata": metadata, "done": state in TERMINAL}
    if state == "FAILED":
        body["error"] = dict(FAILED_JOB_ERROR)
    return body
