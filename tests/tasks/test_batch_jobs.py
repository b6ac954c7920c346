"""The Batch API route against the emulator through the real SDK; the emulator's stats are the evidence."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from google import genai
from google.genai import types
from pydantic import SecretStr

from indexflow.emulator.config import BatchConfig, EmulatorConfig
from indexflow.emulator.server import RunningEmulator, running_emulator
from indexflow.tasks.batch.admin import cancel_live_jobs
from indexflow.tasks.batch.options import BatchOptions, choose_route
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.batch.cadence import poll_interval
from indexflow.tasks.batch.wire import parse_status
from indexflow.tasks.batch.wire import jsonl_input
from indexflow.tasks.errors import BatchJobError, ConfigError
from indexflow.tasks.batch.ledger import CANCELLED, COLLECTED, INTENT, JobRecord, Ledger, job_key
from indexflow.tasks.online import run_online
from indexflow.tasks.plan import corpus_chunks
from indexflow.tasks.table import open_store
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.store import VectorStore
from tests.datasets import scifact_corpus

REPO = Path(__file__).resolve().parents[2]
OPTS = BatchOptions(poll_seconds=0.02)

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")






@pytest.fixture
def endpoint(emu: RunningEmulator) -> Endpoint:
    return Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)


@pytest.fixture(scope="module")
def corpus_300(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "scifact300.jsonl"
    with scifact_corpus().open() as src:
        path.write_text("".join(line for _, line in zip(range(300), src)))
    return path


def settings_for(corpus: Path, tmp_path: Path, table: str = "b", **kw) -> Settings:
    return Settings(corpus=corpus, db_uri=str(tmp_path / "db"), table=table, **kw)


def rows(settings: Settings) -> dict[str, tuple]:
    store = VectorStore.open(settings.db_uri, settings.table, create=False)
    data = store.table.to_arrow().to_pylist()
    assert len({r["id"] for r in data}) == len(data), "duplicate ids"
    return {r["id"]: (r["content_hash"], r["text"], r["title"], np.asarray(r["vector"], np.float32)) for r in data}


def online_index(settings: Settings, endpoint: Endpoint) -> None:
    """An online run of the same corpus (tasks.online.run_online): the reference table."""
    out = asyncio.run(run_online(settings, endpoint))
    assert out.error is None and out.dead_lettered == 0 and out.committed_rows > 0


def batch(settings, endpoint, opts=OPTS, **kw):
    # A wait limit, so a job that never finishes fails the test ("waiting") instead of hanging it.
    kw.setdefault("wait_limit_seconds", 30)
    return asyncio.run(run_batch(settings, endpoint, options=opts, **kw))


def ledger_of(settings) -> Ledger:
    return Ledger.open(settings.db_uri, settings.table)


# -- route choice and polling arithmetic ------------------------------------------------------


def test_choose_route_by_mode_threshold_and_deadline():
    assert choose_route("online", 10**6) == "online" and choose_route("batch", 1) == "batch"
    assert choose_route("auto", 500, threshold=500) == "online"
    assert choose_route("auto", 501, threshold=500) == "batch"
    assert choose_route("auto", 5_000, threshold=500, deadline_seconds=60) == "online"
    assert choose_route("auto", 5_000, threshold=500, deadline_seconds=60, turnaround_seconds=30) == "batch"
    assert choose_route("auto", 5_000, threshold=500, deadline_seconds=24 * 3600) == "batch"
    with pytest.raises(ConfigError):
        choose_route("fast", 1)


def test_options_come_from_settings_fields_when_they_exist(corpus_300, tmp_path):
    class WithBatchFields(Settings):
        batch_threshold: int = 7
        batch_failed_jobs: str = "online"
        batch_poll_seconds: float | None = 0.5

    assert BatchOptions.from_settings(settings_for(corpus_300, tmp_path)) == BatchOptions()
    opts = BatchOptions.from_settings(WithBatchFields(corpus=corpus_300), max_resubmits=0)
    assert (opts.threshold, opts.failed_jobs, opts.poll_seconds, opts.max_resubmits) == (7, "online", 0.5, 0)
    assert opts.item_errors == BatchOptions().item_errors


def test_poll_interval_grows_with_size_and_backs_off():
    assert poll_interval(50, 0) == 2.0 and poll_interval(500, 0) == 5.0
    assert poll_interval(5_000, 0) == 10.0 and poll_interval(50_000, 0) == 30.0
    assert poll_interval(50, 1) == 3.0 and poll_interval(50, 10) == 5.0  # capped
    assert poll_interval(50_000, 10) == 60.0
    assert poll_interval(10**6, 3, configured=0.1) == pytest.approx(0.3375)


def test_parse_status_reads_string_counts_and_omitted_zeros():
    status = parse_status({"name": "batches/x", "done": False, "metadata": {
        "state": "BATCH_STATE_RUNNING", "displayName": "d",
        "batchStats": {"requestCount": "200", "successfulRequestCount": "150", "pendingRequestCount": "50"}}})
    assert (status.state, status.requests, status.succeeded, status.failed, status.pending) == ("RUNNING", 200, 150, 0, 50)
    assert status.settled == 150 and status.display_name == "d" and not status.done


# -- the route end to end -----------------------------------------------------------------------


def test_batch_run_equals_online_run_row_for_row_and_books_batch_tokens(emu, endpoint, corpus_300, tmp_path):
    online = settings_for(corpus_300, tmp_path, "online")
    online_index(online, endpoint)
    emu.admin.reset()
    batched = settings_for(corpus_300, tmp_path, "batched")
    out = batch(batched, endpoint, BatchOptions(poll_seconds=0.02, max_items_per_job=120))
    stats = emu.admin.stats()

    assert out.status == "completed" and out.error is None
    assert out.jobs_created == 3 == stats["batches.created"]  # 300 chunks in parts of 120
    assert stats.get("tokens.batch", 0) > 0 and stats.get("tokens.online", 0) == 0 and stats.get("calls", 0) == 0
    a, b = rows(online), rows(batched)
    assert a.keys() == b.keys() and len(b) == out.committed_rows == out.chunks_embedded_batch
    for chunk_id, (h, text, title, vector) in a.items():
        assert b[chunk_id][:3] == (h, text, title)
        np.testing.assert_array_equal(b[chunk_id][3], vector)
    assert out.batch_tokens > 0 and out.online_tokens == 0
    assert out.batch_cost_usd == pytest.approx(out.online_equivalent_cost_usd / 2)
    assert {r.state for r in ledger_of(batched).jobs()} == {COLLECTED}

    emu.admin.reset()
    again = batch(batched, endpoint)
    assert again.status == "completed" and again.jobs_created == 0
    assert emu.admin.stats().get("batches.created", 0) == 0


def test_full_scifact_batch_run_equals_online_run(emu, endpoint, tmp_path):
    online = Settings(corpus=scifact_corpus(), db_uri=str(tmp_path / "db"), table="online")
    online_index(online, endpoint)
    emu.admin.reset()
    batched = Settings(corpus=scifact_corpus(), db_uri=str(tmp_path / "db"), table="batched")
    out = batch(batched, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.committed_rows == stats["batches.items"] > 5_183
    assert stats["batches.created"] == 1 and stats["tokens.batch"] > 0 and stats.get("tokens.online", 0) == 0
    a, b = rows(online), rows(batched)
    assert a.keys() == b.keys()
    for chunk_id, (h, text, title, vector) in a.items():
        assert b[chunk_id][:3] == (h, text, title)
        np.testing.assert_array_equal(b[chunk_id][3], vector)


def test_file_route_above_inline_limit_matches_by_key(emu, endpoint, corpus_300, tmp_path):
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, inline_limit_bytes=50_000))
    stats = emu.admin.stats()
    assert out.status == "completed" and out.committed_rows == 300
    assert stats["files.uploaded"] == 1 and stats["batches.created"] == 1
    (job,) = ledger_of(s).jobs()
    assert job.route == "file" and job.input_file.startswith("files/")
    reference = settings_for(corpus_300, tmp_path, "ref")
    online_index(reference, endpoint)
    got, want = rows(s), rows(reference)
    assert got.keys() == want.keys()
    for chunk_id in want:
        np.testing.assert_array_equal(got[chunk_id][3], want[chunk_id][3])


def test_inline_refused_by_a_smaller_server_limit_goes_through_a_file(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"inline_limit_bytes": 40_000})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.committed_rows == 300
    assert stats["errors.batch.400"] == 1 and stats["batches.created"] == 1 and stats["files.uploaded"] == 1
    assert ledger_of(s).jobs()[0].route == "file"


def test_item_failures_are_retried_online(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"item_failure_rate": 0.2})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint)
    stats = emu.admin.stats()
    failed = stats["batches.items_failed"]
    assert 0 < failed < 300
    assert out.status == "completed" and out.item_failures == failed == out.retried_online
    assert stats["texts"] == failed and out.dead_lettered == 0
    assert len(rows(s)) == 300 and out.online_tokens > 0


def test_item_failures_dead_lettered_when_configured_even_when_all_fail(emu, endpoint, corpus_300, tmp_path):
    # Every item failing makes the SDK put results in dest.inlined_responses (the other shape).
    emu.admin.set_batch_config({"item_failure_rate": 1.0})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, item_errors="dead_letter"))
    store = VectorStore.open(s.db_uri, s.table, create=False)
    assert out.status == "completed" and out.dead_lettered == 300 == store.count_dead_letters()
    assert store.count_rows() == 0 and emu.admin.stats().get("calls", 0) == 0
    assert all("batch item error 13" in d.error for d in store.dead_letters())
    assert len(out.failures) == 20, "the report lists the first 20 failures, not all 300"

    emu.admin.reset()  # a re-run skips the dead letters: nothing is paid for twice
    again = batch(s, endpoint)
    assert again.plan.chunks_dead_skipped == 300 and again.jobs_created == 0


def test_an_invalid_item_is_dead_lettered_not_paid_for_again_online(emu, endpoint, tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    docs = [{"id": f"d{i}", "title": f"Doc {i}", "text": " ".join(words[(i + j) % 12] for j in range(40))}
            for i in range(20)]
    docs.append({"id": "big", "title": "Big", "text": " ".join(words[j % 12] + str(j) for j in range(200))})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    # The server's tokenizer counts more than our estimate: the job answers the big item with
    # code 3 INVALID_ARGUMENT, which no retry can cure (item errors are otherwise retried online).
    emu.admin.set_config(max_input_tokens=300)
    s = settings_for(corpus, tmp_path)
    out = batch(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.item_failures == 1
    assert stats.get("calls", 0) == 0 and stats.get("errors.400", 0) == 0, "nothing was sent online"
    assert out.retried_online == 0 and out.online_tokens == 0
    store = VectorStore.open(s.db_uri, s.table, create=False)
    dead = store.dead_letters()
    assert [d.chunk_id for d in dead] == ["big#0"] and out.dead_lettered == 1
    assert dead[0].error.startswith("batch item error 3:") and "300" in dead[0].error
    assert sorted(rows(s)) == sorted(f"d{i}#0" for i in range(20))


def test_chunks_edited_or_removed_while_their_job_ran_are_not_written(emu, endpoint, corpus_300, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = corpus_300.read_text().splitlines()
    corpus.write_text("\n".join(lines) + "\n")
    emu.admin.set_batch_config({"running_seconds": 1.0})
    s = settings_for(corpus, tmp_path)
    first = batch(s, endpoint, wait_limit_seconds=0.05)
    assert first.status == "waiting" and first.jobs_created == 1 and first.chunks_submitted == 300
    # While the job runs, one document is removed and another edited.
    removed, edited = json.loads(lines[0]), json.loads(lines[1])
    edited["text"] += " A sentence added while the job ran."
    corpus.write_text("\n".join([json.dumps(edited), *lines[2:]]) + "\n")
    second = batch(s, endpoint)
    assert second.status == "completed" and second.jobs_resumed == 1 and second.jobs_created == 1
    wanted = {c.id: c.content_hash for c in corpus_chunks(s, ProblemLog())}
    got = {chunk_id: row[0] for chunk_id, row in rows(s).items()}
    assert not [k for k in got if k.startswith(removed["_id"] + "#")], "a removed document was written back"
    assert got == wanted, "the table holds exactly what the corpus says now"
    assert second.committed_rows == len(wanted), "nothing was written that the corpus no longer wanted"


def test_failed_job_is_resubmitted_in_halves(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"fail_next_jobs": 1})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint)
    stats = emu.admin.stats()
    assert out.status == "completed" and out.jobs_failed == 1 and out.jobs_resubmitted == 1
    assert stats["batches.created"] == 3 and stats["batches.state.FAILED"] == 1
    assert len(rows(s)) == 300
    jobs = ledger_of(s).jobs()
    assert [j.items for j in jobs if j.parent] == [150, 150]
    assert [j.resolution for j in jobs if not j.parent] == ["resubmitted"]


def test_expired_job_falls_back_online(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"expire_next_jobs": 1})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, failed_jobs="online"))
    stats = emu.admin.stats()
    assert out.status == "completed" and out.jobs_expired == 1 and out.online_fallback_chunks == 300
    assert stats["batches.created"] == 1 and stats["batches.state.EXPIRED"] == 1 and stats["texts"] == 300
    assert len(rows(s)) == 300
    assert ledger_of(s).jobs()[0].resolution == "online"


def test_an_online_fallback_stopped_by_an_outage_still_reports_its_calls(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"expire_next_jobs": 1})
    emu.admin.set_faults(rates={"503": 1.0})  # the online API is down for longer than the retries last
    s = settings_for(corpus_300, tmp_path, max_attempts=2, concurrency=1)
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, failed_jobs="online"))
    assert out.status == "error" and out.error.transient and out.jobs_expired == 1
    refused = emu.admin.stats()["faults.503"]
    assert refused >= 2 and out.embed.calls == refused and out.embed.unavailable == refused
    assert out.embed.retries >= 1 and out.online_tokens == out.embed.tokens_sent > 0


def test_failed_job_fails_the_run_when_configured(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"fail_next_jobs": 1})
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, failed_jobs="fail"))
    assert out.status == "error" and isinstance(out.error, BatchJobError) and out.error.state == "FAILED"
    assert out.committed_rows == 0 and emu.admin.stats()["batches.created"] == 1
    (job,) = ledger_of(s).jobs()
    assert job.resolution == "abandoned" and job.error and f"ended FAILED: {job.error}" in str(out.error)


def test_two_runs_while_a_job_runs_create_one_job(emu, endpoint, corpus_300, tmp_path):
    # Alive long enough for two runs on a loaded machine (1.5 s was not); the third run waits it out.
    emu.admin.set_batch_config({"running_seconds": 8.0})
    s = settings_for(corpus_300, tmp_path)
    first = batch(s, endpoint, wait_limit_seconds=0.1)
    second = batch(s, endpoint, wait_limit_seconds=0.1)
    assert first.status == second.status == "waiting"
    assert first.jobs_created == 1 and second.jobs_created == 0 and second.jobs_resumed == 1
    assert second.chunks_in_flight == 300 and second.jobs_waiting == first.jobs_waiting
    assert emu.admin.stats()["batches.created"] == 1
    assert VectorStore.open(s.db_uri, s.table, create=False).count_rows() == 0
    third = batch(s, endpoint)
    assert third.status == "completed" and third.jobs_created == 0 and third.committed_rows == 300
    assert emu.admin.stats()["batches.created"] == 1


def test_cancelled_job_is_reported_not_resubmitted_by_the_run(emu, endpoint, corpus_300, tmp_path, genai_client_for):
    emu.admin.set_batch_config({"running_seconds": 30})
    s = settings_for(corpus_300, tmp_path)
    first = batch(s, endpoint, wait_limit_seconds=0.05)
    (job,) = ledger_of(s).jobs()
    genai_client_for(emu).batches.cancel(name=job.job_name)
    second = batch(s, endpoint)
    assert second.status == "completed" and second.jobs_cancelled == 1 and second.cancelled_chunks == 300
    assert second.jobs_created == 0 and emu.admin.stats()["batches.created"] == 1
    assert any("cancelled" in f for f in second.failures)
    assert ledger_of(s).jobs()[0].state == CANCELLED
    # A later run is a new request to index the corpus: it submits the chunks once more.
    emu.admin.set_batch_config({"running_seconds": 0.3})
    third = batch(s, endpoint)
    assert third.status == "completed" and third.jobs_created == 1 and third.committed_rows == 300


def test_cancel_live_jobs_cancels_what_is_alive(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"running_seconds": 30})
    s = settings_for(corpus_300, tmp_path)
    first = batch(s, endpoint, BatchOptions(poll_seconds=0.02, max_items_per_job=200), wait_limit_seconds=0.05)
    assert first.status == "waiting" and len(first.jobs_waiting) == 2
    cancelled = asyncio.run(cancel_live_jobs(s, endpoint))
    assert len(cancelled) == 2
    assert emu.admin.stats()["batches.state.CANCELLED"] == 2
    assert {j.state for j in ledger_of(s).jobs()} == {CANCELLED}


# -- crash safety -------------------------------------------------------------------------------


@pytest.fixture
def genai_client_for():
    clients = []

    def make(emu):
        client = genai.Client(api_key=emu.api_key,
                              http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pydantic import SecretStr
    from indexflow.tasks.batch.options import BatchOptions
    from indexflow.tasks.batch.route import run_batch
    from indexflow.tasks.settings import Endpoint, Settings
    corpus, db, base_url, key = sys.argv[1:5]
    settings = Settings(corpus=corpus, db_uri=db, table="b")
    endpoint = Endpoint(api_key=SecretStr(key), base_url=base_url)
    asyncio.run(run_batch(settings, endpoint, options=BatchOptions(poll_seconds=0.05)))
""")


