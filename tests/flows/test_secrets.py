"""The API key never leaves the process that uses it: not in server logs, flow logs, artifacts,
parameters, state messages or the worker's output — on success and on an auth failure."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.flows.service_fixtures import (  # noqa: E402
    TEST_KEY,
    files_holding,
    run_deployment_cli,
    wait_final,
    write_corpus,
)


pytestmark = pytest.mark.slow

WRONG_KEY = "indexflow-wrong-key-Qm8vT1xR6pL0"
SECRET_BLOCK = "gemini-api-key"


async def everything_prefect_stored() -> str:
    """Every log line, artifact, deployment and flow run (parameters, state messages) the server holds."""
    from prefect.client.orchestration import get_client

    parts: list[str] = []
    async with get_client() as client:
        offset = 0
        while batch := await client.read_logs(limit=200, offset=offset):
            parts += [log.message for log in batch]
            offset += len(batch)
        for artifact in await client.read_artifacts():
            parts += [str(artifact.data), str(artifact.description)]
        for deployment in await client.read_deployments():
            parts.append(deployment.model_dump_json())
        for run in await client.read_flow_runs():
            parts.append(run.model_dump_json())
        for task_run in await client.read_task_runs():
            parts.append(task_run.model_dump_json())
    return "\n".join(parts)


def assert_nowhere(key: str, *texts: str) -> None:
    for text in texts:
        assert key not in text
        assert key[8:] not in text  # nor its tail (a masked prefix would still leak the rest)


async def wait_for_logs(flow_run_id, needle: str, timeout: float = 30) -> None:
    """In-process runs ship logs in the background; wait until this run's are on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any(needle in log.message for log in logs):
                return
            await asyncio.sleep(0.2)
    pytest.fail(f"no log containing {needle!r} for flow run {flow_run_id}")


def test_key_from_worker_environment_is_never_stored(worker, semu, tmp_path):
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 6)
    run = asyncio.run(wait_final(run_deployment_cli("on-demand", corpus=str(corpus), table="secret-env",
                                                    db_uri=str(tmp_path / "db"))))
    assert run.state_name == "Completed", run.state.message
    assert semu.admin.stats().get("calls", 0) > 0  # the emulator accepts TEST_KEY only: the key was used
    asyncio.run(wait_for_logs(run.id, "Embedding endpoint"))

    server_log = (Path(os.environ["PREFECT_HOME"]) / "server.log").read_text(errors="replace")
    assert_nowhere(TEST_KEY, asyncio.run(everything_prefect_stored()), worker.output(), server_log)


def test_key_from_secret_block_is_used_and_never_stored(prefect_in_process, semu, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    from indexflow.flows.index_corpus import index_corpus

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 6)

    def run(table: str):
        return asyncio.run(index_corpus(corpus=str(corpus), table=table, db_uri=str(tmp_path / "db"),
                                        base_url=semu.base_url, return_state=True))

    Secret(value=TEST_KEY).save(SECRET_BLOCK, overwrite=True)
    try:
        ok = run("secret-block")
        assert ok.is_completed(), ok.message
        assert semu.admin.stats().get("calls", 0) > 0  # only the block held the key the emulator accepts
        asyncio.run(wait_for_logs(ok.state_details.flow_run_id, "Embedding endpoint"))

        # a rejected key fails the run; the failure must not quote the key either
        Secret(value=WRONG_KEY).save(SECRET_BLOCK, overwrite=True)
        refused = run("secret-wrong")
        assert refused.is_failed()
        assert semu.admin.stats().get("errors.400", 0) + semu.admin.stats().get("errors.403", 0) > 0
        asyncio.run(wait_for_logs(refused.state_details.flow_run_id, "Finished in state Failed"))
    finally:
        from prefect.client.orchestration import get_client

        async def delete_block():
            async with get_client() as client:
                await client.delete_block_document(
                    (await client.read_block_document_by_name(SECRET_BLOCK, block_type_slug="secret")).id)

        asyncio.run(delete_block())

    stored = asyncio.run(everything_prefect_stored())
    assert_nowhere(TEST_KEY, stored, str(ok.message))
    assert_nowhere(WRONG_KEY, stored, str(refused.message))


def test_without_a_key_or_a_secret_block_the_emulator_is_used(prefect_in_process, monkeypatch):
    from indexflow.flows.index_corpus import _api_key_from_environment

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    # the server answers, but holds no block named gemini-api-key
    assert _api_key_from_environment() is None


def test_a_server_that_quotes_the_key_gets_it_repeated_nowhere(worker, semu, tmp_path):
    """The worker's key, quoted back by a 403 (as some gateways do), is in no log, state, artifact,
    worker output or file under the table and PREFECT_HOME: redacted by value, not by shape."""
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", 6)
    db = tmp_path / "db"
    semu.admin.set_faults(script=[{"kind": "quote_key", "count": 1}])
    run = asyncio.run(wait_final(run_deployment_cli("on-demand", corpus=str(corpus), table="secret-quoted",
                                                    db_uri=str(db))))
    assert run.state_name == "Failed"
    assert semu.admin.stats()["faults.quote_key"] == 1
    # The server's message came through, masked where it quoted the key.
    assert "403 PERMISSION_DENIED: API key '***' is not authorized" in run.state.message, run.state.message
    asyncio.run(wait_for_logs(run.id, "PERMISSION_DENIED"))

    home = Path(os.environ["PREFECT_HOME"])
    server_log = (home / "server.log").read_text(errors="replace")
    assert_nowhere(TEST_KEY, asyncio.run(everything_prefect_stored()), worker.output(), server_log)
    assert files_holding(db, TEST_KEY, TEST_KEY[8:]) == []
    assert files_holding(home, TEST_KEY, TEST_KEY[8:]) == []
