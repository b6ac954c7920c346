"""Guarantees of the flow and the `indexflow` command that nothing else pins down (issue 9):
the default no-key path, tier presets and overrides, giving up on a busy table, `mode=auto`,
and the CLI's --mode/--rebuild/--retry-failed, all against the session's Prefect server and emulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import lancedb
import pytest

from indexflow.flows.cli import EXIT_FAILED, EXIT_OK, main
from indexflow.flows.index_corpus import index_corpus, settings_from_params
from indexflow.tasks.endpoint import resolve_endpoint
from indexflow.tasks.errors import TableBusyError
from indexflow.tasks.settings import TIERS, Settings
from indexflow.tasks.store import VectorStore
from indexflow.tasks.writer_lock import lock_path
from tests.flows.service_fixtures import REPO, python_env, table_ids, write_corpus

TOPICS = ["volcano lava eruption", "glacier ice melting", "coral reef fish", "desert sand dunes",
          "rainforest canopy birds", "tundra permafrost moss", "savanna grass lions", "mangrove roots tides",
          "alpine meadow flowers", "prairie bison herds", "estuary salt marsh", "canyon river erosion"]
SUBPROCESS_TIMEOUT = 240


@pytest.fixture
def api_env(prefect_api, emu, monkeypatch):
    """The flow and the CLI read the key and base URL from the environment: point them at the session emulator."""
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    return emu


def topics_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i:03d}", "title": t.split()[0].title(),
                                        "text": f"A short note about the {t}."}) + "\n"
                            for i, t in enumerate(TOPICS)))
    return path


def cli_json(capsys, *argv: str) -> tuple[int, dict | list | None, str]:
    """main(argv) in this process; returns (exit code, parsed stdout JSON or None, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    try:
        out = json.loads(captured.out)
    except ValueError:
        out = None
    return code, out, captured.err


# -- 1. the default path: no key, no base URL -> the in-process emulator --------------------------


def test_without_key_or_base_url_the_cli_indexes_with_the_in_process_emulator_and_says_so_once(
        prefect_api, emu, tmp_path, capsys, monkeypatch):
    corpus = topics_corpus(tmp_path / "c.jsonl")
    db = str(tmp_path / "db")
    env = python_env()  # the session's Prefect server; GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL removed
    assert "GEMINI_API_KEY" not in env and "GOOGLE_GEMINI_BASE_URL" not in env
    indexflow = Path(sys.executable).with_name("indexflow")  # the installed console script
    index = subprocess.run([str(indexflow), "index", str(corpus), "--db", db, "--table", "nokey", "--json"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert index.returncode == EXIT_OK, index.stderr
    summary = json.loads(index.stdout)
    assert summary["endpoint"] == "emulator" and summary["status"] == "completed"
    assert summary["chunks_embedded"] == len(TOPICS) and summary["api_calls"] == 1
    said = [line for line in index.stderr.splitlines() if "emulator" in line.lower()]
    assert said == ["No GEMINI_API_KEY set: embedding with the built-in Gemini API emulator (lexical vectors, "
                    "not Gemini's)."], index.stderr
    assert emu.admin.stats().get("calls", 0) == 0, "the session's emulator was not the one used"
    assert sorted(table_ids(Path(db), "nokey")) == [f"doc-{i:03d}" + "#0" for i in range(len(TOPICS))]

    # and the table answers queries, the query embedded by this process's own emulator
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    code, hits, err = cli_json(capsys, "query", "permafrost in the tundra", "--db", db, "--table", "nokey",
                               "-k", "3", "--json")
    assert code == EXIT_OK, err
    assert len(hits) == 3 and hits[0]["doc_id"] == "doc-005" and hits[0]["title"] == "Tundra"
    assert emu.admin.stats().get("calls", 0) == 0


# -- 2. tiers: presets, single-value overrides, the default by endpoint ---------------------------


DOCUMENTED_TIERS = {  # tasks/settings.py TIERS: gemini-embedding-001 per project (tier 3 = twice tier 2)
    "free": (100, 30_000, 1_000, "texts"),
    "1": (3_000, 1_000_000, None, "texts"),
    "2": (5_000, 5_000_000, None, "texts"),
    "3": (10_000, 10_000_000, None, "texts"),
    "unlimited": (None, None, None, "texts"),
}


@pytest.mark.parametrize("tier", sorted(DOCUMENTED_TIERS))
def test_each_tier_preset_sets_the_documented_limits_and_single_values_override_it(tier, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 1)
    limits = Settings(corpus=corpus, tier=tier).limits
    assert (limits.rpm, limits.tpm, limits.rpd, limits.count) == DOCUMENTED_TIERS[tier]
    assert limits == TIERS[tier]
    rpm, tpm, rpd, count = DOCUMENTED_TIERS[tier]
    assert Settings(corpus=corpus, tier=tier, rpm=7).limits.model_dump() == dict(rpm=7, tpm=tpm, rpd=rpd, count=count)
    assert Settings(corpus=corpus, tier=tier, tpm=70).limits.model_dump() == dict(rpm=rpm, tpm=70, rpd=rpd, count=count)
    assert Settings(corpus=corpus, tier=tier, rpd=700).limits.model_dump() == dict(rpm=rpm, tpm=tpm, rpd=700, count=count)


def test_cli_tier_and_overrides_reach_the_plan_forecast(capsys, tmp_path, monkeypatch):
    """`--tier`/`--rpm/--tpm/--rpd` as the command parses them: the forecast's time and days follow them."""
    monkeypatch.setenv("GEMINI_API_KEY", "some-key")  # plan never calls the API
    corpus = write_corpus(tmp_path / "c.jsonl", 120)
    base = ["plan", str(corpus), "--db", str(tmp_path / "db"), "--table", "t", "--json"]

    def plan(*extra: str) -> dict:
        code, out, err = cli_json(capsys, *base, *extra)
        assert code == EXIT_OK, err
        return out

    default = plan()
    tokens = default["tokens_to_embed"]
    assert default["tier"] == "free"  # with a key
    assert default["forecast"]["online_seconds"] == pytest.approx(60 * 120 / 100)  # 120 texts at 100 rpm
    assert plan("--tier", "1")["forecast"]["online_seconds"] == pytest.approx(60 * 120 / 3_000)
    assert plan("--tier", "1", "--rpm", "40")["forecast"]["online_seconds"] == pytest.approx(60 * 120 / 40)
    # a tpm so low that tokens, not requests, are the bottleneck
    assert plan("--tier", "2", "--tpm", "100")["forecast"]["online_seconds"] == pytest.approx(60 * tokens / 100)
    assert plan("--tier", "free", "--rpd", "50")["forecast"]["days"] == 3  # 120 requests at 50 a day
    assert plan("--tier", "free")["forecast"]["days"] == 1
    unlimited = plan("--tier", "unlimited")
    assert unlimited["tier"] == "unlimited" and unlimited["forecast"]["online_seconds"] is None
    monkeypatch.delenv("GEMINI_API_KEY")
    assert plan()["tier"] == "unlimited"  # the emulator has no quota to respect


def test_the_flow_default_tier_is_free_with_a_key_and_unlimited_with_the_emulator(tmp_path, monkeypatch):
    corpus = str(write_corpus(tmp_path / "c.jsonl", 1))
    assert settings_from_params({"corpus": corpus}, emulator=False).quota.preset == "free"
    assert settings_from_params({"corpus": corpus}, emulator=False).limits == TIERS["free"]
    assert settings_from_params({"corpus": corpus}, emulator=True).quota.preset == "unlimited"
    assert settings_from_params({"corpus": corpus, "tier": "2"}, emulator=True).quota.preset == "2"
    assert settings_from_params({"corpus": corpus, "tier": None, "rpm": 9}, emulator=False).limits.rpm == 9
    # the flow passes emulator=label.startswith("emulator"): the labels resolve_endpoint gives
    with resolve_endpoint(None) as (endpoint, label):
        assert label.startswith("emulator") and endpoint.base_url.startswith("http://127.0.0.1:")
    with resolve_endpoint("k", "http://127.0.0.1:9") as (_, label):
        assert not label.startswith("emulator")
    with resolve_endpoint("k") as (endpoint, label):
        assert label == "google" and endpoint.base_url is None


# -- 3. writer_wait_seconds runs out: TableBusyError naming the table and the lock ----------------

HOLDER = """
import asyncio, sys
from indexflow.tasks.writer_lock import table_writer
async def main():
    async with table_writer(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.parametrize("wait", [0, 0.5])
def test_a_flow_that_cannot_get_the_table_within_writer_wait_seconds_fails_with_table_busy(
        api_env, tmp_path, wait):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    db = str(tmp_path / "db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db, "busy"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = asyncio.run(index_corpus(corpus=str(corpus), table="busy", db_uri=db, writer_wait_seconds=wait,
                                         return_state=True))
    finally:
        holder.kill()
        holder.wait()
    assert state.is_failed()
    with pytest.raises(TableBusyError) as info:
        state.result()
    error = info.value
    assert error.table == "busy" and error.db_uri == db and not error.transient
    assert error.lock == str(lock_path(db, "busy"))
    assert error.waited_seconds >= wait and f"pid {holder.pid}" in error.holder
    assert "'busy'" in str(error) and error.lock in str(error)
    assert api_env.admin.stats().get("calls", 0) == 0, "a run that never got the lock embeds nothing"
    assert not (Path(db) / "busy.lance").exists(), "nor creates the table"

    async def server_state():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return (await client.read_flow_run(state.state_details.flow_run_id)).state

    on_server = asyncio.run(server_state())
    assert on_server.type.value == "FAILED" and "busy" in on_server.message and error.lock in on_server.message


# -- 9. mode=auto: batch above the threshold, online at or below it, online under a short deadline --


def run_flow(**params):
    state = asyncio.run(index_corpus(**params, return_state=True))
    assert state.is_completed(), state.message
    return state.result()


@pytest.mark.parametrize(
    "threshold, deadline, route",
    [(29, None, "batch"),   # 30 chunks > 29
     (30, None, "online"),  # at the threshold: online
     (5, 60.0, "online"),   # above it, but a 30-chunk job takes ~120 s and the deadline is 60 s
     (5, 300.0, "batch")],  # a deadline longer than the turnaround does not stop the batch route
)
def test_auto_mode_routes_by_threshold_and_deadline_end_to_end(api_env, tmp_path, threshold, deadline, route):
    n = 30
    corpus = write_corpus(tmp_path / "c.jsonl", n)
    options = {"batch_threshold": threshold, "batch_poll_seconds": 0.1}
    if deadline is not None:
        options["deadline_seconds"] = deadline
    summary = run_flow(corpus=str(corpus), table="auto", db_uri=str(tmp_path / "db"), mode="auto", options=options)
    stats = api_env.admin.stats()
    assert summary["mode"] == "auto" and summary["route"] == route and summary["chunks_embedded"] == n
    if route == "batch":
        assert stats["batches.created"] >= 1 and stats["batches.items"] == n
        assert stats.get("tokens.online", 0) == 0 and stats.get("calls", 0) == 0
    else:
        assert stats.get("batches.created", 0) == 0 and stats["texts"] == n and stats["tokens.online"] > 0
    assert sorted(table_ids(tmp_path / "db", "auto")) == sorted(f"doc-{i:03d}#0" for i in range(n))


# -- 10. the CLI's --mode, --rebuild and --retry-failed --------------------------------------------


def test_cli_mode_batch_and_auto(api_env, capsys, tmp_path):
    corpus = topics_corpus(tmp_path / "c.jsonl")
    n = len(TOPICS)
    db = ["--db", str(tmp_path / "db")]

    code, out, err = cli_json(capsys, "index", str(corpus), *db, "--table", "b", "--mode", "batch", "--json")
    assert code == EXIT_OK, err
    stats = api_env.admin.stats()
    assert out["route"] == "batch" and out["jobs_created"] == 1 and out["chunks_embedded"] == n
    assert stats["batches.created"] == 1 and stats.get("calls", 0) == 0 and out["batch_tokens"] > 0

    api_env.admin.reset()
    code, out, err = cli_json(capsys, "index", str(corpus), *db, "--table", "a1", "--mode", "auto",
                              "--batch-threshold", str(n - 1), "--json")
    assert code == EXIT_OK, err
    assert out["route"] == "batch" and out["mode"] == "auto" and api_env.admin.stats()["batches.created"] == 1

    api_env.admin.reset()
    code, out, err = cli_json(capsys, "index", str(corpus), *db, "--table", "a2", "--mode", "auto", "--json")
    assert code == EXIT_OK, err  # default threshold 500: 12 chunks go online
    assert out["route"] == "online" and api_env.admin.stats().get("batches.created", 0) == 0
    assert api_env.admin.stats()["texts"] == n

    api_env.admin.reset()
    code, out, err = cli_json(capsys, "index", str(corpus), *db, "--table", "a3", "--mode", "auto",
                              "--batch-threshold", "1", "--deadline", "30", "--json")
    assert code == EXIT_OK, err
    assert out["route"] == "online" and api_env.admin.stats().get("batches.created", 0) == 0
    for table in ("b", "a1", "a2", "a3"):
        assert sorted(table_ids(tmp_path / "db", table)) == [f"doc-{i:03d}#0" for i in range(n)]


def test_cli_rebuild_re_embeds_everything_and_is_the_way_to_change_the_recipe(api_env, capsys, tmp_path):
    corpus = topics_corpus(tmp_path / "c.jsonl")
    n = len(TOPICS)
    base = ["index", str(corpus), "--db", str(tmp_path / "db"), "--table", "rb", "--json"]
    assert cli_json(capsys, *base)[0] == EXIT_OK
    api_env.admin.reset()
    code, out, _ = cli_json(capsys, *base)
    assert code == EXIT_OK and out["chunks_embedded"] == 0 and api_env.admin.stats().get("calls", 0) == 0

    code, out, err = cli_json(capsys, *base, "--rebuild")
    assert code == EXIT_OK, err
    assert out["chunks_embedded"] == n and api_env.admin.stats()["texts"] == n
    assert sorted(table_ids(tmp_path / "db", "rb")) == [f"doc-{i:03d}#0" for i in range(n)]

    # another recipe without --rebuild is refused before any call; with it, the table is rebuilt
    api_env.admin.reset()
    code, out, err = cli_json(capsys, *base[:-1], "--dimensions", "256")
    assert code == EXIT_FAILED and "recipe" in err.lower() and "--rebuild" in err
    assert api_env.admin.stats().get("calls", 0) == 0
    code, out, err = cli_json(capsys, *base, "--dimensions", "256", "--rebuild")
    assert code == EXIT_OK, err
    assert out["chunks_embedded"] == n and api_env.admin.stats()["texts"] == n
    vectors = lancedb.connect(str(tmp_path / "db")).open_table("rb").to_arrow().column("vector").to_pylist()
    assert len(vectors) == n and {len(v) for v in vectors} == {256}


def test_cli_retry_failed_sends_dead_letters_again_only_when_asked(api_env, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    docs = [{"id": f"d{i}", "title": "T", "text": f"small note number {i} about rivers"} for i in range(10)]
    docs.append({"id": "big", "title": "Big", "text": " ".join(f"word{j} river delta" for j in range(60))})
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    base = ["index", str(corpus), "--db", str(tmp_path / "db"), "--table", "rf", "--json"]
    api_env.admin.set_config(max_input_tokens=100)  # the server refuses the big text with a 400
    code, out, err = cli_json(capsys, *base)
    assert code == EXIT_OK, err
    assert out["dead_lettered"] == 1 and out["chunks_embedded"] == 10
    store = lambda: VectorStore.open(str(tmp_path / "db"), "rf", create=False)  # noqa: E731
    assert [d.chunk_id for d in store().dead_letters()] == ["big#0"]

    api_env.admin.reset()  # the server accepts it now, but a plain run does not pay for it again
    code, out, err = cli_json(capsys, *base)
    assert code == EXIT_OK and out["plan"]["chunks_dead_skipped"] == 1 and out["chunks_embedded"] == 0
    assert api_env.admin.stats().get("calls", 0) == 0

    code, out, err = cli_json(capsys, *base, "--retry-failed")
    assert code == EXIT_OK, err
    assert out["chunks_embedded"] == 1 and out["dead_lettered"] == 0 and api_env.admin.stats()["texts"] == 1
    assert "big#0" in table_ids(tmp_path / "db", "rf") and store().dead_letters() == []
