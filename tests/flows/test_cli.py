"""The `indexflow` command as a user or a script meets it: version, JSON, exit codes, read-only
commands that create nothing, limits with their sources, query modes. Real CLI (`main` or the
console script), real emulator, real LanceDB tables, the session's Prefect server for `index`."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import SecretStr

import indexflow
from indexflow.flows.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_QUOTA, main
from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.settings import Endpoint, Settings
from tests.flows.service_fixtures import summary_rows, table_ids, write_corpus

TOPICS = ["volcano lava eruption", "glacier ice melting", "coral reef fish", "desert sand dunes",
          "rainforest canopy birds", "tundra permafrost moss", "savanna grass lions", "mangrove roots tides"]


@pytest.fixture
def key_env(emu, monkeypatch):
    """A key and a base URL, as a user with GEMINI_API_KEY has (the default tier is then free)."""
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables wrap at 80 columns otherwise
    return emu


@pytest.fixture
def api_env(prefect_api, key_env):
    return key_env


@pytest.fixture
def indexed(key_env, tmp_path) -> tuple[str, Path]:
    """A small indexed table `kb` (full-text index built), written without Prefect."""
    from indexflow.tasks.online import run_online
    from indexflow.tasks.table import open_store

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "title": t.split()[0].title(),
                                          "text": f"A short note about the {t}."}) + "\n"
                              for i, t in enumerate(TOPICS)))
    settings = Settings(corpus=corpus, db_uri=str(tmp_path / "db"), table="kb")
    out = asyncio.run(run_online(settings, Endpoint(api_key=SecretStr(key_env.api_key), base_url=key_env.base_url)))
    assert out.error is None and out.committed_rows == len(TOPICS)
    open_store(settings).finalize()
    key_env.admin.reset()
    return settings.db_uri, corpus


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `path` with its size and mtime: what a read-only command must not change."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [path, *path.rglob("*")]}


# -- 1. version --------------------------------------------------------------------------------


def test_version_is_the_distributions(capsys):
    assert indexflow.__version__ == metadata.version("indexflow") != "0.0.0"
    code, out, _ = run_cli(capsys, "--version")
    assert code == EXIT_OK and out.strip() == indexflow.__version__
    # run as a module, cyclopts cannot guess the package from the caller and used to print 0.0.0
    proc = subprocess.run([sys.executable, "-m", "indexflow.flows.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == indexflow.__version__


# -- 2. JSON on every command, empty results included --------------------------------------------


def test_batches_list_of_a_table_without_a_ledger_is_an_empty_list(indexed, capsys):
    db, _ = indexed
    code, out, _ = run_cli(capsys, "batches", "list", "--db", db, "--table", "kb", "--json")
    assert code == EXIT_OK and json.loads(out) == []
    code, out, _ = run_cli(capsys, "batches", "list", "--db", db, "--table", "kb")
    assert code == EXIT_OK and "no batch jobs" in out


def test_query_json_is_an_empty_list_when_nothing_matches(indexed, capsys):
    db, _ = indexed
    code, out, _ = run_cli(capsys, "query", "zzzqqx", "--db", db, "--table", "kb", "--mode", "fts", "--json")
    assert code == EXIT_OK and json.loads(out) == []


def test_batches_status_and_cancel_in_json(key_env, tmp_path, capsys):
    key_env.admin.set_batch_config({"pending_seconds": 0.05, "running_seconds": 60})
    settings = Settings(corpus=write_corpus(tmp_path / "c.jsonl", 12), db_uri=str(tmp_path / "db"), table="b")
    endpoint = Endpoint(api_key=SecretStr(key_env.api_key), base_url=key_env.base_url)
    waiting = asyncio.run(run_batch(settings, endpoint, options=BatchOptions(poll_seconds=0.02), wait_limit_seconds=0.2))
    assert waiting.status == "waiting"
    db = ["--db", settings.db_uri, "--table", "b"]

    code, out, _ = run_cli(capsys, "batches", "list", *db, "--open-only", "--json")
    (row,) = json.loads(out)
    code, out, _ = run_cli(capsys, "batches", "status", row["key"], *db, "--json")
    assert code == EXIT_OK and json.loads(out)["live"] == "RUNNING"
    code, out, _ = run_cli(capsys, "batches", "cancel", row["key"], *db, "--json")
    assert code == EXIT_OK and json.loads(out) == {"job": row["key"], "cancelled": [row["job"]]}
    # nothing left to cancel: still JSON, and the documented exit code for "not done"
    code, out, _ = run_cli(capsys, "batches", "cancel", row["key"], *db, "--json")
    assert code == EXIT_FAILED and json.loads(out) == {"job": row["key"], "cancelled": []}
    code, out, _ = run_cli(capsys, "batches", "list", *db, "--open-only", "--json")
    assert code == EXIT_OK and json.loads(out) == []


# -- 3. read-only commands create nothing ----------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["query", "lava"], ["query", "lava", "--mode", "fts"], ["batches", "list"], ["batches", "status", "job-1"],
], ids=["query", "query-fts", "batches-list", "batches-status"])
def test_a_missing_database_is_one_line_exit_2_and_is_not_created(key_env, tmp_path, capsys, argv):
    db = tmp_path / "nonexistent"
    code, out, err = run_cli(capsys, *argv, "--db", str(db), "--table", "kb", "--json")
    assert code == EXIT_CONFIG and out == ""
    assert err.count("\n") == 1 and str(db) in err and "Traceback" not in err
    assert not db.exists() and list(tmp_path.iterdir()) == []
    assert key_env.admin.stats().get("calls", 0) == 0


@pytest.mark.parametrize("argv", [["query", "lava"], ["batches", "list"], ["batches", "status", "job-1"]],
                         ids=["query", "batches-list", "batches-status"])
def test_a_missing_table_is_one_line_exit_2(indexed, capsys, argv):
    db, _ = indexed
    code, out, err = run_cli(capsys, *argv, "--db", db, "--table", "nope", "--json")
    assert code == EXIT_CONFIG and out == "" and err.count("\n") == 1 and "'nope'" in err
    assert not any("nope" in p for p in tree(Path(db)))


def test_plan_of_a_missing_database_plans_everything_new_and_creates_nothing(key_env, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    db = tmp_path / "nonexistent"
    code, out, _ = run_cli(capsys, "plan", str(corpus), "--db", str(db), "--table", "kb", "--json")
    assert code == EXIT_OK and json.loads(out)["chunks_new"] == 5
    assert not db.exists()


def test_read_only_commands_leave_an_existing_database_untouched(indexed, capsys):
    db, corpus = indexed
    before = tree(Path(db))
    for argv in (["query", "lava"], ["query", "lava", "--mode", "fts"], ["query", "lava", "--mode", "hybrid"],
                 ["plan", str(corpus)], ["plan", str(corpus), "--rebuild"], ["batches", "list"]):
        code, _, err = run_cli(capsys, *argv, "--db", db, "--table", "kb", "--json")
        assert code == EXIT_OK, (argv, err)
    code, _, _ = run_cli(capsys, "batches", "status", "job-1", "--db", db, "--table", "kb")
    assert code == EXIT_CONFIG
    assert tree(Path(db)) == before, "no table, ledger, lock file or version was written"


# -- 4. limits say where each value came from ------------------------------------------------------


def test_plan_shows_each_limit_and_its_source(key_env, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    base = ["plan", str(corpus), "--db", str(tmp_path / "db"), "--table", "kb"]
    code, out, _ = run_cli(capsys, *base, "--tier", "1", "--rpm", "3000", "--tpm", "1000000")
    assert code == EXIT_OK
    assert "rpm 3000 (--rpm), tpm 1000000 (--tpm), rpd none (tier 1), rpm counts texts (tier 1)" in out

    code, out, _ = run_cli(capsys, *base, "--json")  # a key and no tier: the free preset, said to be a default
    facts = json.loads(out)
    assert facts["tier"] == "free"
    assert facts["limits"]["rpd"] == {"value": 1000, "source": "tier free, by default"}

    code, out, _ = run_cli(capsys, *base, "--rpm", "3000", "--tpm", "1000000", "--json")
    limits = json.loads(out)["limits"]
    assert limits["rpd"] == {"value": None, "source": "no --rpd, no --tier"} and limits["preset"] is None
    assert limits["rpm"] == {"value": 3000, "source": "--rpm"}


def test_explicit_rpm_and_tpm_are_not_capped_by_the_free_daily_quota(api_env, tmp_path, capsys):
    # a tier-1 project that says only --rpm/--tpm used to stop after ~1,000 texts (the free tier's RPD)
    corpus = write_corpus(tmp_path / "c.jsonl", 1050)
    code, out, err = run_cli(capsys, "index", str(corpus), "--db", str(tmp_path / "db"), "--table", "big",
                             "--rpm", "3000", "--tpm", "1000000", "--json")
    assert code == EXIT_OK, err
    summary = json.loads(out)
    assert summary["chunks_embedded"] == 1050 and api_env.admin.stats()["texts"] == 1050
    assert summary["limits"]["rpd"] == {"value": None, "source": "no --rpd, no --tier"}


# -- 5. --rpm-counts -----------------------------------------------------------------------------


def test_rpm_counts_calls_sends_full_batches_under_a_per_call_rpm(api_env, tmp_path, capsys):
    api_env.admin.set_limits({"rpm": 2, "rpm_counts": "calls"})
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    code, out, err = run_cli(capsys, "index", str(corpus), "--db", str(tmp_path / "db"), "--table", "rc",
                             "--rpm", "2", "--rpm-counts", "calls", "--batch-size", "10", "--json")
    assert code == EXIT_OK, err
    # counted per text, an RPM of 2 would allow 2 texts per call: 10 calls over 5 minutes
    stats = api_env.admin.stats()
    assert (stats["calls"], stats["texts"], stats.get("errors.429.rpm", 0)) == (2, 20, 0)
    assert json.loads(out)["limits"]["rpm_counts"] == {"value": "calls", "source": "--rpm-counts"}


# -- 6. query --mode ------------------------------------------------------------------------------


def test_query_modes_and_the_deprecated_hybrid_alias(indexed, key_env, capsys):
    db, _ = indexed
    where = ["--db", db, "--table", "kb", "-k", "3", "--json"]
    code, out, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "fts", *where)
    hits = json.loads(out)
    assert code == EXIT_OK and hits[0]["kind"] == "bm25" and hits[0]["doc_id"] == "doc-5"
    assert key_env.admin.stats().get("calls", 0) == 0, "full-text search makes no API call"

    code, out, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "vector", *where)
    assert json.loads(out)[0]["kind"] == "cosine"
    code, out, err = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "hybrid", *where)
    assert json.loads(out)[0]["kind"] == "rrf" and "deprecated" not in err
    code, alias, err = run_cli(capsys, "query", "permafrost in the tundra", "--hybrid", *where)
    assert code == EXIT_OK and json.loads(alias) == json.loads(out)
    assert "--hybrid is deprecated; use --mode hybrid" in err

    code, out, err = run_cli(capsys, "query", "x", "--mode", "fts", "--hybrid", *where)
    assert code == EXIT_CONFIG and out == "" and "contradicts --mode fts" in err
    code, _, _ = run_cli(capsys, "query", "x", "--mode", "bm25", *where)
    assert code == EXIT_CONFIG


def test_query_hybrid_weights_lean_the_fusion(indexed, key_env, capsys):
    db, _ = indexed
    where = ["--db", db, "--table", "kb", "-k", "3", "--json"]
    ids = lambda out: [h["doc_id"] for h in json.loads(out)]
    _, vector, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "vector", *where)
    _, fts, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "fts", *where)
    code, out, err = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "hybrid", "--weights", "1,0", *where)
    assert code == EXIT_OK, err
    assert ids(out) == ids(vector)
    _, out, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "hybrid", "--weights", "0,1", *where)
    assert ids(out) == ids(fts)
    code, out, _ = run_cli(capsys, "query", "permafrost in the tundra", "--mode", "hybrid", "--weights", "0.7,0.3", *where)
    top = json.loads(out)[0]
    assert code == EXIT_OK and top["kind"] == "rrf" and top["doc_id"] == "doc-5"
    assert top["score"] == pytest.approx(0.7 / 61 + 0.3 / 61)  # first on both sides
    key_env.admin.reset()
    for bad in (["--mode", "hybrid", "--weights", "0.7"], ["--mode", "fts", "--weights", "0.7,0.3"],
                ["--weights", "0.7,0.3"]):  # malformed, or weights for a mode that fuses nothing
        code, out, err = run_cli(capsys, "query", "permafrost", *bad, *where)
        assert code == EXIT_CONFIG and out == "" and "weights" in err, bad
    assert key_env.admin.stats().get("calls", 0) == 0, "refused before the query is embedded"


def test_the_readme_query_mode_commands(indexed, key_env, capsys):
    db, _ = indexed
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### Query modes", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    assert len(commands) == 2
    for argv in commands:
        assert argv[:2] == [".venv/bin/indexflow", "query"]
        code, out, err = run_cli(capsys, *argv[1:], "--db", db, "--table", "kb")
        assert code == EXIT_OK, (argv, err)
        assert "1." in out and "doc-5" in out.splitlines()[1], out


# -- 7. a stopped run's summary carries what it spent ----------------------------------------------


def test_a_run_stopped_by_the_daily_quota_reports_its_calls_and_tokens(api_env, tmp_path, capsys):
    from indexflow.flows.index_corpus import index_corpus

    api_env.admin.set_limits({"rpd": 20, "rpm_counts": "texts"})
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    code, _, err = run_cli(capsys, "index", str(corpus), "--db", str(tmp_path / "db"), "--table", "stop1",
                           "--batch-size", "10", "--concurrency", "1")
    assert code == EXIT_QUOTA and "daily quota" in err

    api_env.admin.reset()
    api_env.admin.set_limits({"rpd": 20, "rpm_counts": "texts"})
    state = asyncio.run(index_corpus(corpus=str(corpus), table="stop2", db_uri=str(tmp_path / "db"),
                                     batch_size=10, concurrency=1, return_state=True))
    assert state.is_failed()
    stats = api_env.admin.stats()
    rows = asyncio.run(summary_rows(state.state_details.flow_run_id, "stop2"))
    assert rows["status"] == "stopped: DailyQuotaError" and len(table_ids(tmp_path / "db", "stop2")) == 20
    # two calls answered, the third refused for the day; all three were made and are reported
    assert rows["API calls"] == stats["calls"] + stats["errors.429.rpd"] == 3
    assert rows["tokens"] >= stats["tokens.online"] > 0
    assert rows["limits"].startswith("rpm 100 (tier free, by default), tpm 30000 (tier free, by default), rpd 1000")
