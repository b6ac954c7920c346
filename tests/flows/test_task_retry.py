"""Retries at the right level: an outage that outlasts the embed stage's own retries fails the
`embed-online` task; Prefect retries it, and the retry resumes from what the table holds."""

from __future__ import annotations

import asyncio
import time

import pytest

from indexflow.emulator.faults import FaultInjector
from tests.flows.service_fixtures import table_ids, write_corpus  # noqa: E402


pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 2  # the stage's own attempts per call, kept small so the test is quick


def seed_for(pattern: list[str | None], rate: float) -> int:
    """A fault seed whose first draws give `pattern` (None = answered), found with the emulator's own injector."""
    for seed in range(10_000):
        injector = FaultInjector({"503": rate}, seed=seed)
        if [injector.next_fault() for _ in pattern] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")


async def _embed_task_runs(flow_run_name: str | None = None, state_name: str | None = None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )

    task_filter = TaskRunFilter(name=TaskRunFilterName(like_="embed-online"))
    if state_name:
        task_filter.state = TaskRunFilterState(name=TaskRunFilterStateName(any_=[state_name]))
    flow_filter = FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])) if flow_run_name else None
    async with get_client() as client:
        return await client.read_task_runs(task_run_filter=task_filter, flow_run_filter=flow_filter)


@pytest.mark.parametrize("rebuild", [False, True], ids=["incremental", "rebuild"])
def test_prefect_task_retry_resumes_without_reembedding(prefect_in_process, emu, tmp_path, monkeypatch, rebuild):
    # with rebuild=True the table is dropped once per run, never again by the retried task
    from indexflow.flows.index_corpus import index_corpus

    table = "rebuilt" if rebuild else "retry"
    run_name = f"index-{table}-online"

    n, per_call = 20, 4
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", n)
    db = tmp_path / "db"
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    # one call at a time, so call k meets the k-th fault draw: two batches are committed, then the
    # third batch gets 503 on both of its attempts and the stage gives up
    emu.admin.set_faults(rates={"503": 0.5}, seed=seed_for([None, None, "503", "503"], 0.5))

    async def run_and_end_the_outage():
        flow = asyncio.create_task(index_corpus(
            corpus=str(corpus), table=table, db_uri=str(db), base_url=emu.base_url, rebuild=rebuild,
            batch_size=per_call, concurrency=1, options={"max_attempts": MAX_ATTEMPTS}, return_state=True,
        ))
        # the outage ends while Prefect waits to retry the task (event-driven, no guessed sleep)
        deadline = time.monotonic() + 60
        while not await _embed_task_runs(run_name, "AwaitingRetry"):
            assert not flow.done(), f"the run ended without a Prefect task retry: {flow.result()}"
            assert time.monotonic() < deadline, "embed-online never reached AwaitingRetry"
            await asyncio.sleep(0.2)
        committed_before_retry = len(table_ids(db, table))
        emu.admin.set_faults(clear=True, rates={})
        return committed_before_retry, await flow

    committed_before_retry, state = asyncio.run(run_and_end_the_outage())

    assert state.is_completed(), state.message
    assert committed_before_retry == 2 * per_call  # what the failed attempt had committed
    stats = emu.admin.stats()
    assert stats.get("faults.503", 0) == MAX_ATTEMPTS
    assert stats.get("texts", 0) == n  # nothing embedded twice
    ids = table_ids(db, table)
    assert len(ids) == n and len(set(ids)) == n
    (task_run,) = asyncio.run(_embed_task_runs(run_name))
    assert task_run.run_count == 2 and task_run.state_name == "Completed"
