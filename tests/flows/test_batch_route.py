"""`indexflow batches list | status | cancel` over a real ledger and the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from indexflow.emulator.config import BatchConfig, EmulatorConfig
from indexflow.emulator.server import running_emulator
from indexflow.flows.batches_cli import batches_app
from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.settings import Endpoint, Settings
from tests.datasets import scifact_corpus


pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")


@pytest.fixture
def waiting_run(tmp_path, monkeypatch):
    """A table whose one batch job is still running, and the environment the CLI reads."""
    corpus = tmp_path / "c.jsonl"
    with scifact_corpus().open() as src:
        corpus.write_text("".join(line for _, line in zip(range(40), src)))
    with running_emulator(EmulatorConfig(batch=BatchConfig(pending_seconds=0.05, running_seconds=60))) as emu:
        monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
        settings = Settings(corpus=corpus, db_uri=str(tmp_path / "db"), table="b")
        endpoint = Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)
        out = asyncio.run(run_batch(settings, endpoint, options=BatchOptions(poll_seconds=0.02),
                                    wait_limit_seconds=0.2))
        assert out.status == "waiting"
        yield settings, emu, out


def cli(*argv: str, capsys) -> tuple[int, str]:
    code = batches_app(list(argv), exit_on_error=False)
    return code, capsys.readouterr().out


def test_list_status_and_cancel(waiting_run, capsys):
    settings, emu, out = waiting_run
    db = ["--db", settings.db_uri, "--table", "b"]
    code, text = cli("list", *db, "--json", capsys=capsys)
    (row,) = json.loads(text)
    assert code == 0 and row["key"] == out.jobs_waiting[0] and row["items"] == 40
    assert row["state"] in ("CREATED", "RUNNING") and row["job"].startswith("batches/")

    code, text = cli("status", row["key"], *db, "--json", capsys=capsys)
    facts = json.loads(text)
    assert code == 0 and facts["live"] == "RUNNING" and facts["requests"] == 40

    code, text = cli("cancel", row["job"], *db, capsys=capsys)
    assert code == 0 and row["job"] in text
    assert emu.admin.stats()["batches.state.CANCELLED"] == 1
    code, text = cli("list", *db, "--json", capsys=capsys)
    assert json.loads(text)[0]["state"] == "CANCELLED"
    code, _ = cli("cancel", row["job"], *db, capsys=capsys)
    assert code == 1  # nothing alive to cancel any more


def test_unknown_job_is_a_config_error(waiting_run, capsys):
    from indexflow.tasks.errors import ConfigError

    settings, _, _ = waiting_run
    with pytest.raises(ConfigError) as info:
        batches_app(["status", "batches/nope", "--db", settings.db_uri, "--table", "b"], exit_on_error=False)
    assert info.value.job == "batches/nope"
