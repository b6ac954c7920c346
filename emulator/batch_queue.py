"""The batch queue: decides when each PENDING job starts RUNNING, from recorded times only.

A job is ready once it has waited its frozen `pendingSeconds` (`readyAt`). With the default
settings every job starts exactly at its `readyAt`: each job follows its own timeline. Two
BatchConfig settings hold jobs back:
- `paused`: no PENDING job starts. Paused time does not count as pending time: lifting the pause
  moves each waiting job's `readyAt` later by how long it was paused (`pausedAt` says since when),
  so a job created during a pause starts `pendingSeconds` after the pause is lifted.
- `max_running`: at most this many jobs RUNNING at once; a ready job waits for a slot.
Whenever a job can start (it becomes ready, a slot frees, the pause is lifted), the ready jobs
are taken by priority (highest first), then creation time (oldest first), then creation order.
Jobs with an injected EXPIRED outcome never enter the queue and take no slot.

No thread and no dependence on when anybody looks: each read first `advance`s the queue to
`now`, replaying every event since the last read (a job becoming ready, a running job ending)
at its own timestamp, and records the starts in the jobs (`started`, persisted through `save`).
A setting changes at the moment `configure` is called. After a restart the queue resumes from the
last recorded creation, start, cancel or pause with the startup settings, so an emulator
restarted with the same settings continues the timeline the jobs had.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from .batch_timeline import releases_slot_at
from .config import BatchConfig

Job = dict[str, Any]


def _order(job: Job) -> tuple[int, float, int]:
    return -job["priority"], job["created"], job["seq"]


class JobQueue:
    """Starts the jobs of a shared `{id: job}` dict as the settings allow; see the module docstring."""

    def __init__(self, jobs: dict[str, Job], config: BatchConfig, save: Callable[[Job], None], now: float) -> None:
        self._jobs = jobs
        self._save = save
        self._paused = config.paused
        self._max_running = config.max_running
        recorded = [t for job in jobs.values()
                    for t in (job["created"], job["started"], job["cancelled"], job["pausedAt"]) if t is not None]
        # Every start up to the last recorded event is in the records; replay from there.
        self._mark = min(now, max(recorded, default=now))
        self._hold(self._paused, self._mark)

    def admit(self, job: Job) -> None:
        """Give a job created just now (after `advance`) its place in the queue."""
        job["readyAt"] = job["created"] + job["pendingSeconds"]
        job["started"] = None
        job["pausedAt"] = job["created"] if self._paused else None

    def configure(self, config: BatchConfig, now: float) -> None:
        """Apply new `paused`/`max_running` from `now` on (the old ones hold until then)."""
        now = self.advance(now)
        self._paused, self._max_running = config.paused, config.max_running
        self._hold(self._paused, now)

    def advance(self, now: float) -> float:
        """Start every job the queue starts up to `now`; returns `now` (never earlier than before)."""
        now = max(now, self._mark)
        if not self._paused:
            waiting = sorted(self._waiting(), key=lambda job: job["readyAt"])
            if self._max_running is None:
                # Nothing competes for a slot: a ready job starts when it became ready, or when
                # the queue last changed (pause lifted, cap removed) if that came later.
                for job in waiting:
                    if job["readyAt"] <= now:
                        self._start(job, max(job["readyAt"], self._mark))
            else:
                self._fill_slots(waiting, self._max_running, now)
        self._mark = now
        return now

    def _fill_slots(self, waiting: list[Job], max_running: int, now: float) -> None:
        """Replay readiness and slot releases in time order from the mark to `now` (`waiting` by readyAt)."""
        t = self._mark
        releases = [end for job in self._jobs.values()
                    if job["started"] is not None and (end := releases_slot_at(job)) > t]
        heapq.heapify(releases)
        ready: list[tuple[tuple[int, float, int], str]] = []
        upcoming = 0
        while True:
            while upcoming < len(waiting) and waiting[upcoming]["readyAt"] <= t:
                heapq.heappush(ready, (_order(waiting[upcoming]), waiting[upcoming]["id"]))
                upcoming += 1
            while releases and releases[0] <= t:
                heapq.heappop(releases)
            while ready and len(releases) < max_running:
                job = self._jobs[heapq.heappop(ready)[1]]
                self._start(job, t)
                if (end := releases_slot_at(job)) > t:  # a FAILED job gives its slot back at once
                    heapq.heappush(releases, end)
            events = [waiting[upcoming]["readyAt"]] if upcoming < len(waiting) else []
            if ready:  # every slot is taken: the next release lets one in
                events.append(releases[0])
            if not events or min(events) > now:
                return
            t = min(events)

    def _waiting(self) -> list[Job]:
        """Jobs that have not started and still can: not cancelled, not bound to expire."""
        return [job for job in self._jobs.values()
                if job["started"] is None and job["cancelled"] is None and job["outcome"] != "EXPIRED"]

    def _hold(self, paused: bool, t: float) -> None:
        """Pause (or release) every waiting job at `t`; idempotent, so safe on load and on each change."""
        for job in self._waiting():
            if paused and job["pausedAt"] is None:
                job["pausedAt"] = t
            elif not paused and job["pausedAt"] is not None:
                job["readyAt"] += t - job["pausedAt"]
                job["pausedAt"] = None
            else:
                continue
            self._save(job)

    def _start(self, job: Job, t: float) -> None:
        job["started"] = t
        self._save(job)
