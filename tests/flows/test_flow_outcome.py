"""What a deployment accepts as parameters, and the final state a run reports, on the session's real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexflow.api import index as api_index
from indexflow.flows.index_corpus import COMPLETED_WITH_PROBLEMS, index_corpus
from tests.flows.service_fixtures import REPO, python_env, write_corpus

pytestmark = pytest.mark.slow

TIERS = ["free", "1", "2", "3", "unlimited"]


@pytest.fixture
def api_env(prefect_in_process, emu, monkeypatch):
    """In-process runs on the session's server, embedding with the session's emulator."""
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    return emu


def corpus_with_unreadable_files(root: Path, good: int, bad: int) -> Path:
    """`good` plain-text documents and `bad` files the reader must skip (binary, invalid UTF-8)."""
    root.mkdir(parents=True)
    for i in range(good):
        (root / f"good-{i}.txt").write_text(f"Document {i} is about subject {i}, in plain words.\n")
    for i in range(bad):
        (root / f"bad-{i}.txt").write_bytes(b"\x00\x01binary\xff\xfe" * 20 if i % 2 else b"caf\xe9 \xff\xfe\n")
    return root


async def read_state(flow_run_id):
    """The flow run's final state as the server holds it."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_flow_run(flow_run_id)).state


def test_a_run_that_skipped_input_ends_completed_with_problems(api_env, tmp_path):
    corpus = corpus_with_unreadable_files(tmp_path / "corpus", good=4, bad=3)
    db = str(tmp_path / "db")
    state = asyncio.run(index_corpus(corpus=str(corpus), table="kb", db_uri=db, return_state=True))

    stored = asyncio.run(read_state(state.state_details.flow_run_id))
    assert stored.type.value == "COMPLETED" and stored.name == COMPLETED_WITH_PROBLEMS
    assert stored.message == ("skipped 3 unreadable or invalid corpus item(s); "
                              "what and why: artifact indexflow-failures-kb")
    # the CLI and the Python API still get the summary
    assert state.result()["docs_failed"] == 3 and state.result()["chunks_embedded"] == 4
    summary = asyncio.run(index_corpus(corpus=str(corpus), table="kb", db_uri=db))
    assert isinstance(summary, dict) and summary["docs_failed"] == 3
    assert api_index(corpus, table="kb", db_uri=db).docs_failed == 3


def test_a_clean_run_ends_plain_completed(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    state = asyncio.run(index_corpus(corpus=str(corpus), table="clean", db_uri=str(tmp_path / "db"),
                                     return_state=True))
    stored = asyncio.run(read_state(state.state_details.flow_run_id))
    assert (stored.type.value, stored.name, stored.message) == ("COMPLETED", "Completed", None)


def test_dead_lettered_chunks_end_completed_with_problems(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    api_env.admin.set_batch_config({"pending_seconds": 0.05, "running_seconds": 0.2, "item_failure_rate": 0.25})
    state = asyncio.run(index_corpus(
        corpus=str(corpus), table="dl", db_uri=str(tmp_path / "db"), mode="batch", return_state=True,
        options={"batch_poll_seconds": 0.1, "batch_item_errors": "dead_letter"}))
    dead = state.result()["dead_lettered"]
    assert dead == api_env.admin.stats()["batches.items_failed"] > 0
    stored = asyncio.run(read_state(state.state_details.flow_run_id))
    assert stored.type.value == "COMPLETED" and stored.name == COMPLETED_WITH_PROBLEMS
    assert stored.message == f"dead-lettered {dead} chunk(s) into dl__dead_letters; what and why: artifact indexflow-failures-dl"


def _cli_params(*specs: str) -> dict:
    """Parameters exactly as `prefect deployment run --param k=v` parses them (values read as JSON)."""
    from prefect.cli._utilities import load_json_key_values

    return load_json_key_values(list(specs), "parameter")


async def _create_runs(param_sets: list[dict]) -> list:
    """Create on-demand runs an hour ahead (no worker takes them), collect the server's answers, delete the runs."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    answers = []
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("index-corpus/on-demand")
        for params in param_sets:
            try:
                run = await client.create_flow_run_from_deployment(
                    deployment.id, parameters=params, state=Scheduled(scheduled_time=later))
            except PrefectHTTPStatusError as exc:
                answers.append(exc.response.json().get("detail"))
            else:
                answers.append(run.parameters)
                await client.delete_flow_run(run.id)
    return answers


def test_bare_numbers_from_the_cli_are_tiers_and_names(deployed):
    param_sets = [_cli_params(f"tier={t}") for t in TIERS] + [_cli_params("table=2024", "id_field=7")]
    assert [p for p in param_sets[1:4]] == [{"tier": 1}, {"tier": 2}, {"tier": 3}]  # JSON numbers, not text
    answers = asyncio.run(_create_runs(param_sets))
    assert all(isinstance(a, dict) for a in answers), f"the server refused a parameter set: {answers}"
    assert [{k: a[k] for k in p} for p, a in zip(param_sets, answers)] == param_sets
    # the flow hands its stages the tier's name and the table's text
    for params, tier in zip(param_sets, TIERS):
        assert index_corpus.validate_parameters(params)["tier"] == tier
    validated = index_corpus.validate_parameters(param_sets[-1])
    assert (validated["table"], validated["id_field"]) == ("2024", "7")


def test_a_bad_tier_is_refused_with_the_field_named(deployed):
    answers = asyncio.run(_create_runs([_cli_params("tier=4"), _cli_params("tier=premium"),
                                        _cli_params("tier=true")]))
    assert all(isinstance(a, str) and "Validation failed for field 'tier'" in a for a in answers), answers
    result = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "index-corpus/on-demand",
                             "--param", "tier=4"], cwd=REPO, env=python_env(), capture_output=True, text=True,
                            timeout=120)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Validation failed for field 'tier'. Failure reason: 4 is not one of" in out