def run_until_killed(s: Settings, emu: RunningEmulator, ready) -> None:
    """Run run_batch in a child process and SIGKILL it once `ready(ledger jobs)` holds."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(s.corpus), s.db_uri, emu.base_url, emu.api_key],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, f"child ended early: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the child never reached the kill point"
            try:
                if ready(Ledger.open(s.db_uri, s.table, create=False).jobs()):
                    break
            except Exception:  # the ledger does not exist yet
                pass
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()


def test_killed_right_after_submission_resumes_without_a_new_job(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"running_seconds": 1.0})
    s = settings_for(corpus_300, tmp_path)
    run_until_killed(s, emu, lambda jobs: any(j.job_name for j in jobs))
    assert emu.admin.stats()["batches.created"] == 1
    out = batch(s, endpoint)
    assert out.status == "completed" and out.jobs_created == 0 and out.jobs_resumed == 1
    assert emu.admin.stats()["batches.created"] == 1 and len(rows(s)) == 300


def test_killed_while_polling_resumes_without_a_new_job(emu, endpoint, corpus_300, tmp_path):
    emu.admin.set_batch_config({"running_seconds": 1.5})
    s = settings_for(corpus_300, tmp_path)
    run_until_killed(s, emu, lambda jobs: any(j.state == "RUNNING" for j in jobs))
    out = batch(s, endpoint)
    assert out.status == "completed" and out.jobs_created == 0 and out.jobs_resumed == 1
    assert emu.admin.stats()["batches.created"] == 1 and len(rows(s)) == 300


def test_intent_without_a_name_is_found_by_display_name(emu, endpoint, corpus_300, tmp_path, genai_client_for):
    s = settings_for(corpus_300, tmp_path)
    open_store(s)
    chunks = list(corpus_chunks(s, ProblemLog()))
    key = job_key(s.table, "crashed", 1)
    client = genai_client_for(emu)
    uploaded = client.files.upload(file=io.BytesIO(jsonl_input(chunks, s.recipe)), config={"mime_type": "jsonl"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.batches.create_embeddings(model=s.model, src={"file_name": uploaded.name},
                                         config={"display_name": key})
    # The crash: the INTENT is durable, the job exists, its name was never written down.
    Ledger.open(s.db_uri, s.table).record_intent(
        JobRecord(key, "crashed", 1, INTENT, "file", len(chunks), 0, input_file=uploaded.name), chunks)
    out = batch(s, endpoint)
    assert out.status == "completed" and out.jobs_created == 0 and out.jobs_resumed == 1
    assert emu.admin.stats()["batches.created"] == 1 and len(rows(s)) == 300
    (job,) = ledger_of(s).jobs()
    assert job.state == COLLECTED and job.job_name.startswith("batches/")


def test_intent_whose_job_never_existed_is_submitted_again(emu, endpoint, corpus_300, tmp_path):
    s = settings_for(corpus_300, tmp_path)
    open_store(s)
    chunks = list(corpus_chunks(s, ProblemLog()))
    key = job_key(s.table, "crashed", 1)
    Ledger.open(s.db_uri, s.table).record_intent(
        JobRecord(key, "crashed", 1, INTENT, "inline", len(chunks), 0), chunks)
    out = batch(s, endpoint)
    assert out.status == "completed" and out.jobs_created == 1 and out.jobs_resumed == 0
    assert emu.admin.stats()["batches.created"] == 1 and len(rows(s)) == 300
    assert ledger_of(s).get(key).resolution == "not_created"


# -- create at most once (the logic, with plain functions standing in for the two calls) ----------


def _create_once(create_errors, find_results, attempts=3):
    from tests.tasks.test_batch_submit import attempt_creates

    return attempt_creates(create_errors, find_results, attempts=attempts, base_delay=1.0)


def test_create_after_a_transient_failure_adopts_the_job_that_was_made():
    from indexflow.tasks.errors import TransientAPIError

    result, calls = _create_once([TransientAPIError("timeout", status=None)], ["batches/made"])
    assert result == "batches/made" and calls["create"] == 1 and calls["find"] == 1


def test_create_retries_only_after_the_lookup_finds_nothing():
    from indexflow.tasks.errors import RateLimitedError, TransientAPIError

    result, calls = _create_once([TransientAPIError("503", status=503), RateLimitedError("429", retry_after=7.0)],
                                 [None, None])
    assert result == "batches/new" and calls["create"] == 3 and calls["slept"] == [1.0, 7.0]

    result, calls = _create_once([TransientAPIError("x", status=503)] * 3, [None] * 3)
    assert isinstance(result, BatchJobError) and result.state == "NOT_CREATED" and result.transient
    assert calls["create"] == 3 and calls["find"] == 3


def test_create_rejection_is_not_retried_and_a_failed_lookup_is_unknown():
    from indexflow.tasks.errors import BadRequestError, TransientAPIError

    result, calls = _create_once([BadRequestError("400", status=400)], [])
    assert isinstance(result, BadRequestError) and calls["find"] == 0

    result, calls = _create_once([TransientAPIError("x", status=500)], [TransientAPIError("list", status=503)])
    assert isinstance(result, BatchJobError) and result.state == "UNKNOWN" and calls["create"] == 1


# -- faults at batch creation, through the real SDK and the emulator ------------------------------


@pytest.mark.parametrize("kind", ["drop", "hang"])
def test_a_create_whose_answer_is_lost_is_adopted_not_paid_twice(emu, corpus_300, tmp_path, kind):
    # "drop"/"hang": the emulator creates the job, then the answer never arrives.
    emu.admin.set_faults(script=[{"kind": kind, "count": 1, "target": "batch_create"}])
    # Short enough that a hung create gives up soon, long enough that the lookup after it answers
    # on a loaded machine (1 s timed the lookup out too beside a CPU hog).
    ep = Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url, timeout_seconds=4.0)
    s = settings_for(corpus_300, tmp_path)
    out = batch(s, ep)
    assert out.error is None and out.status == "completed" and out.committed_rows == 300
    stats = emu.admin.stats()
    assert stats[f"faults.batch_create.{kind}"] == 1
    assert stats["batches.created"] == 1, "the lost job was found by its display name, not created again"


@pytest.mark.parametrize("kind", ["429", "503"])
def test_a_refused_create_is_retried_and_makes_one_job(emu, endpoint, corpus_300, tmp_path, kind):
    emu.admin.set_faults(script=[{"kind": kind, "count": 2, "target": "batch_create"}])
    slept = []

    async def sleep(seconds):  # the waits asked for, each cut to 20 ms of real time (polls keep going)
        slept.append(seconds)
        await asyncio.sleep(min(seconds, 0.02))

    out = batch(settings_for(corpus_300, tmp_path), endpoint, sleep=sleep)
    assert out.error is None and out.committed_rows == 300
    stats = emu.admin.stats()
    assert stats[f"faults.batch_create.{kind}"] == 2 and stats["batches.created"] == 1
    assert slept[:2] == [2.0, 4.0], "2 s, then doubled, between refused creates (429: no Retry-After given)"


# -- the whole report of a run (every counter a user reads) -----------------------------------------


def small_corpus(path: Path, ids: list[int]) -> Path:
    with open(path, "w") as f:
        for i in ids:
            f.write(json.dumps({"id": f"d{i}", "title": f"Doc {i}", "text": f"Note {i}: " + " ".join(
                f"w{i}x{j}" for j in range(12)) + "."}) + "\n")
    return path


def tokens_of(s: Settings, ids: list[int]) -> int:
    return sum(c.tokens for c in corpus_chunks(s, ProblemLog()) if int(c.doc_id[1:]) in ids)


def test_the_cost_of_a_run_at_the_documented_prices():
    from indexflow.tasks.batch.outcome import BatchOutcome
    from indexflow.tasks.plan import PlanCounts

    out = BatchOutcome(PlanCounts(), ProblemLog(), batch_tokens=2_000_000, online_tokens=1_000_000)
    assert out.batch_cost_usd == pytest.approx(0.15, rel=1e-12)  # $0.075 per million batch tokens
    assert out.online_equivalent_cost_usd == pytest.approx(0.30, rel=1e-12)  # $0.15 per million online
    assert out.cost_usd == pytest.approx(0.15 + 0.15, rel=1e-12)


def test_a_run_reports_every_count_and_its_progress(emu, endpoint, tmp_path):
    from indexflow.tasks.batch.outcome import BatchOutcome
    from indexflow.tasks.embed_options import EmbedStats
    from indexflow.tasks.plan import PlanCounts

    s = settings_for(small_corpus(tmp_path / "c.jsonl", list(range(5))), tmp_path, "t")
    seen: list[tuple[int, int | None]] = []
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, max_items_per_job=2),
                on_progress=lambda done, total: seen.append((done, total)))
    tokens = tokens_of(s, list(range(5)))
    assert len(out.run_id) == 12 and int(out.run_id, 16) >= 0, "a fresh 12-hex-digit run id"
    assert out == BatchOutcome(
        plan=PlanCounts(docs_seen=5, docs_new=5, chunks_seen=5, chunks_new=5, tokens_to_embed=tokens),
        problems=ProblemLog(), embed=EmbedStats(), status="completed", committed_rows=5, run_id=out.run_id,
        jobs_created=3, jobs_collected=3, chunks_submitted=5, chunks_embedded_batch=5, batch_tokens=tokens)
    jobs = sorted(ledger_of(s).jobs(), key=lambda j: j.part)
    assert [j.key for j in jobs] == [job_key("t", out.run_id, p) for p in (1, 2, 3)]
    assert [(j.items, j.generation, j.parent, j.route) for j in jobs] == [(2, 0, None, "inline")] * 2 + [
        (1, 0, None, "inline")]
    assert seen[-1] == (5, 5) and {t for _, t in seen} == {5}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen), "progress never goes back"

    seen.clear()
    again = batch(s, endpoint, run_id="again", total=42, on_progress=lambda done, total: seen.append((done, total)))
    assert again == BatchOutcome(
        plan=PlanCounts(docs_seen=5, docs_unchanged=5, chunks_seen=5, chunks_unchanged=5),
        problems=ProblemLog(), embed=EmbedStats(), status="completed", run_id="again")
    assert seen == [], "nothing to watch, nothing to report"


def test_a_resumed_run_reports_in_flight_chunks_and_deletes_only_once_no_job_is_left(emu, endpoint, tmp_path):
    from indexflow.tasks.batch.outcome import BatchOutcome
    from indexflow.tasks.embed_options import EmbedStats
    from indexflow.tasks.plan import PlanCounts

    corpus = small_corpus(tmp_path / "c.jsonl", [0, 1, 2, 3, 4])
    s = settings_for(corpus, tmp_path, "t")
    assert batch(s, endpoint, run_id="r1").committed_rows == 5
    small_corpus(corpus, [0, 1, 2, 3, 5])  # d4 removed, d5 added
    emu.admin.set_batch_config({"running_seconds": 1.0})

    waiting = batch(s, endpoint, run_id="r2", wait_limit_seconds=0.05)
    key = job_key("t", "r2", 1)
    assert waiting == BatchOutcome(
        plan=PlanCounts(docs_seen=5, docs_new=1, docs_unchanged=4, chunks_seen=5, chunks_new=1, chunks_unchanged=4,
                        tokens_to_embed=tokens_of(s, [5])),
        problems=ProblemLog(), embed=EmbedStats(), status="waiting", run_id="r2", jobs_created=1,
        jobs_waiting=[key], chunks_submitted=1)
    assert "d4#0" in rows(s), "a job is still alive: nothing is deleted yet"

    seen: list[tuple[int, int | None]] = []
    done = batch(s, endpoint, run_id="r3", on_progress=lambda d, t: seen.append((d, t)))
    assert done == BatchOutcome(
        plan=PlanCounts(docs_seen=5, docs_new=1, docs_unchanged=4, docs_deleted=1, chunks_seen=5, chunks_new=1,
                        chunks_unchanged=4, chunks_stale=1, tokens_to_embed=tokens_of(s, [5])),
        problems=ProblemLog(), embed=EmbedStats(), status="completed", run_id="r3", committed_rows=1, deleted_rows=1,
        jobs_resumed=1, jobs_collected=1, chunks_in_flight=1, chunks_embedded_batch=1, batch_tokens=tokens_of(s, [5]))
    assert sorted(rows(s)) == ["d0#0", "d1#0", "d2#0", "d3#0", "d5#0"]
    assert seen[-1] == (1, 1) and {t for _, t in seen} == {1}


def test_a_run_that_fails_keeps_stale_rows(emu, endpoint, tmp_path):
    corpus = small_corpus(tmp_path / "c.jsonl", [0, 1, 2])
    s = settings_for(corpus, tmp_path, "t")
    assert batch(s, endpoint).committed_rows == 3
    small_corpus(corpus, [0, 1, 3])  # d2 removed, d3 added; d3's job fails and the run with it
    emu.admin.set_batch_config({"fail_next_jobs": 1})
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, failed_jobs="fail"))
    assert out.status == "error" and out.jobs_failed == 1 and out.jobs_waiting == []
    assert (out.committed_rows, out.deleted_rows, out.plan.chunks_stale) == (0, 0, 0)
    assert sorted(rows(s)) == ["d0#0", "d1#0", "d2#0"], "a failed run deletes nothing"


# -- polling: backing off, the wait limit and status-read failures ------------------------------------
#
# The emulator has no fault for status reads (batches.get), and a refused connection makes the SDK's
# aiohttp transport wait 1-10 s (random) and retry once by itself. So the status reads go through a
# gateway in front of the real emulator that answers 503 UNAVAILABLE (Google's body) to the requests
# its schedule says, and forwards the others.


class Gateway:
    def __init__(self, upstream: str, fails):
        import http.server
        import threading
        import urllib.error
        import urllib.request

        self.fails, self.requests = fails, 0
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                gateway.requests += 1
                if gateway.fails(gateway.requests):
                    status, body = 503, json.dumps({"error": {"code": 503, "status": "UNAVAILABLE",
                                                              "message": "The service is currently unavailable."}})
                    body = body.encode()
                else:
                    request = urllib.request.Request(upstream + self.path, headers={
                        k: v for k, v in self.headers.items() if k.lower().startswith("x-goog")})
                    try:
                        with urllib.request.urlopen(request, timeout=30) as answer:
                            status, body = answer.status, answer.read()
                    except urllib.error.HTTPError as error:
                        status, body = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(emu):
    made = []

    def make(fails) -> Endpoint:
        made.append(Gateway(emu.base_url, fails))
        return Endpoint(api_key=SecretStr(emu.api_key), base_url=made[-1].url)

    yield make
    for g in made:
        g.close()


def waiting_job(emu, endpoint, s) -> str:
    """A run that leaves one live 5-item job in the ledger (the emulator takes a minute over it)."""
    emu.admin.set_batch_config({"running_seconds": 60})
    first = batch(s, endpoint, run_id="r1", wait_limit_seconds=0.05)
    assert first.status == "waiting" and first.jobs_waiting == [job_key("t", "r1", 1)]
    return first.jobs_waiting[0]


def watch(s, endpoint, wait_limit, options=None):
    from tests.fakes import FakeClock

    clock = FakeClock()
    # Jitter off: these tests pin the guide's table and the backoff to the second.
    out = asyncio.run(run_batch(s, endpoint, options=options or BatchOptions(poll_jitter=0.0),
                                wait_limit_seconds=wait_limit, run_id="r2", clock=clock, sleep=clock.sleep))
    return out, clock


def test_polls_back_off_while_idle_and_stop_at_the_wait_limit(emu, endpoint, gateway, tmp_path):
    s = settings_for(small_corpus(tmp_path / "c.jsonl", list(range(5))), tmp_path, "t")
    key = waiting_job(emu, endpoint, s)
    out, clock = watch(s, gateway(lambda n: True), 10.0)
    # 5 items: 2 s, x1.5 per idle round, capped at 5 s; the last sleep ends exactly at the limit
    assert clock.sleeps == [3.0, 4.5, 2.5] and clock.now == 10.0
    assert out.status == "waiting" and out.error is None and out.jobs_resumed == 1 and out.jobs_waiting == [key]
    assert out.chunks_in_flight == 5 and out.jobs_created == 0


def test_by_default_each_poll_interval_is_jittered_within_10_percent_of_the_table(emu, endpoint, gateway, tmp_path):
    s = settings_for(small_corpus(tmp_path / "c.jsonl", list(range(5))), tmp_path, "t")
    waiting_job(emu, endpoint, s)
    out, clock = watch(s, gateway(lambda n: True), 30.0, options=BatchOptions())
    table = [3.0, 4.5] + [5.0] * (len(clock.sleeps) - 2)
    assert out.status == "waiting" and len(clock.sleeps) >= 6
    # the last sleep is cut to end at the wait limit; every other one is the table's +- 10 %
    assert all(0.9 * t <= got <= 1.1 * t for got, t in zip(clock.sleeps[:-1], table))
    assert clock.sleeps[:-1] != table[:-1], "no jitter at all"


def test_the_run_gives_up_after_21_status_read_failures_in_a_row_and_keeps_its_jobs(emu, endpoint, gateway,
                                                                                    tmp_path):
    s = settings_for(small_corpus(tmp_path / "c.jsonl", list(range(5))), tmp_path, "t")
    key = waiting_job(emu, endpoint, s)
    out, clock = watch(s, gateway(lambda n: True), None)
    assert out.status == "error" and out.error.transient and out.error.status == 503
    assert clock.sleeps == [3.0, 4.5] + [5.0] * 18, "20 failures are waited out, the 21st ends the run"
    assert out.jobs_waiting == [key] and out.committed_rows == 0
    (job,) = ledger_of(s).jobs()
    assert job.live and job.key == key, "the job stays recorded for the next run"

    # one good read starts the count again: 20 failures after it are waited out
    out, clock = watch(s, gateway(lambda n: n != 1), 2.0 + 3.0 + 4.5 + 5.0 * 17)
    assert out.status == "waiting" and out.error is None, out.error
    assert clock.sleeps == [2.0, 3.0, 4.5] + [5.0] * 17
    assert [j.key for j in ledger_of(s).jobs() if j.live] == [key]


# -- parts: the limits reached exactly ----------------------------------------------------------------


def test_a_part_may_fill_the_token_cap_and_the_inline_limit_exactly(emu, endpoint, tmp_path):
    from indexflow.tasks.batch.wire import body_size, inline_body

    corpus = small_corpus(tmp_path / "c.jsonl", [10, 11, 12, 13])  # four chunks of the same size
    s = settings_for(corpus, tmp_path, "cap")
    chunks = list(corpus_chunks(s, ProblemLog()))
    assert len({c.tokens for c in chunks}) == 1
    cap = 2 * chunks[0].tokens
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, max_tokens_per_job=cap), run_id="cap")
    assert out.status == "completed" and out.jobs_created == 2
    assert [j.items for j in sorted(ledger_of(s).jobs(), key=lambda j: j.part)] == [2, 2], "2 chunks = the cap"

    def route_at(limit: int, table: str) -> str:
        t = settings_for(corpus, tmp_path, table)
        size = body_size(inline_body(chunks, t.recipe, job_key(table, "r", 1)))
        out = batch(t, endpoint, BatchOptions(poll_seconds=0.02, inline_limit_bytes=size + limit), run_id="r")
        assert out.status == "completed" and out.committed_rows == 4
        (job,) = ledger_of(t).jobs()
        return job.route

    assert route_at(0, "exact") == "inline", "a body of exactly the limit goes inline"
    assert route_at(-1, "over") == "file"


def test_a_create_the_server_refuses_makes_no_job_and_closes_the_intent(emu, endpoint, tmp_path):
    s = settings_for(small_corpus(tmp_path / "c.jsonl", [0, 1]), tmp_path, "t", model="no-such-model-" + "x" * 600)
    out = batch(s, endpoint, run_id="r")
    assert out.status == "error" and isinstance(out.error, ConfigError) and out.error.status == 404
    assert out.jobs_created == 0 and out.jobs_waiting == [] and emu.admin.stats().get("batches.created", 0) == 0
    (job,) = ledger_of(s).jobs()
    assert (job.key, job.state, job.resolution, job.job_name) == (job_key("t", "r", 1), INTENT, "not_created", None)
    assert len(str(out.error)) > 500 and job.error == str(out.error)[:500] and not job.open


def test_the_ledger_says_running_only_once_the_server_does(emu, endpoint, tmp_path):
    corpus = small_corpus(tmp_path / "c.jsonl", [0, 1])
    emu.admin.set_batch_config({"pending_seconds": 60, "running_seconds": 60})
    pending = settings_for(corpus, tmp_path, "pending")
    assert batch(pending, endpoint, wait_limit_seconds=0.2).status == "waiting"
    assert [j.state for j in ledger_of(pending).jobs()] == ["CREATED"]

    emu.admin.set_batch_config({"pending_seconds": 0, "running_seconds": 60})
    running = settings_for(corpus, tmp_path, "running")
    assert batch(running, endpoint, wait_limit_seconds=0.2).status == "waiting"
    assert [j.state for j in ledger_of(running).jobs()] == ["RUNNING"]


def test_an_intent_that_never_became_a_job_does_not_stop_the_resume_of_the_others(emu, endpoint, tmp_path):
    from datetime import datetime, timedelta, timezone

    s = settings_for(small_corpus(tmp_path / "c.jsonl", [0, 1, 2]), tmp_path, "t")
    emu.admin.set_batch_config({"running_seconds": 60})
    first = batch(s, endpoint, run_id="r1", wait_limit_seconds=0.05)
    assert first.status == "waiting"
    chunks = list(corpus_chunks(s, ProblemLog()))
    crashed = job_key("t", "crashed", 1)  # older than r1's job: resumed first
    ledger_of(s).record_intent(JobRecord(crashed, "crashed", 1, INTENT, "inline", 1, chunks[0].tokens,
                                         created_at=datetime.now(timezone.utc) - timedelta(hours=1)), chunks[:1])
    assert [j.key for j in ledger_of(s).jobs(open_only=True)] == [crashed, job_key("t", "r1", 1)]
    second = batch(s, endpoint, run_id="r2", wait_limit_seconds=0.05)
    assert second.status == "waiting" and second.jobs_resumed == 1 and second.jobs_created == 0
    assert second.jobs_waiting == [job_key("t", "r1", 1)] and second.chunks_in_flight == 3
    assert ledger_of(s).get(crashed).resolution == "not_created"


def test_an_output_file_that_cannot_be_downloaded_stops_the_run_with_an_indexflow_error(emu, endpoint, tmp_path,
                                                                                        genai_client_for):
    from indexflow.tasks.batch.watch import read_status
    from indexflow.tasks.gemini.client import make_client

    s = settings_for(small_corpus(tmp_path / "c.jsonl", [0, 1]), tmp_path, "t")
    emu.admin.set_batch_config({"running_seconds": 0.5})
    first = batch(s, endpoint, BatchOptions(poll_seconds=0.02, inline_limit_bytes=10), wait_limit_seconds=0.05)
    assert first.status == "waiting"
    (job,) = ledger_of(s).jobs()
    assert job.route == "file"

    async def finished():
        client = make_client(endpoint)
        deadline = time.monotonic() + 60
        status = await read_status(client, job.job_name)
        while not status.done and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status = await read_status(client, job.job_name)
        return status

    status = asyncio.run(finished())
    assert status.state == "SUCCEEDED" and status.output_file
    genai_client_for(emu).files.delete(name=status.output_file)  # gone before the next run collects it
    out = batch(s, endpoint)
    assert out.status == "error" and isinstance(out.error, ConfigError) and out.error.status == 404
    assert out.committed_rows == 0 and out.jobs_waiting == [job.key], "the job stays for a later run"


# -- dead letters across jobs and across routes ---------------------------------------------------------


def with_big_doc(path: Path, ids: list[int]) -> Path:
    """small_corpus(ids) plus document "big": one chunk the emulator's tokenizer counts at over 300 tokens."""
    small_corpus(path, ids)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(path, "a") as f:
        f.write(json.dumps({"id": "big", "title": "Big", "text": " ".join(words[j % 12] + str(j) for j in range(200))})
                + "\n")
    return path


