"""One writer per table: the lock itself (file and Prefect backends) and two overlapping runs."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import time

import pytest

from indexflow.tasks.writer_lock import (
    TableBusyError,
    is_local,
    lock_path,
    table_writer,
    writer_limit_name,
)
from tests.flows.service_fixtures import (  # noqa: E402
    REPO,
    run_deployments_cli,
    summary_rows,
    table_ids,
    wait_final,
    write_corpus,
)



def test_backend_follows_where_the_table_lives():
    assert is_local(".indexflow/lancedb") and is_local("/data/db") and is_local("file:///data/db")
    assert not is_local("s3://bucket/db") and not is_local("gs://b/db") and not is_local("db://project")
    assert writer_limit_name("s3://b/db", "Docs v2") != writer_limit_name("s3://b/other", "Docs v2")
    assert writer_limit_name("s3://b/db", "Docs v2").startswith("indexflow-writer-docs-v2-")


async def _second_writer_waits(db_uri: str, backend: str) -> list[str]:
    events: list[str] = []
    first_holds = asyncio.Event()
    messages: list[str] = []

    async def first():
        async with table_writer(db_uri, "docs", backend=backend):
            events.append("first in")
            first_holds.set()
            await asyncio.sleep(0.5)
            events.append("first out")

    async def second():
        await first_holds.wait()
        async with table_writer(db_uri, "docs", backend=backend, on_wait=messages.append):
            events.append("second in")

    await asyncio.gather(first(), second())
    assert messages and "docs" in messages[0]
    return events


async def _busy_error(db_uri: str, backend: str, wait: float) -> TableBusyError:
    first_holds = asyncio.Event()
    release = asyncio.Event()

    async def first():
        async with table_writer(db_uri, "docs", backend=backend):
            first_holds.set()
            await release.wait()

    holder = asyncio.create_task(first())
    await first_holds.wait()
    try:
        with pytest.raises(TableBusyError) as caught:
            async with table_writer(db_uri, "docs", wait_seconds=wait, backend=backend):
                pytest.fail("got a lock another run holds")
    finally:
        release.set()
        await holder
    # free again once the holder is done
    async with table_writer(db_uri, "docs", wait_seconds=0, backend=backend):
        pass
    return caught.value


def test_file_lock_makes_the_second_writer_wait(tmp_path):
    events = asyncio.run(_second_writer_waits(str(tmp_path / "db"), "file"))
    assert events == ["first in", "first out", "second in"]
    assert lock_path(str(tmp_path / "db"), "docs").exists()


@pytest.mark.parametrize("wait", [0, 0.3])
def test_file_lock_busy_error_names_table_and_lock(tmp_path, wait):
    error = asyncio.run(_busy_error(str(tmp_path / "db"), "file", wait))
    assert error.table == "docs" and error.db_uri == str(tmp_path / "db")
    assert error.lock == str(lock_path(str(tmp_path / "db"), "docs"))
    assert error.waited_seconds >= wait and not error.transient
    assert "pid" in error.holder
    assert pickle.loads(pickle.dumps(error)).lock == error.lock


def test_file_lock_is_released_when_its_holder_dies(tmp_path):
    """A run killed with SIGKILL (OOM, a lost node) must not block the table for good."""
    db = str(tmp_path / "db")
    script = (
        "import asyncio, sys\n"
        "from indexflow.tasks.writer_lock import table_writer\n"
        "async def main():\n"
        f"    async with table_writer({db!r}, 'docs'):\n"
        "        print('held', flush=True)\n"
        "        await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"

        async def busy():
            with pytest.raises(TableBusyError):
                async with table_writer(db, "docs", wait_seconds=0):
                    pass

        asyncio.run(busy())
        proc.kill()
        proc.wait()

        async def free():
            async with table_writer(db, "docs", wait_seconds=5) as lock:
                return lock

        assert asyncio.run(free()) == str(lock_path(db, "docs"))
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_prefect_limit_makes_the_second_writer_wait(prefect_api):
    from prefect.client.orchestration import get_client

    db_uri = "s3://indexflow-test/wait"
    events = asyncio.run(_second_writer_waits(db_uri, "prefect"))
    assert events == ["first in", "first out", "second in"]

    async def read_limit():
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(writer_limit_name(db_uri, "docs"))

    limit = asyncio.run(read_limit())
    assert limit.limit == 1 and limit.active_slots == 0


@pytest.mark.slow
def test_prefect_limit_busy_error(prefect_api):
    error = asyncio.run(_busy_error("s3://indexflow-test/busy", "prefect", 0))
    assert error.lock == writer_limit_name("s3://indexflow-test/busy", "docs")
    assert error.table == "docs" and not error.transient


@pytest.mark.slow
def test_two_overlapping_deployment_runs_embed_each_chunk_once(worker, semu, tmp_path):
    n = 40
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", n)
    db = tmp_path / "db"
    # The test holds the table's lock until both runs are alive and waiting for it, so they surely
    # overlap however slowly the worker starts them; then one writes while the other still waits.
    holder = _hold_lock(str(db), "overlap")
    try:
        semu.admin.set_config(latency_base_ms=100)
        params = dict(corpus=str(corpus), table="overlap", db_uri=str(db), batch_size=4, concurrency=1)
        first, second = run_deployments_cli("on-demand", params, params)
        asyncio.run(_wait_for_waiting_logs([first, second]))
    finally:
        holder.kill()
        holder.wait()

    async def both():
        return await asyncio.gather(wait_final(first), wait_final(second))

    runs = asyncio.run(both())
    assert [r.state_name for r in runs] == ["Completed", "Completed"]

    ids = table_ids(db, "overlap")
    assert len(ids) == n and len(set(ids)) == n
    stats = semu.admin.stats()
    assert stats.get("texts", 0) == n  # one run's worth of embeddings, not two
    embedded = {r.id: asyncio.run(summary_rows(r.id, "overlap"))["chunks embedded"] for r in runs}
    assert sorted(embedded.values()) == [0, n]
    (writer,) = [r for r in runs if embedded[r.id] == n]
    (follower,) = [r for r in runs if embedded[r.id] == 0]
    assert follower.end_time > writer.end_time, "the run that embedded nothing waited for the one that wrote"


def _hold_lock(db_uri: str, table: str) -> subprocess.Popen:
    """Another process holding the table's writer lock until killed."""
    script = (
        "import asyncio\n"
        "from indexflow.tasks.writer_lock import table_writer\n"
        "async def main():\n"
        f"    async with table_writer({db_uri!r}, {table!r}):\n"
        "        print('held', flush=True)\n"
        "        await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


async def _wait_for_waiting_logs(flow_run_ids, timeout: float = 120):
    """Return once every run's logs say it is waiting for the table's lock."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    needle = "table 'overlap' is being written by another run ("
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            waiting = set()
            for run_id in flow_run_ids:
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
                if any(needle in log.message and "waiting for lock" in log.message for log in logs):
                    waiting.add(run_id)
            if len(waiting) == len(flow_run_ids):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(waiting)} of {len(flow_run_ids)} runs logged that they wait for the lock "
                            f"within {timeout:.0f}s")
            await asyncio.sleep(0.3)