"""The `index_corpus` flow and the `indexflow` CLI, run in this process against the session's real Prefect server."""

from __future__ import annotations

import asyncio
import json

import pytest

from indexflow.flows.cli import EXIT_CONFIG, EXIT_OK, EXIT_QUOTA, main
from indexflow.flows.index_corpus import index_corpus
from indexflow.tasks.errors import ConfigError, DailyQuotaError
from indexflow.tasks.report import artifact_key
from tests.flows.service_fixtures import summary_rows, table_ids, write_corpus


@pytest.fixture
def api_env(prefect_api, emu, monkeypatch):
    """The flow reads its key from the environment at its edge; point it at the emulator."""
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    return emu


async def _artifacts(flow_run_id, key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )


def run_flow(**params):
    state = asyncio.run(index_corpus(**params, return_state=True))
    return state, state.state_details.flow_run_id


def test_flow_indexes_names_the_run_and_publishes_summary_and_progress(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    state, run_id = run_flow(corpus=str(corpus), table="kb", db_uri=str(tmp_path / "db"), batch_size=10)
    assert state.is_completed()
    summary = state.result()
    assert summary["chunks_embedded"] == 40 and summary["api_calls"] == 4

    rows = asyncio.run(summary_rows(run_id, "kb"))
    assert rows["documents new"] == 40 and rows["chunks embedded"] == 40 and rows["status"] == "completed"
    progress = asyncio.run(_artifacts(run_id, artifact_key("progress", "kb")))
    assert progress and progress[-1].data == pytest.approx(100.0)

    async def run_name():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return (await client.read_flow_run(run_id)).name

    assert asyncio.run(run_name()) == "index-kb-online"
    assert sorted(table_ids(tmp_path / "db", "kb")) == sorted(f"doc-{i:03d}#0" for i in range(40))

    # a second run over the same corpus: zero calls, reported as unchanged
    api_env.admin.reset()
    state, run_id = run_flow(corpus=str(corpus), table="kb", db_uri=str(tmp_path / "db"))
    assert api_env.admin.stats().get("calls", 0) == 0
    assert asyncio.run(summary_rows(run_id, "kb"))["documents unchanged"] == 40


def test_bad_parameters_fail_with_every_field_named(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    with pytest.raises(ConfigError) as info:
        asyncio.run(index_corpus(corpus=str(corpus), table="t", db_uri=str(tmp_path / "db"),
                                 dimensions=64, batch_size=500))
    fields = {loc[0] for loc in info.value.fields}
    assert fields == {"dimensions", "batch_size"}
    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(index_corpus(corpus=str(tmp_path / "missing"), table="t", db_uri=str(tmp_path / "db")))


def test_daily_quota_stops_cleanly_with_a_failure_note_and_the_rerun_resumes(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    api_env.admin.set_limits({"rpd": 20, "rpm_counts": "texts"})
    params = dict(corpus=str(corpus), table="quota", db_uri=str(tmp_path / "db"), batch_size=10, concurrency=1)
    state, run_id = run_flow(**params)
    assert state.is_failed()
    with pytest.raises(DailyQuotaError):
        state.result()
    assert len(table_ids(tmp_path / "db", "quota")) == 20, "what was embedded before the quota ran out is kept"
    assert api_env.admin.stats()["errors.429.rpd"] == 1, "a per-day quota is not retried"
    note = asyncio.run(_artifacts(run_id, artifact_key("failures", "quota")))
    assert note and "DailyQuotaError" in note[0].data

    api_env.admin.reset()  # the next day
    state, _ = run_flow(**params)
    assert state.is_completed() and api_env.admin.stats()["texts"] == 30
    assert len(table_ids(tmp_path / "db", "quota")) == 50


TOPICS = ["volcano lava eruption", "glacier ice melting", "coral reef fish", "desert sand dunes",
          "rainforest canopy birds", "tundra permafrost moss", "savanna grass lions", "mangrove roots tides",
          "alpine meadow flowers", "prairie bison herds", "estuary salt marsh", "canyon river erosion"]


def test_cli_plan_index_and_query(api_env, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i:03d}", "title": t.split()[0].title(),
                                          "text": f"A short note about the {t}."}) + "\n"
                              for i, t in enumerate(TOPICS)))
    db = str(tmp_path / "db")
    assert main(["plan", str(corpus), "--db", db, "--table", "cli", "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["chunks_new"] == 12 and plan["forecast"]["calls"] == 1
    assert api_env.admin.stats().get("calls", 0) == 0

    assert main(["index", str(corpus), "--db", db, "--table", "cli", "--json"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["chunks_embedded"] == 12

    assert main(["query", "permafrost in the tundra", "--db", db, "--table", "cli", "-k", "3", "--json"]) == EXIT_OK
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["doc_id"] == "doc-005"

    assert main(["query", "permafrost in the tundra", "--db", db, "--table", "cli", "--hybrid", "--json"]) == EXIT_OK
    hybrid = json.loads(capsys.readouterr().out)
    assert hybrid[0]["kind"] == "rrf" and hybrid[0]["doc_id"] == "doc-005"

    assert main(["index", str(corpus), "--db", db, "--table", "cli", "--dimensions", "5"]) == EXIT_CONFIG
    assert "dimensions" in capsys.readouterr().err


def test_cli_exit_code_for_a_daily_quota(api_env, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    api_env.admin.set_limits({"rpd": 10})
    code = main(["index", str(corpus), "--db", str(tmp_path / "db"), "--table", "q", "--batch-size", "10",
                 "--concurrency", "1"])
    assert code == EXIT_QUOTA
    assert "run the same command again" in capsys.readouterr().err


def test_batch_mode_books_tokens_at_the_batch_price_and_reports_jobs(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 60)
    api_env.admin.set_batch_config({"pending_seconds": 0.1, "running_seconds": 0.3})
    state, run_id = run_flow(corpus=str(corpus), table="bk", db_uri=str(tmp_path / "db"), mode="batch",
                             options={"batch_poll_seconds": 0.1})
    assert state.is_completed()
    summary = state.result()
    assert summary["route"] == "batch" and summary["chunks_embedded"] == 60 and summary["jobs_created"] == 1
    assert summary["cost_usd"] == pytest.approx(summary["online_equivalent_usd"] / 2, rel=1e-6)
    stats = api_env.admin.stats()
    assert stats["batches.created"] == 1 and stats["tokens.batch"] > 0 and stats.get("tokens.online", 0) == 0
    rows = asyncio.run(summary_rows(run_id, "bk"))
    assert rows["route"] == "batch" and rows["batch jobs created"] == 1
    assert sorted(table_ids(tmp_path / "db", "bk")) == sorted(f"doc-{i:03d}#0" for i in range(60))


def test_a_batch_run_past_its_wait_limit_ends_waiting_and_the_next_run_collects(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    # The job must outlive the first two runs even when a loaded machine takes seconds per run.
    api_env.admin.set_batch_config({"pending_seconds": 0.1, "running_seconds": 8.0})
    params = dict(corpus=str(corpus), table="w", db_uri=str(tmp_path / "db"), mode="batch",
                  options={"batch_poll_seconds": 0.1, "batch_wait_limit_seconds": 0.5})
    state, _ = run_flow(**params)
    assert state.is_completed() and state.result()["status"].startswith("waiting: 1 batch job")
    # a scheduled run while the job still runs: no second job for the same chunks
    state, _ = run_flow(**params)
    assert state.result()["status"].startswith("waiting")
    assert api_env.admin.stats()["batches.created"] == 1
    params["options"] = {"batch_poll_seconds": 0.1}
    state, _ = run_flow(**params)
    summary = state.result()
    assert summary["status"] == "completed" and summary["chunks_embedded"] == 30
    assert api_env.admin.stats()["batches.created"] == 1 and summary["jobs_resumed"] >= 1
    assert len(table_ids(tmp_path / "db", "w")) == 30


def test_batch_item_failures_are_reported_and_retried_online(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    api_env.admin.set_batch_config({"pending_seconds": 0.05, "running_seconds": 0.2, "item_failure_rate": 0.25})
    state, run_id = run_flow(corpus=str(corpus), table="itemfail", db_uri=str(tmp_path / "db"), mode="batch",
                             options={"batch_poll_seconds": 0.1})
    summary = state.result()
    failed = api_env.admin.stats()["batches.items_failed"]
    assert failed > 0 and summary["batch_item_failures"] == failed == summary["retried_online"]
    assert summary["chunks_embedded"] == 40 and summary["dead_lettered"] == 0
    rows = asyncio.run(summary_rows(run_id, "itemfail"))
    assert rows["batch items retried online"] == failed
