"""Acting on recorded batch jobs outside a run: cancel them (CLI, flow cancellation) and show their status."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from indexflow.tasks.batch.ledger import CANCELLED, JobRecord, Ledger
from indexflow.tasks.batch.watch import read_status
from indexflow.tasks.batch.wire import JobStatus
from indexflow.tasks.errors import ConfigError, IndexflowError
from indexflow.tasks.gemini.batches import cancel_job, find_job_by_display_name
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.settings import Endpoint, Settings


async def cancel_live_jobs(settings: Settings, endpoint: Endpoint, *, run_id: str | None = None) -> list[str]:
    """Cancel the table's live jobs (only run `run_id`'s when given); returns the job names cancelled.

    For the flow's on-cancellation hook. Jobs that already finished cannot be cancelled and stay
    open, so a later run still collects what was paid for.
    """
    return await cancel_jobs(settings.db_uri, settings.table, endpoint, run_id=run_id)


async def cancel_jobs(db_uri: str, table: str, endpoint: Endpoint, *, refs: Sequence[str] | None = None,
                      run_id: str | None = None) -> list[str]:
    """Cancel live jobs of the ledger: those named in `refs` (key, `batches/ID` or ID), else all (of `run_id`)."""
    try:
        ledger = await asyncio.to_thread(Ledger.open, db_uri, table, create=False)
    except IndexflowError:
        if refs:
            raise
        return []
    if refs is not None:
        records = []
        for ref in refs:
            record = await asyncio.to_thread(ledger.find, ref)
            if record is None:
                raise ConfigError(f"no batch job {ref!r} in the ledger of table {table!r} ({db_uri}); "
                                  "`indexflow batches list` shows the known jobs", job=ref, table=table)
            records.append(record)
    else:
        records = [r for r in await asyncio.to_thread(ledger.jobs, open_only=True)
                   if run_id is None or r.run_id == run_id]
    client = make_client(endpoint)
    cancelled = []
    for record in records:
        if not record.live:
            continue
        name = record.job_name or await find_job_by_display_name(client, record.key, since=record.created_at)
        if name is not None:
            if not await cancel_job(client, name):
                continue  # finished meanwhile: leave it to be collected
            cancelled.append(name)
        await asyncio.to_thread(ledger.update, record.key, state=CANCELLED, job_name=name, resolution="reported",
                                error="cancelled on request")
    return cancelled


async def job_status(db_uri: str, table: str, ref: str, endpoint: Endpoint) -> tuple[JobRecord, JobStatus | None]:
    """The ledger row of job `ref` and, when it has a name the endpoint knows, its live status."""
    ledger = await asyncio.to_thread(Ledger.open, db_uri, table, create=False)
    record = await asyncio.to_thread(ledger.find, ref)
    if record is None:
        raise ConfigError(f"no batch job {ref!r} in the ledger of table {table!r} ({db_uri}); "
                          "`indexflow batches list` shows the known jobs", job=ref, table=table)
    if record.job_name is None:
        return record, None
    try:
        return record, await read_status(make_client(endpoint), record.job_name)
    except ConfigError:  # 404: deleted, or another endpoint than the one that ran it
        return record, None
