"""A batch job's state at a given time, read from the times recorded in the job (no clock, no I/O).

A job records `created`, `started` (None until the queue starts it, see emulator.batch_queue),
`cancelled` (None or when) and, frozen at creation, `runningSeconds`, `pendingSeconds` and its
`outcome`. From those: PENDING until started, then RUNNING for `runningSeconds` while `batchStats`
advance in proportion to the elapsed time (items finish in input order), then SUCCEEDED. An
injected FAILED outcome fails at the moment the job would start running; an injected EXPIRED
outcome never starts (like the jobs users see stuck in the queue): PENDING for pendingSeconds +
runningSeconds from creation, then EXPIRED. A cancel freezes the job CANCELLED at the cancel time.
"""

from __future__ import annotations

import math
from typing import Any

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})


def state_at(job: dict[str, Any], t: float) -> tuple[str, float, int]:
    """(state, time it was entered, items processed) of `job` at `t`."""
    cancelled = job["cancelled"]
    if cancelled is not None and t >= cancelled:
        return "CANCELLED", cancelled, processed(job, cancelled)
    if job["outcome"] == "EXPIRED":
        expires = job["created"] + job["pendingSeconds"] + job["runningSeconds"]
        return ("EXPIRED", expires, 0) if t >= expires else ("PENDING", job["created"], 0)
    started = job["started"]
    if started is None or t < started:
        return "PENDING", job["created"], 0
    if job["outcome"] == "FAILED":
        return "FAILED", started, 0
    ends = started + job["runningSeconds"]
    if t < ends:
        return "RUNNING", started, processed(job, t)
    return "SUCCEEDED", ends, len(job["items"])


def processed(job: dict[str, Any], at: float) -> int:
    """Items a SUCCEEDED-bound job has finished by `at` (0 for the other outcomes)."""
    started = job["started"]
    n = len(job["items"])
    if started is None or at < started or job["outcome"] != "SUCCEEDED":
        return 0
    if job["runningSeconds"] <= 0:
        return n
    return min(n, math.floor(n * (at - started) / job["runningSeconds"]))


def releases_slot_at(job: dict[str, Any]) -> float:
    """When a started job stops being RUNNING: it succeeds, fails (at once) or is cancelled."""
    started = job["started"]
    ends = started if job["outcome"] == "FAILED" else started + job["runningSeconds"]
    cancelled = job["cancelled"]
    return ends if cancelled is None else min(ends, cancelled)
