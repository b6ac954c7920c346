"""The deployments of prefect.yaml as the server holds them: schedule, parameters, pull step, limits.

And proof that the cron schedule makes runs (SQLAlchemy 2.1 made the scheduler fail silently).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timezone

import pytest
import yaml

from tests.flows.service_fixtures import POOL, REPO  # noqa: E402


pytestmark = pytest.mark.slow


def declared() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


async def read_deployment(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(f"index-corpus/{name}")


def test_every_declared_deployment_is_registered_with_its_parameters(deployed):
    spec = declared()
    assert set(spec) == {"nightly", "on-demand", "backfill"}
    for name, want in spec.items():
        got = asyncio.run(read_deployment(name))
        assert got.entrypoint == "flows/index_corpus.py:index_corpus"
        assert got.work_pool_name == POOL
        assert got.parameters == want["parameters"]
        # the process worker starts runs in a temp dir; the pull step moves them into this checkout
        assert got.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert asyncio.run(read_deployment("backfill")).parameters["mode"] == "batch"
    assert asyncio.run(read_deployment("nightly")).parameters["mode"] == "online"


def test_nightly_schedule_is_registered_as_declared(deployed):
    want = declared()["nightly"]["schedules"][0]
    got = asyncio.run(read_deployment("nightly"))
    assert len(got.schedules) == 1
    schedule = got.schedules[0]
    assert schedule.schedule.cron == want["cron"] == "0 2 * * *"
    assert schedule.schedule.timezone == want["timezone"] == "UTC"
    assert schedule.active is True
    assert got.work_queue_name == "scheduled"
    assert got.global_concurrency_limit is not None and got.global_concurrency_limit.limit == 1
    assert got.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert asyncio.run(read_deployment("on-demand")).schedules == []


def test_cron_schedule_creates_scheduled_runs(deployed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    nightly = asyncio.run(read_deployment("nightly"))

    async def scheduled_runs():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            )

    # the scheduler service creates them on deploy and on its loop; poll, don't sleep a guess
    deadline = time.monotonic() + 60
    runs = asyncio.run(scheduled_runs())
    while not runs and time.monotonic() < deadline:
        time.sleep(0.5)
        runs = asyncio.run(scheduled_runs())
    assert runs, "the scheduler created no run for the nightly deployment (SQLAlchemy >= 2.1?)"
    for run in runs:
        start = run.expected_start_time.astimezone(timezone.utc)
        assert (start.hour, start.minute, start.second) == (2, 0, 0)
    assert len({r.expected_start_time for r in runs}) == len(runs)


def test_schedule_pause_and_resume_commands_of_the_readme(deployed):
    from tests.flows.service_fixtures import prefect_cli

    schedule_id = str(asyncio.run(read_deployment("nightly")).schedules[0].id)
    assert schedule_id in prefect_cli("deployment", "schedule", "ls", "index-corpus/nightly")

    def active() -> bool:
        return asyncio.run(read_deployment("nightly")).schedules[0].active

    prefect_cli("deployment", "schedule", "pause", "index-corpus/nightly", schedule_id)
    assert active() is False
    prefect_cli("deployment", "schedule", "resume", "index-corpus/nightly", schedule_id)
    assert active() is True
