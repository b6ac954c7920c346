"""Batch route recovery the other batch tests leave open (issue 9): a crash between writing a job's
rows and marking it collected, a recorded job the server no longer knows (404), and the split of a
run into jobs under the per-job token cap. Real SDK, real emulator, real LanceDB ledgers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lancedb
import pytest
from google import genai
from google.genai import types
from pydantic import SecretStr

from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.batch.ledger import COLLECTED, DONE, FAILED, Ledger
from indexflow.tasks.plan import corpus_chunks
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.settings import Endpoint, Settings

REPO = Path(__file__).resolve().parents[2]
KILL_DEADLINE = 90.0  # seconds for the child to reach the kill point on a loaded machine

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")


@pytest.fixture
def endpoint(emu) -> Endpoint:
    return Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)


@pytest.fixture
def client(emu):
    c = genai.Client(api_key=emu.api_key, http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))
    yield c
    c.close()


def write_docs(path: Path, n: int, words: int = 12) -> Path:
    """n one-chunk documents of about `words` distinct words each."""
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(f"w{i}x{j}" for j in range(words))
            f.write(json.dumps({"id": f"d{i:03d}", "title": f"Doc {i}", "text": f"Note {i}: {text}."}) + "\n")
    return path


def table_ids(s: Settings) -> list[str]:
    try:
        return lancedb.connect(s.db_uri).open_table(s.table).to_arrow().column("id").to_pylist()
    except (ValueError, FileNotFoundError):
        return []


def run(s: Settings, endpoint: Endpoint, **kw):
    kw.setdefault("wait_limit_seconds", 60)  # a job that never ends fails the test ("waiting"), never hangs it
    return asyncio.run(run_batch(s, endpoint, **kw))


# -- 4. killed after the rows are written, before the job is marked COLLECTED ----------------------

# The child is a plain batch run; the one thing the test adds is a pause at the exact step under
# test (the COLLECTED update, after the rows are flushed), so the SIGKILL lands in that window every
# time. Nothing in product code knows about it.
CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from pydantic import SecretStr
    from indexflow.tasks.batch import ledger
    from indexflow.tasks.batch.options import BatchOptions
    from indexflow.tasks.batch.route import run_batch
    from indexflow.tasks.settings import Endpoint, Settings

    update = ledger.Ledger.update
    def paused_before_collected(self, key, **changes):
        if changes.get("state") == ledger.COLLECTED:
            time.sleep(600)  # killed here
        return update(self, key, **changes)
    ledger.Ledger.update = paused_before_collected

    corpus, db, base_url, key = sys.argv[1:5]
    settings = Settings(corpus=corpus, db_uri=db, table="crash")
    endpoint = Endpoint(api_key=SecretStr(key), base_url=base_url)
    asyncio.run(run_batch(settings, endpoint, options=BatchOptions(poll_seconds=0.05)))
""")


def test_killed_between_writing_rows_and_marking_collected_the_next_run_pays_nothing(emu, endpoint, tmp_path):
    n = 40
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", n), db_uri=str(tmp_path / "db"), table="crash")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(s.corpus), s.db_uri, emu.base_url, emu.api_key],
                             cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + KILL_DEADLINE
        while True:  # the window: every row in the table, the ledger still short of COLLECTED
            assert child.poll() is None, f"child ended early: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the child never reached rows-written-but-not-collected"
            try:
                jobs = Ledger.open(s.db_uri, s.table, create=False).jobs()
            except Exception:  # no ledger yet
                jobs = []
            if len(table_ids(s)) == n and [j.state for j in jobs] == [DONE]:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # what the crash left: rows committed, the job DONE with its items, no COLLECTED mark
    (job,) = Ledger.open(s.db_uri, s.table).jobs()
    assert job.state == DONE and job.resolution is None and job.live
    assert len(Ledger.open(s.db_uri, s.table).items(job.key)) == n
    first = emu.admin.stats()
    assert first["batches.created"] == 1 and first.get("calls", 0) == 0

    emu.admin.reset()  # counters only: the job stays on the server
    out = run(s, endpoint, options=BatchOptions(poll_seconds=0.05))
    stats = emu.admin.stats()
    assert out.status == "completed" and out.error is None
    assert out.jobs_resumed == 1 and out.jobs_collected == 1 and out.jobs_created == 0
    assert stats.get("batches.created", 0) == 0, "no new batch job for chunks already written"
    assert stats.get("calls", 0) == 0 and stats.get("tokens.online", 0) == 0, "nor online calls"
    assert out.committed_rows == 0 and out.plan.chunks_to_embed == 0
    ids = table_ids(s)
    assert len(ids) == len(set(ids)) == n
    (job,) = Ledger.open(s.db_uri, s.table).jobs()
    assert job.state == COLLECTED and Ledger.open(s.db_uri, s.table).items(job.key) == []


