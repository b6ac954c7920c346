"""Fixtures and helpers for the service tests: a standalone emulator, the repository's deployments
on the session's Prefect server, a process worker, and ways to trigger and read runs.

Every process started here is stopped at the end of the session, the worker before the server
(a worker whose server is gone ignores SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from indexflow.emulator.admin import AdminClient
from tests.prefect_server import free_port, server_env

REPO = Path(__file__).resolve().parents[2]
POOL = "indexflow-process"
# Not shaped like a Google key ("AIza…"), so the redaction net in tasks/gemini.py cannot hide a leak.
TEST_KEY = "indexflow-test-key-7fQ2xK9mZ3vB8nL4"
RUN_TIMEOUT = 180.0


def python_env(**extra: str) -> dict[str, str]:
    """The current environment (with the session's PREFECT_API_URL/HOME) plus `extra`."""
    env = server_env(Path(os.environ["PREFECT_HOME"]), os.environ["PREFECT_API_URL"])
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_GEMINI_BASE_URL", None)
    env.update(extra)
    return env


def prefect_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run `prefect <args>` from the repository root; returns stdout, fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=REPO, env=env or python_env(),
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(f"prefect {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started, SIGKILL what of it does not go.

    The group outlives its leader when a member ignores SIGTERM (`make worker`: bash and make exit,
    a worker whose server is gone does not), so the group is waited on, not only the leader."""
    deadline = time.monotonic() + timeout
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                os.killpg(proc.pid, 0)  # ProcessLookupError once no member is left
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="session")
def prefect_in_process(prefect_api: str) -> str:
    """The session's API for flows run in this process; sends their queued logs and events before the server stops.

    Without the drain, whatever the background workers still hold is retried at interpreter
    exit against a stopped server, which held pytest up for over a minute.
    """
    yield prefect_api
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


# -- standalone emulator ------------------------------------------------------------------------


@dataclass
class StandaloneEmulator:
    """`python -m indexflow.emulator` in its own process: where flow processes reach it, and its admin client."""

    base_url: str
    admin: AdminClient
    log: Path


@pytest.fixture(scope="session")
def standalone_emulator(tmp_path_factory) -> StandaloneEmulator:
    """An emulator process that accepts only TEST_KEY."""
    log_path = tmp_path_factory.mktemp("emulator") / "emulator.log"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "indexflow.emulator", "--port", str(port), "--api-key", TEST_KEY, "--log-level", "warning"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/_emulator/stats", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"emulator did not start; see {log_path}")
                time.sleep(0.1)
        yield StandaloneEmulator(base_url, AdminClient(base_url), log_path)
    finally:
        stop(proc)


@pytest.fixture
def semu(standalone_emulator: StandaloneEmulator) -> StandaloneEmulator:
    """The standalone emulator after a reset (no faults, zero stats)."""
    standalone_emulator.admin.reset()
    return standalone_emulator


# -- deployments and worker ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def deployed(prefect_api: str) -> str:
    """The process work pool and every deployment of the repository's prefect.yaml; returns the deploy output."""
    prefect_cli("work-pool", "create", POOL, "--type", "process")
    return prefect_cli("--no-prompt", "deploy", "--all")


@dataclass
class Worker:
    log: Path
    proc: subprocess.Popen

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def worker(deployed: str, standalone_emulator: StandaloneEmulator, tmp_path_factory) -> Worker:
    """`prefect worker start` on the pool's default queue, its flow runs pointed at the emulator with TEST_KEY.

    Only the `default` queue: the nightly deployment sits on `scheduled`, so a test session
    near 02:00 UTC never runs the real nightly job.
    """
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = python_env(
        GEMINI_API_KEY=TEST_KEY,
        GOOGLE_GEMINI_BASE_URL=standalone_emulator.base_url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--work-queue", "default"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield Worker(log_path, proc)
    finally:
        stop(proc)


# -- runs ---------------------------------------------------------------------------------------


def run_deployment_cli(name: str, **params: Any) -> UUID:
    """`prefect deployment run 'index-corpus/<name>' --param k=v ...`; returns the flow run id."""
    return run_deployments_cli(name, params)[0]


def run_deployments_cli(name: str, *param_sets: dict[str, Any]) -> list[UUID]:
    """One `prefect deployment run` per parameter set, all started at once; returns the flow run ids."""
    procs = []
    for params in param_sets:
        args = [sys.executable, "-m", "prefect", "deployment", "run", f"index-corpus/{name}"]
        for key, value in params.items():
            args += ["--param", f"{key}={json.dumps(value)}"]
        procs.append(subprocess.Popen(args, cwd=REPO, env=python_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        if proc.returncode != 0 or not match:
            pytest.fail(f"prefect deployment run exited {proc.returncode}:\n{out}")
        ids.append(UUID(match.group(1)))
    return ids


async def wait_final(flow_run_id: UUID, timeout: float = RUN_TIMEOUT):
    """Poll the API until the flow run is in a final state; returns the flow run."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {flow_run_id} still {run.state_name} after {timeout}s")
            await asyncio.sleep(0.5)


async def summary_rows(flow_run_id: UUID, table: str) -> dict[str, Any]:
    """The run's summary table artifact (key per table) as {metric: value}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from indexflow.tasks.report import artifact_key

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("summary", table)])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert len(artifacts) == 1, f"expected one summary artifact for run {flow_run_id}, found {len(artifacts)}"
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return {row["metric"]: row["value"] for row in rows}


def write_corpus(path: Path, n: int, *, prefix: str = "doc") -> Path:
    """A JSONL corpus of `n` short documents, one chunk each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}-{i:03d}", "title": f"Topic {i}",
                                "text": f"Document {i} explains subject number {i} in a few plain words."}) + "\n")
    return path


def table_ids(db_uri: Path, table: str) -> list[str]:
    """Every id in the LanceDB table, duplicates included."""
    import lancedb

    return lancedb.connect(str(db_uri)).open_table(table).to_arrow().column("id").to_pylist()


def files_holding(root: Path, *needles: str) -> list[str]:
    """Every file under `root` whose bytes hold one of `needles`."""
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]
