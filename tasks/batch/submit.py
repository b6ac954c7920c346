"""Submitting one job: inline or file, its INTENT (with items) recorded, created at most once, its name recorded."""

from __future__ import annotations

import asyncio
import logging

from indexflow.tasks.batch.context import BatchContext
from indexflow.tasks.batch.create import create_once
from indexflow.tasks.batch.ledger import CREATED, INTENT, JobRecord, job_key
from indexflow.tasks.batch.wire import body_size, file_body, inline_body, is_payload_too_large, jsonl_input
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import BadRequestError, IndexflowError
from indexflow.tasks.gemini.batches import create_job, find_job_by_display_name
from indexflow.tasks.gemini.files import upload_jsonl

log = logging.getLogger("indexflow.batch")


class Submitter:
    """Numbers this run's parts and turns each into one recorded job."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.part = 0

    async def submit(self, chunks: list[Chunk], *, parent: str | None = None, generation: int = 0) -> JobRecord:
        """One job: route, INTENT (with items), create at most once, name recorded; returns its record."""
        ctx, opts = self.ctx, self.ctx.opts
        self.part += 1
        key = job_key(ctx.settings.table, ctx.out.run_id, self.part)
        body = inline_body(chunks, ctx.recipe, key, priority=opts.priority)
        route, input_file = "inline", None
        if body_size(body) > opts.inline_limit_bytes:
            route = "file"
            input_file = await upload_jsonl(ctx.client, jsonl_input(chunks, ctx.recipe), key)
            body = file_body(input_file, key, priority=opts.priority)
        record = JobRecord(key, ctx.out.run_id, self.part, INTENT, route, len(chunks), sum(c.tokens for c in chunks),
                           input_file=input_file, parent=parent, generation=generation, priority=opts.priority)
        await asyncio.to_thread(ctx.ledger.record_intent, record, chunks)
        try:
            try:
                name = await self._create(key, body, record)
            except BadRequestError as error:
                if route != "inline" or not is_payload_too_large(error):
                    raise
                # The server's inline limit is below ours: the file route has no such limit.
                input_file = await upload_jsonl(ctx.client, jsonl_input(chunks, ctx.recipe), key)
                record = await asyncio.to_thread(ctx.ledger.update, key, route="file", input_file=input_file)
                name = await self._create(key, file_body(input_file, key, priority=opts.priority), record)
        except IndexflowError as error:
            if getattr(error, "state", None) != "UNKNOWN":  # the server answered: no job was made
                await asyncio.to_thread(ctx.ledger.update, key, resolution="not_created", error=str(error)[:500])
            raise
        record = await asyncio.to_thread(ctx.ledger.update, key, state=CREATED, job_name=name)
        ctx.out.jobs_created += 1
        ctx.out.chunks_submitted += len(chunks)
        log.info("created %s job %s (%s): %d chunks, priority %d", record.route, name, key, len(chunks),
                 record.priority)
        return record

    async def _create(self, key: str, body: dict, record: JobRecord) -> str:
        ctx = self.ctx
        create = lambda: create_job(ctx.client, ctx.recipe.model, body, deadline_seconds=ctx.deadline)  # noqa: E731
        find = lambda: find_job_by_display_name(ctx.client, key, since=record.created_at,  # noqa: E731
                                                deadline_seconds=ctx.deadline)
        return await create_once(create, find, attempts=ctx.opts.create_attempts, sleep=ctx.sleep)