def wait_until_done(endpoint: Endpoint, job_name: str) -> None:
    from indexflow.tasks.batch.watch import read_status
    from indexflow.tasks.gemini.client import make_client

    async def poll():
        client = make_client(endpoint)
        deadline = time.monotonic() + 60
        while not (status := await read_status(client, job_name)).done:
            assert time.monotonic() < deadline, "the job never finished"
            await asyncio.sleep(0.05)
        assert status.state == "SUCCEEDED"

    asyncio.run(poll())


def recorded_finished_job(emu, endpoint, s: Settings, run_id: str, chunks, client) -> str:
    """A job of an earlier run, as that run left it: created on the server, recorded in the ledger, not
    collected; it has SUCCEEDED on the server by the time this returns (no race with a first run's poll)."""
    key = job_key(s.table, run_id, 1)
    uploaded = client.files.upload(file=io.BytesIO(jsonl_input(chunks, s.recipe)), config={"mime_type": "jsonl"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = client.batches.create_embeddings(model=s.model, src={"file_name": uploaded.name},
                                               config={"display_name": key})
    ledger = Ledger.open(s.db_uri, s.table)
    ledger.record_intent(JobRecord(key, run_id, 1, INTENT, "file", len(chunks), sum(c.tokens for c in chunks),
                                   input_file=uploaded.name), chunks)
    ledger.update(key, state="CREATED", job_name=job.name)
    wait_until_done(endpoint, job.name)
    return key


def test_the_report_lists_the_first_20_failures_across_jobs(emu, endpoint, tmp_path):
    emu.admin.set_batch_config({"item_failure_rate": 1.0})
    s = settings_for(small_corpus(tmp_path / "c.jsonl", list(range(30))), tmp_path, "t")
    out = batch(s, endpoint, BatchOptions(poll_seconds=0.02, max_items_per_job=15, item_errors="dead_letter"))
    assert out.status == "completed" and out.jobs_collected == 2
    assert out.dead_lettered == 30 == VectorStore.open(s.db_uri, s.table, create=False).count_dead_letters()
    assert len(out.failures) == 20, "15 from the first job, then 5 from the second: 20 in all"
    assert [j.dead_lettered for j in ledger_of(s).jobs()] == [15, 15]


def test_item_errors_that_fail_online_too_are_dead_lettered_and_logged(emu, endpoint, tmp_path, caplog,
                                                                       genai_client_for):
    s = settings_for(with_big_doc(tmp_path / "c.jsonl", [0, 1, 2, 3]), tmp_path, "t")
    open_store(s)
    emu.admin.set_batch_config({"item_failure_rate": 1.0})
    key = recorded_finished_job(emu, endpoint, s, "r1", list(corpus_chunks(s, ProblemLog())), genai_client_for(emu))
    # Every item failed in the job (code 13, worth retrying online); online, "big" is now too long (400).
    emu.admin.set_config(max_input_tokens=300)
    with caplog.at_level(logging.INFO, logger="indexflow.batch"):
        out = batch(s, endpoint, run_id="r2")
    assert out.status == "completed" and out.item_failures == 5 and out.jobs_collected == 1
    assert out.retried_online == 4 and out.dead_lettered == 1
    assert f"collected {key}: 0 written, 4 retried online, 1 dead-lettered" in caplog.messages
    job = ledger_of(s).get(key)
    assert (job.state, job.retried_online, job.dead_lettered) == (COLLECTED, 4, 1)
    assert [d.chunk_id for d in VectorStore.open(s.db_uri, s.table, create=False).dead_letters()] == ["big#0"]
    assert sorted(rows(s)) == ["d0#0", "d1#0", "d2#0", "d3#0"]


def test_an_unresolved_failed_job_goes_online_in_the_round_that_collects_the_others(emu, endpoint, tmp_path,
                                                                                    genai_client_for):
    from datetime import datetime, timedelta, timezone

    from indexflow.tasks.batch.ledger import FAILED
    from tests.fakes import FakeClock

    corpus = small_corpus(tmp_path / "c.jsonl", [1, 2])
    s = settings_for(corpus, tmp_path, "t")
    open_store(s)
    # SUCCEEDED on the server, recorded live: the run's first poll collects it
    recorded_finished_job(emu, endpoint, s, "r1", list(corpus_chunks(s, ProblemLog())), genai_client_for(emu))

    # A job of an earlier run that ended FAILED, its recovery never done (a crash): d0 and "big".
    with_big_doc(corpus, [0, 1, 2])
    lost = [c for c in corpus_chunks(s, ProblemLog()) if c.doc_id in ("d0", "big")]
    failed = job_key("t", "crashed", 1)
    ledger = ledger_of(s)
    ledger.record_intent(JobRecord(failed, "crashed", 1, INTENT, "inline", 2, sum(c.tokens for c in lost),
                                   created_at=datetime.now(timezone.utc) - timedelta(hours=1)), lost)
    ledger.update(failed, state=FAILED, job_name="batches/lost", error="lost")
    emu.admin.set_config(max_input_tokens=300)  # online, "big" is refused (400): it is dead-lettered

    clock = FakeClock()
    out = asyncio.run(run_batch(s, endpoint, options=BatchOptions(failed_jobs="online"), wait_limit_seconds=600,
                                run_id="r2", clock=clock, sleep=clock.sleep))
    assert out.status == "completed" and out.error is None
    assert (out.jobs_resumed, out.jobs_failed, out.jobs_collected, out.jobs_created) == (2, 1, 1, 0)
    assert clock.sleeps == [], "the live job is polled (and collected) in the same round as the recovery"
    assert out.chunks_in_flight == 4 and out.online_fallback_chunks == 2 and out.dead_lettered == 1
    assert out.embed.embedded == 1 and out.embed.dead_lettered == 1 and out.embed.calls >= 1
    assert out.embed.max_reader_lead == 0 and out.embed.reader_lead_bound == 0, "not a sum across online parts"
    job = ledger_of(s).get(failed)
    assert (job.resolution, job.retried_online, job.dead_lettered) == ("online", 1, 1)
    assert sorted(rows(s)) == ["d0#0", "d1#0", "d2#0"]
