"""Service guarantees on the real Prefect server with the repository's deployments and a process
worker (issue 9): cancelling a run cancels its live batch jobs only when asked, and the nightly
deployment cancels a second run while the first one runs (concurrency_limit 1, CANCEL_NEW)."""

from __future__ import annotations

import asyncio
import threading
import time
from uuid import UUID

import pytest
from google import genai
from google.genai import types

from indexflow.tasks.batch.ledger import CANCELLED, Ledger
from indexflow.tasks.writer_lock import table_writer
from tests.flows.service_fixtures import (
    RUN_TIMEOUT,
    TEST_KEY,
    summary_rows,
    table_ids,
    wait_final,
    write_corpus,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")]

HOOK = "_cancel_batch_jobs"


async def run_logs(flow_run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


def wait_for(what: str, check, timeout: float = RUN_TIMEOUT, interval: float = 0.2):
    """Poll `check()` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def start_deployment(name: str, params: dict, **kw) -> UUID:
    """A run of deployment `index-corpus/<name>` through the API (what `prefect deployment run` does)."""
    from prefect.deployments import run_deployment

    return run_deployment(f"index-corpus/{name}", parameters=params, timeout=0, **kw).id


def wait_for_log(flow_run_id: UUID, needle: str, worker, timeout: float = 60) -> list[str]:
    """The run's log messages once one contains `needle` (the worker ships them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = asyncio.run(run_logs(flow_run_id))
        if any(needle in m for m in logs):
            return logs
        if time.monotonic() > deadline:
            pytest.fail(f"no log line with {needle!r} for flow run {flow_run_id} within {timeout:.0f}s:\n"
                        + "\n".join(logs) + "\n--- worker output (tail) ---\n" + worker.output()[-4000:])
        time.sleep(0.2)


def recorded_jobs(db_uri: str, table: str):
    try:
        return Ledger.open(db_uri, table, create=False).jobs()
    except Exception:  # no ledger yet
        return []


def live_state(base_url: str, job_name: str) -> str:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"))
    try:
        return client.batches.get(name=job_name).state.name
    finally:
        client.close()


# -- 7. cancel_on_flow_cancel -------------------------------------------------------------------


async def cancel(flow_run_id: UUID) -> None:
    """What `prefect flow-run cancel` does: ask the server to move the run to Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the test"))


def test_cancelling_a_batch_run_cancels_its_live_jobs_only_when_asked(worker, semu, tmp_path):
    """Two batch runs at once, one with cancel_on_flow_cancel; both cancelled while their job runs."""
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 20)
    db = str(tmp_path / "db")
    semu.admin.set_batch_config({"pending_seconds": 0.05, "running_seconds": 600})  # alive until cancelled
    base = dict(corpus=str(corpus), db_uri=db, mode="batch")
    try:
        on = start_deployment("on-demand", base | {"table": "cancel-on", "options": {
            "batch_poll_seconds": 0.2, "cancel_on_flow_cancel": True}})
        off = start_deployment("on-demand", base | {"table": "cancel-off", "options": {"batch_poll_seconds": 0.2}})
        jobs = {}
        for table in ("cancel-on", "cancel-off"):
            (jobs[table],) = wait_for(f"a batch job of {table} recorded with its name",
                                      lambda: [j for j in recorded_jobs(db, table) if j.job_name] or None)
            assert live_state(semu.base_url, jobs[table].job_name) in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

        for run_id in (on, off):
            asyncio.run(cancel(run_id))
        for run_id in (on, off):
            run = asyncio.run(wait_final(run_id))
            assert run.state.type.value == "CANCELLED", run.state_name
        # The worker runs the on-cancellation hook (in a subprocess of its own) before it marks a run
        # Cancelled; the hook's log line reaches the server in the background.
        cancelled, left = jobs["cancel-on"], jobs["cancel-off"]
        logs = {on: wait_for_log(on, f"cancelled 1 live batch job(s): ['{cancelled.job_name}']", worker),
                off: asyncio.run(run_logs(off))}
        for lines in logs.values():
            assert not any(f"error was encountered while running hook {HOOK!r}" in m for m in lines), lines

        stats = semu.admin.stats()
        assert stats["batches.created"] == 2 and stats.get("batches.state.CANCELLED", 0) == 1

        assert live_state(semu.base_url, cancelled.job_name) == "JOB_STATE_CANCELLED"
        (record,) = recorded_jobs(db, "cancel-on")
        assert record.state == CANCELLED and record.resolution == "reported"

        assert live_state(semu.base_url, left.job_name) in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
        (record,) = recorded_jobs(db, "cancel-off")
        assert record.live and record.state != CANCELLED, "left alive and recorded for the next run to collect"
        assert not any("live batch job" in m for m in logs[off])
        for table in ("cancel-on", "cancel-off"):
            assert table_ids(tmp_path / "db", table) == []
    finally:
        semu.admin.reset(jobs=True)  # no job of this test outlives it


def test_cancelling_an_online_run_keeps_what_it_embedded_and_the_next_run_resumes(worker, semu, tmp_path):
    """A throttled run commits its embedded group on time (write_group_seconds), not at its next result,
    so cancelling it a minute before that result loses nothing it paid for."""
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 250)
    db = tmp_path / "db"
    # 100 texts a minute: the first call goes at once, the second would wait a minute.
    run_id = start_deployment("on-demand", dict(corpus=str(corpus), db_uri=str(db), table="cancel-online",
                                                 tier="unlimited", rpm=100))
    wait_for("the first group committed", lambda: len(table_ids(db, "cancel-online")) == 100
             if (db / "cancel-online.lance").exists() else None)
    assert asyncio.run(flow_run(run_id)).state.is_running()  # waiting for its next minute of quota
    asyncio.run(cancel(run_id))
    run = asyncio.run(wait_final(run_id))
    assert run.state.type.value == "CANCELLED", run.state_name
    assert sorted(table_ids(db, "cancel-online")) == [f"doc-{i:03d}#0" for i in range(100)]
    assert semu.admin.stats()["texts"] == 100

    again = start_deployment("on-demand", dict(corpus=str(corpus), db_uri=str(db), table="cancel-online",
                                               tier="unlimited"))
    done = asyncio.run(wait_final(again))
    assert done.state_name == "Completed", done.state.message
    rows = asyncio.run(summary_rows(again, "cancel-online"))
    assert rows["chunks embedded"] == 150 and rows["chunks unchanged"] == 100
    ids = table_ids(db, "cancel-online")
    assert len(ids) == len(set(ids)) == 250 and semu.admin.stats()["texts"] == 250


def test_cancelling_an_online_run_commits_what_it_embedded_when_the_worker_signals(worker, semu, tmp_path):
    """The worker's SIGTERM winds the run down: what was embedded is committed then and there (no
    group is due for another ten minutes), and the run ends Cancelled saying what it kept."""
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 250)
    db = tmp_path / "db"
    params = dict(corpus=str(corpus), db_uri=str(db), table="cancel-graceful", tier="unlimited", rpm=100,
                  options={"write_group_seconds": 600})
    run_id = start_deployment("on-demand", params)
    wait_for("the first call answered", lambda: semu.admin.stats().get("texts", 0) == 100)
    wait_for_log(run_id, "Plan: 250 chunk(s) to embed", worker)  # the embed stage is under way
    assert not (db / "cancel-graceful.lance").exists() or table_ids(db, "cancel-graceful") == []
    asyncio.run(cancel(run_id))
    run = asyncio.run(wait_final(run_id))
    assert run.state.type.value == "CANCELLED", run.state_name
    assert run.state.message == "stopped by SIGTERM: kept 100 chunks; run again to resume", run.state.message
    assert sorted(table_ids(db, "cancel-graceful")) == [f"doc-{i:03d}#0" for i in range(100)]
    assert semu.admin.stats()["texts"] == 100
    assert any("stopping: committing what is embedded (SIGTERM" in m for m in asyncio.run(run_logs(run_id)))

    again = start_deployment("on-demand", params | {"rpm": None})
    done = asyncio.run(wait_final(again))
    assert done.state_name == "Completed", done.state.message
    ids = table_ids(db, "cancel-graceful")
    assert len(ids) == len(set(ids)) == 250 and semu.admin.stats()["texts"] == 250


# -- 8. the nightly deployment: concurrency_limit 1, CANCEL_NEW ----------------------------------


async def flow_run(flow_run_id: UUID):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_nightly_cancels_a_second_run_while_the_first_runs(worker, semu, tmp_path):
    n = 40
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", n)
    db = tmp_path / "db"
    params = dict(corpus=str(corpus), table="nightly", db_uri=str(db), batch_size=4, concurrency=1)
    # The test holds the table's writer lock: the first run stays Running (waiting for it) for
    # as long as the test needs, however slowly a loaded machine starts the second.
    release, held = threading.Event(), threading.Event()

    def hold_the_table() -> None:
        async def hold() -> None:
            async with table_writer(str(db), "nightly"):
                held.set()
                await asyncio.to_thread(release.wait, 600)
        asyncio.run(hold())

    holder = threading.Thread(target=hold_the_table, daemon=True)
    holder.start()
    assert held.wait(30)

    def start():
        # The nightly deployment as deployed (its limit and collision strategy), on the queue the
        # session's worker serves: the worker never serves `scheduled`, where real nightly runs wait.
        return start_deployment("nightly", params, work_queue_name="default")

    try:
        first = start()
        wait_for("the first nightly run running", lambda: asyncio.run(flow_run(first)).state.is_running())
        second = start()
        cancelled = asyncio.run(wait_final(second))
        still = asyncio.run(flow_run(first))
        assert cancelled.state.type.value == "CANCELLED", cancelled.state_name
        assert still.state.is_running(), f"the first run was {still.state_name} when the second was cancelled"
        assert cancelled.state.message == "Deployment concurrency limit reached."  # CANCEL_NEW, not a crash
    finally:
        release.set()  # let the first one finish
        holder.join(30)
    done = asyncio.run(wait_final(first))
    assert done.state_name == "Completed", done.state.message
    assert asyncio.run(summary_rows(first, "nightly"))["chunks embedded"] == n
    ids = table_ids(db, "nightly")
    assert len(ids) == len(set(ids)) == n and semu.admin.stats()["texts"] == n  # one run's worth, not two
    assert not any("Beginning flow run" in m for m in asyncio.run(run_logs(second))), "the second never ran"
