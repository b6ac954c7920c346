"""Looking at a job: its status read (transient failures counted), each look handed on, its success rate watched."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from indexflow.tasks.batch.alerts import aemit, check
from indexflow.tasks.batch.context import BatchContext
from indexflow.tasks.batch.ledger import JobRecord
from indexflow.tasks.batch.wire import JobStatus, parse_status
from indexflow.tasks.errors import ConfigError, IndexflowError
from indexflow.tasks.gemini.batches import get_job
from indexflow.tasks.settings import DEFAULT_CALL_DEADLINE_SECONDS

log = logging.getLogger("indexflow.batch")

OnJobStatus = Callable[[JobStatus], None]
MAX_POLL_ERRORS = 20  # consecutive transient status-read failures before the run gives up (jobs stay recorded)


async def read_status(client: Any, name: str, *,
                      deadline_seconds: float | None = DEFAULT_CALL_DEADLINE_SECONDS) -> JobStatus:
    """Job `name`'s status, counts included; raises IndexflowError (ConfigError for a 404)."""
    return parse_status(await get_job(client, name, deadline_seconds=deadline_seconds))


class StatusReader:
    """Reads a job's status; a transient failure is looked past until too many come in a row."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.errors = 0  # consecutive transient failures

    async def status(self, record: JobRecord) -> JobStatus | None:
        """The job's status; None after a transient failure (the next round looks again)."""
        try:
            status = await read_status(self.ctx.client, record.job_name, deadline_seconds=self.ctx.deadline)
        except ConfigError as error:  # 404: the job was deleted behind our back
            return JobStatus(record.job_name, "FAILED", True, error=str(error))
        except IndexflowError as error:
            self.errors += 1
            if not error.transient or self.errors > MAX_POLL_ERRORS:
                raise
            log.warning("polling %s failed (%s); looking again next round", record.job_name, error)
            return None
        self.errors = 0
        return status


class RateWatch:
    """Hands every look to the caller and alerts on a job's success rate, once while polling and at the end."""

    def __init__(self, ctx: BatchContext, on_job_status: OnJobStatus | None) -> None:
        self.ctx, self.on_job_status = ctx, on_job_status
        self.alerted: set[str] = set()  # jobs already alerted on while polling

    async def look(self, record: JobRecord, status: JobStatus) -> None:
        """One look at a job: to the caller's callback, then to the alert rules."""
        if self.on_job_status is not None:
            self.on_job_status(status)
        threshold = self.ctx.opts.success_rate_threshold
        final = status.state == "SUCCEEDED"
        if not final and (record.key in self.alerted or not status.requests
                          or (status.requests - status.failed) / status.requests >= threshold):
            return  # while polling, only a job that can no longer finish at the threshold is worth a page
        alert = check(table=self.ctx.settings.table, job_key=record.key, job_name=status.name or record.job_name,
                      succeeded=status.succeeded, failed=status.failed, threshold=threshold, final=final)
        if alert is not None:
            self.alerted.add(record.key)
            log.warning("%s", alert.message)
            self.ctx.out.alerts.append(alert)
            await aemit(alert)  # delivered before the run goes on: a killed run still told someone
