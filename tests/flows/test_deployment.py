"""End to end as a user runs it: server, work pool, `prefect deploy --all` from prefect.yaml, a worker,
`prefect deployment run`, then the facts through the Prefect API, LanceDB and the emulator."""

from __future__ import annotations

import asyncio

import pytest

from tests.flows.service_fixtures import (  # noqa: E402
    run_deployment_cli,
    summary_rows,
    table_ids,
    wait_final,
    write_corpus,
)


pytestmark = pytest.mark.slow


def test_on_demand_deployment_indexes_a_corpus(worker, semu, tmp_path):
    n = 24
    corpus = write_corpus(tmp_path / "corpus" / "docs.jsonl", n)
    db = tmp_path / "db"

    run_id = run_deployment_cli("on-demand", corpus=str(corpus), table="e2e", db_uri=str(db))
    run = asyncio.run(wait_final(run_id))

    assert run.state_name == "Completed", run.state.message
    assert run.name == "index-e2e-online"  # flow_run_name says table and mode
    summary = asyncio.run(summary_rows(run_id, "e2e"))
    assert summary["status"] == "completed"
    assert summary["documents seen"] == n and summary["documents new"] == n
    assert summary["chunks embedded"] == n
    ids = table_ids(db, "e2e")
    assert len(ids) == n and len(set(ids)) == n
    assert semu.admin.stats().get("texts", 0) == n


def test_invalid_parameter_fails_the_run_with_the_field_named(worker, semu, tmp_path):
    run_id = run_deployment_cli("on-demand", corpus=str(tmp_path / "missing"), table="bad", db_uri=str(tmp_path / "db"))
    run = asyncio.run(wait_final(run_id))
    assert run.state_name == "Failed"
    assert "corpus" in run.state.message and "does not exist" in run.state.message
    assert semu.admin.stats().get("calls", 0) == 0
