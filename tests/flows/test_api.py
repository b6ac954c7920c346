"""`import indexflow` as a library: index and query, sync and async, the endpoint chosen as the CLI does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import indexflow
from indexflow.tasks.settings import DEFAULT_TABLE
from tests.flows.service_fixtures import table_ids

TOPICS = ["glacier ice sheets melt", "volcano lava eruption ash", "parse command line arguments",
          "bread dough yeast baking", "orbit satellite launch rocket", "violin string orchestra",
          "tide ocean moon gravity", "chess opening gambit", "honey bee pollen hive",
          "compiler parser syntax tree", "desert dune sand wind", "vaccine immune antibody"]


def write_corpus(path, n):
    """`n` documents on distinct topics, so a query for one topic has one right answer."""
    import json

    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc-{i:03d}", "title": f"Topic {i}",
                                "text": f"A note about {TOPICS[i]}: {TOPICS[i]}, explained plainly."}) + "\n")
    return path


@pytest.fixture
def api_env(prefect_in_process, emu, monkeypatch):
    """The library reads GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL as the CLI does; point them at the emulator."""
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    return emu


def test_index_then_query_sync_and_async(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    db = str(tmp_path / "db")
    summary = indexflow.index(corpus, db_uri=db, batch_size=5)
    assert isinstance(summary, indexflow.RunSummary)
    assert summary.table == DEFAULT_TABLE and summary.chunks_embedded == 12 and summary.api_calls == 3
    assert len(table_ids(tmp_path / "db", DEFAULT_TABLE)) == 12

    again = asyncio.run(indexflow.aindex(corpus, db_uri=db))
    assert again.chunks_embedded == 0 and again.api_calls == 0

    hits = indexflow.query("chess opening gambit", db_uri=db, k=3)
    assert [type(h) for h in hits] == [indexflow.Hit] * 3 and hits[0].doc_id == "doc-007"
    assert hits[0].title == "Topic 7" and hits[0].kind == "cosine"

    async def both():
        return await asyncio.gather(indexflow.aquery("chess opening gambit", db_uri=db, k=3, mode="hybrid"),
                                    indexflow.aquery("chess opening gambit", db_uri=db, k=3, mode="fts"))

    api_env.admin.reset()
    hybrid, fts = asyncio.run(both())
    assert hybrid[0].doc_id == "doc-007" and hybrid[0].kind == "rrf"
    assert fts[0].kind == "bm25" and "doc-007" in [h.doc_id for h in fts]
    assert api_env.admin.stats().get("calls", 0) == 1  # the hybrid query; full text needs no API call

    leaning = indexflow.query("chess opening gambit", db_uri=db, k=3, mode="hybrid", weights=(1, 0))
    assert [h.id for h in leaning] == [h.id for h in hits]  # all weight on the vector side: its ranking
    assert [h.id for h in indexflow.query("chess opening gambit", db_uri=db, k=3, mode="hybrid",
                                          weights="0,1")] == [h.id for h in fts]
    with pytest.raises(indexflow.ConfigError):
        indexflow.query("chess opening gambit", db_uri=db, mode="fts", weights=(0.7, 0.3))


def test_errors_are_the_public_types(api_env, tmp_path):
    missing = tmp_path / "nope"
    try:
        indexflow.index(missing, db_uri=str(tmp_path / "db"))
    except indexflow.ConfigError as exc:
        assert "corpus" in str(exc) and exc.transient is False
    else:  # pragma: no cover - the assertion that matters
        raise AssertionError("a missing corpus must raise ConfigError")


def test_a_library_query_prints_nothing(api_env, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 6)
    db = str(tmp_path / "db")
    indexflow.index(corpus, table="quiet", db_uri=db)
    # No key in the child: it queries through the embedded emulator, as the CLI would.
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL")}
    code = ("import indexflow\n"
            f"for mode in ('vector', 'hybrid', 'fts'):\n"
            f"    hits = indexflow.query('bread dough yeast', table='quiet', db_uri={db!r}, k=2, mode=mode)\n"
            "    print(mode, hits[0].doc_id)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["vector", "doc-003", "hybrid", "doc-003", "fts", "doc-003"]
    assert run.stderr == ""


def test_without_a_prefect_api_the_library_indexes_in_process_and_quietly(emu, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 6)
    db = str(tmp_path / "db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "GEMINI_API_KEY": emu.api_key,
            "GOOGLE_GEMINI_BASE_URL": emu.base_url}
    code = ("import sys, indexflow\n"
            f"first = indexflow.index({str(corpus)!r}, db_uri={db!r}, batch_size=2)\n"
            f"again = indexflow.index({str(corpus)!r}, db_uri={db!r})\n"
            "print(first.chunks_embedded, first.api_calls, again.chunks_embedded, again.api_calls,\n"
            "      'prefect' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["6", "3", "0", "0", "False"]
    assert run.stderr == ""  # lines for people go to the `indexflow` logger, unconfigured here
    assert sorted(table_ids(tmp_path / "db", DEFAULT_TABLE)) == [f"doc-{i:03d}#0" for i in range(6)]
    assert not (tmp_path / "prefect-home").exists()


def test_a_batch_run_reports_each_look_at_its_job_and_stops_waiting_at_the_timeout(api_env, tmp_path):
    """Tracked (a flow run on the session's server): the callback still reaches the caller's code."""
    corpus = write_corpus(tmp_path / "c.jsonl", 6)
    db = str(tmp_path / "db")
    api_env.admin.set_batch_config({"paused": True, "running_seconds": 0.3})  # pending past the timeout
    seen = []
    summary = indexflow.index(corpus, db_uri=db, mode="batch", priority=4, on_progress=seen.append,
                              wait_timeout=1.5, options={"batch_poll_seconds": 0.2})
    assert summary.status.startswith("waiting") and summary.jobs_created == 1 and summary.jobs_waiting == 1
    assert len(seen) >= 3, "one look per poll: 0.2 s apart (x1.5 while idle) within 1.5 s"
    assert all(s.state == "PENDING" and s.requests == 6 and s.priority == 4 for s in seen)
    assert {s.name for s in seen} == {seen[0].name} and seen[0].name.startswith("batches/")

    api_env.admin.set_batch_config({"paused": False})
    done = []
    again = asyncio.run(indexflow.aindex(corpus, db_uri=db, mode="batch", on_progress=done.append,
                                         options={"batch_poll_seconds": 0.1}))
    assert again.status == "completed" and again.jobs_resumed == 1 and again.chunks_embedded == 6
    assert done[-1].state == "SUCCEEDED" and done[-1].success_rate == 1.0
    assert len(table_ids(tmp_path / "db", DEFAULT_TABLE)) == 6