# The same window one step earlier: the job's rows are spilled, the group not yet committed.
CHILD_BEFORE_COMMIT = textwrap.dedent("""
    import asyncio, sys, time
    from pydantic import SecretStr
    from indexflow.tasks import writer
    from indexflow.tasks.batch.route import run_batch
    from indexflow.tasks.settings import Endpoint, Settings

    flush = writer.GroupWriter.flush
    def paused_before_commit(self):
        if self.buffered:
            print("spilled", flush=True)
            time.sleep(600)  # killed here
        return flush(self)
    writer.GroupWriter.flush = paused_before_commit

    corpus, db, base_url, key = sys.argv[1:5]
    settings = Settings(corpus=corpus, db_uri=db, table="spilled", batch_inline_limit_bytes=1000,
                        batch_poll_seconds=0.05)
    endpoint = Endpoint(api_key=SecretStr(key), base_url=base_url)
    asyncio.run(run_batch(settings, endpoint))
""")


def test_killed_before_a_jobs_rows_were_committed_the_next_run_recovers_them_without_downloading(
        emu, endpoint, tmp_path):
    n = 40
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", n), db_uri=str(tmp_path / "db"), table="spilled",
                 batch_inline_limit_bytes=1000, batch_poll_seconds=0.05)  # the results come as a file
    child = subprocess.Popen([sys.executable, "-c", CHILD_BEFORE_COMMIT, str(s.corpus), s.db_uri, emu.base_url,
                              emu.api_key], cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # the child says so once its rows are spilled, not committed
        assert line.strip() == "spilled", child.stderr.read()[-2000:]
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert table_ids(s) == []  # nothing committed: only the spill holds the rows
    first = emu.admin.stats()
    assert first["batches.created"] == 1 and first["files.downloaded"] == 1

    emu.admin.reset()  # counters only: the job and its files stay on the server
    out = run(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.error is None
    assert out.jobs_resumed == 1 and out.jobs_collected == 1 and out.jobs_created == 0
    assert stats.get("files.downloaded", 0) == 0, "the recovered rows are not downloaded again"
    assert stats.get("batches.created", 0) == 0 and stats.get("calls", 0) == 0
    ids = table_ids(s)
    assert sorted(ids) == [f"d{i:03d}#0" for i in range(n)]
    (job,) = Ledger.open(s.db_uri, s.table).jobs()
    assert job.state == COLLECTED


# -- 5. the server no longer knows a recorded job (deleted, or restarted without state) -------------


def test_a_recorded_job_deleted_on_the_server_is_resubmitted_in_halves_and_collected(emu, endpoint, client, tmp_path):
    n = 40
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", n), db_uri=str(tmp_path / "db"), table="gone",
                 batch_poll_seconds=0.05)
    emu.admin.set_batch_config({"running_seconds": 60})
    first = run(s, endpoint, wait_limit_seconds=0.2)
    assert first.status == "waiting" and first.jobs_created == 1
    (job,) = Ledger.open(s.db_uri, s.table).jobs()
    client.batches.delete(name=job.job_name)  # deleted behind the ledger's back

    emu.admin.reset()  # fast jobs again; the deleted job stays deleted
    out = run(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.error is None
    assert out.jobs_resumed == 1 and out.jobs_failed == 1 and out.jobs_resubmitted == 1
    assert out.jobs_created == 2 == stats["batches.created"] and stats["batches.items"] == n
    assert stats.get("errors.batch.404", 0) >= 1 and stats.get("calls", 0) == 0
    ids = table_ids(s)
    assert len(ids) == len(set(ids)) == n
    jobs = {j.key: j for j in Ledger.open(s.db_uri, s.table).jobs()}
    lost = jobs[job.key]
    assert lost.state == FAILED and lost.resolution == "resubmitted" and "404" in lost.error
    halves = [j for j in jobs.values() if j.parent == job.key]
    assert sorted(j.items for j in halves) == [n // 2, n // 2]
    assert {(j.state, j.generation) for j in halves} == {(COLLECTED, 1)}

    emu.admin.reset()
    again = run(s, endpoint)
    assert again.status == "completed" and again.jobs_resumed == 0 and emu.admin.stats().get("batches.created", 0) == 0


def test_jobs_lost_again_and_again_end_online_after_max_resubmits_never_in_a_loop(emu, endpoint, tmp_path):
    """An emulator restarted without state forgets every job; each run resubmits once more, then goes online."""
    n = 40
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", n), db_uri=str(tmp_path / "db"), table="amnesia",
                 batch_poll_seconds=0.05, batch_max_resubmits=1)

    def forget_everything_and_run_slow_jobs():
        emu.admin.reset(jobs=True)  # every batch job and file gone: a restart without state
        emu.admin.set_batch_config({"running_seconds": 60})

    emu.admin.set_batch_config({"running_seconds": 60})
    first = run(s, endpoint, wait_limit_seconds=0.2)
    assert first.status == "waiting" and first.jobs_created == 1

    forget_everything_and_run_slow_jobs()
    second = run(s, endpoint, wait_limit_seconds=0.2)
    assert second.status == "waiting" and second.jobs_failed == 1 and second.jobs_created == 2
    assert emu.admin.stats()["batches.created"] == 2

    forget_everything_and_run_slow_jobs()
    third = run(s, endpoint, wait_limit_seconds=30)
    stats = emu.admin.stats()
    assert third.status == "completed" and third.error is None
    assert third.jobs_failed == 2 and third.jobs_created == 0 and stats.get("batches.created", 0) == 0
    assert third.online_fallback_chunks == n and stats["texts"] == n, "generation 1 = max_resubmits: online"
    ids = table_ids(s)
    assert len(ids) == len(set(ids)) == n
    jobs = Ledger.open(s.db_uri, s.table).jobs()
    assert len(jobs) == 3 and {j.state for j in jobs} == {FAILED}
    assert sorted(j.resolution for j in jobs) == ["online", "online", "resubmitted"]

    emu.admin.reset(jobs=True)
    fourth = run(s, endpoint)
    stats = emu.admin.stats()
    assert fourth.status == "completed" and fourth.jobs_resumed == 0
    assert stats.get("batches.created", 0) == 0 and stats.get("calls", 0) == 0


# -- 6. the per-job token cap (5M tokens by default) ------------------------------------------------


def test_the_token_cap_is_5m_by_default_and_read_from_settings(tmp_path):
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", 1))
    assert s.batch_max_tokens_per_job == 5_000_000
    assert BatchOptions.from_settings(s).max_tokens_per_job == 5_000_000
    assert BatchOptions.from_settings(s.model_copy(update={"batch_max_tokens_per_job": 4096})).max_tokens_per_job == 4096


def test_a_run_over_the_token_cap_is_split_into_jobs_under_it_covering_each_chunk_once(emu, endpoint, tmp_path):
    n, cap = 60, 2048
    s = Settings(corpus=write_docs(tmp_path / "c.jsonl", n, words=40), db_uri=str(tmp_path / "db"), table="split",
                 batch_max_tokens_per_job=cap, batch_poll_seconds=0.05)
    chunks = list(corpus_chunks(s, ProblemLog()))
    assert len(chunks) == n and sum(c.tokens for c in chunks) > 2 * cap  # the cap must bite
    # what the cap means: parts filled in corpus order until the next chunk would pass it
    expected, tokens = [[]], 0
    for c in chunks:
        if expected[-1] and tokens + c.tokens > cap:
            expected.append([])
            tokens = 0
        expected[-1].append(c.id)
        tokens += c.tokens

    # Long enough that no job ends before the first run stops waiting, even on a loaded machine
    # (1 s was not: all jobs created, uploaded and polled took longer); the second run waits it out.
    emu.admin.set_batch_config({"running_seconds": 8.0})
    first = run(s, endpoint, wait_limit_seconds=0.05)  # jobs alive, so the ledger still lists their items
    assert first.status == "waiting"
    ledger = Ledger.open(s.db_uri, s.table)
    jobs = sorted(ledger.jobs(), key=lambda j: j.part)
    assert len(jobs) == len(expected) >= math.ceil(sum(c.tokens for c in chunks) / cap)
    by_id = {c.id: c for c in chunks}
    parts = [[c.id for c in ledger.items(j.key)] for j in jobs]
    assert parts == expected
    for job, part in zip(jobs, parts):
        assert job.tokens == sum(by_id[i].tokens for i in part) <= cap
        assert job.items == len(part)
    assert sorted(i for part in parts for i in part) == sorted(by_id), "every chunk in exactly one job"

    out = run(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.jobs_created == 0 and out.jobs_collected == len(jobs)
    assert stats["batches.created"] == len(jobs) and stats["batches.items"] == n and stats.get("calls", 0) == 0
    ids = table_ids(s)
    assert len(ids) == len(set(ids)) == n
