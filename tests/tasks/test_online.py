"""The online route's promises, with the emulator's stats as evidence and a real LanceDB table.

Never pay twice, replace changed documents, delete what is gone, survive every fault with each
chunk indexed exactly once, and dead-letter what the API refuses while the rest completes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import lancedb
import numpy as np
import pytest
from pydantic import SecretStr

from indexflow.emulator.embedding import embed_texts
from indexflow.tasks.errors import RecipeMismatchError
from indexflow.tasks.online import run_online
from indexflow.tasks.plan import plan_run
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.store import VectorStore, chunk_schema

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


def sentence(seed: int, n: int = 12) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n)).capitalize() + "."


def make_docs(n: int) -> dict[str, dict]:
    return {f"d{i}": {"title": f"Doc {i}", "text": " ".join(sentence(i * 100 + j) for j in range(5))} for i in range(n)}


def write_jsonl(path: Path, docs: dict[str, dict], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps({"id": k, **v}) for k, v in docs.items()] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    return tmp_path / "corpus.jsonl"


def settings(corpus: Path, tmp_path: Path, **kw) -> Settings:
    return Settings(corpus=corpus, db_uri=str(tmp_path / "db"), table="t", **kw)


def endpoint(emu, **kw) -> Endpoint:
    return Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url, **kw)


def run(s: Settings, ep: Endpoint):
    return asyncio.run(run_online(s, ep))


def rows(s: Settings) -> dict[str, dict]:
    table = VectorStore.open(s.db_uri, s.table, create=False).table.to_arrow().to_pylist()
    return {r["id"]: r for r in table}


def assert_exact_vectors(s: Settings, docs: dict[str, dict]) -> None:
    """Every document's single chunk is present once, with the emulator's vector, normalized."""
    table = VectorStore.open(s.db_uri, s.table, create=False).table.to_arrow()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert sorted(ids) == sorted(f"{d}#0" for d in docs)
    got = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    texts = table.column("text").to_pylist()
    titles = table.column("title").to_pylist()
    want = embed_texts(texts, s.dimensions, "RETRIEVAL_DOCUMENT", titles)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_first_run_embeds_everything_and_a_rerun_makes_zero_calls(emu, corpus, tmp_path):
    docs = make_docs(30)
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=7)
    out = run(s, endpoint(emu))
    assert out.error is None and out.committed_rows == 30
    assert emu.admin.stats()["texts"] == 30
    assert_exact_vectors(s, docs)

    emu.admin.reset()
    again = run(s, endpoint(emu))
    assert again.committed_rows == 0 and again.plan.chunks_unchanged == 30
    assert emu.admin.stats().get("calls", 0) == 0


def test_editing_one_document_reembeds_only_it(emu, corpus, tmp_path):
    docs = make_docs(20)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    before = rows(s)
    docs["d7"]["text"] += " An added sentence."
    write_jsonl(corpus, docs)
    emu.admin.reset()
    out = run(s, endpoint(emu))
    assert emu.admin.stats()["texts"] == 1
    assert (out.plan.docs_changed, out.plan.docs_unchanged, out.plan.chunks_changed) == (1, 19, 1)
    after = rows(s)
    assert after["d7#0"]["text"].endswith("An added sentence.")
    assert after["d7#0"]["content_hash"] != before["d7#0"]["content_hash"]
    assert all(after[k]["indexed_at"] == before[k]["indexed_at"] for k in before if k != "d7#0")


def test_changing_a_title_reembeds_because_the_title_is_in_the_hash(emu, corpus, tmp_path):
    docs = make_docs(5)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    docs["d2"]["title"] = "A new title"
    write_jsonl(corpus, docs)
    emu.admin.reset()
    run(s, endpoint(emu))
    assert emu.admin.stats()["texts"] == 1
    assert_exact_vectors(s, docs)


def test_a_table_from_before_the_metadata_column_gains_it_without_a_single_call(emu, corpus, tmp_path):
    docs = make_docs(12)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    # Rewrite the table as a version without the column left it: same rows, key and recipe.
    db = lancedb.connect(s.db_uri)
    data = db.open_table(s.table).to_arrow().drop_columns(["metadata"])
    old = chunk_schema(s.recipe)
    old = old.remove(old.get_field_index("metadata"))
    db.drop_table(s.table)
    db.create_table(s.table, data=data.cast(old.remove_metadata()), schema=old)
    assert db.open_table(s.table).schema == old

    emu.admin.reset()
    out = run(s, endpoint(emu))  # the nightly run of the new version
    assert out.error is None and out.committed_rows == 0 and out.plan.chunks_unchanged == 12
    assert emu.admin.stats().get("calls", 0) == 0
    got = {k: (r["metadata"]["id"], r["metadata"]["doc_id"], r["metadata"]["title"]) for k, r in rows(s).items()}
    assert got == {f"d{i}#0": (f"d{i}#0", f"d{i}", f"Doc {i}") for i in range(12)}
    assert_exact_vectors(s, docs)

    docs["d3"]["title"] = "Doc 3, renamed"  # and later runs keep the column current
    write_jsonl(corpus, docs)
    run(s, endpoint(emu))
    assert emu.admin.stats()["texts"] == 1
    assert rows(s)["d3#0"]["metadata"]["title"] == "Doc 3, renamed"


def test_a_deleted_document_loses_its_rows_unless_deletion_is_off(emu, corpus, tmp_path):
    docs = make_docs(10)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    del docs["d3"]
    write_jsonl(corpus, docs)

    kept = run(settings(corpus, tmp_path, delete_missing=False), endpoint(emu))
    assert "d3#0" in rows(s) and kept.deleted_rows == 0

    out = run(s, endpoint(emu))
    assert out.plan.docs_deleted == 1 and out.deleted_rows == 1
    assert "d3#0" not in rows(s) and len(rows(s)) == 9


def test_a_shrunk_document_loses_its_stale_tail(emu, corpus, tmp_path):
    long_text = "\n\n".join(" ".join(sentence(k * 10 + j, 40) for j in range(6)) for k in range(6))
    docs = {"long": {"title": "Long", "text": long_text}, "short": {"title": "S", "text": sentence(1)}}
    s = settings(write_jsonl(corpus, docs), tmp_path, max_chunk_tokens=256, overlap_tokens=16)
    run(s, endpoint(emu))
    long_ids = [k for k in rows(s) if k.startswith("long#")]
    assert len(long_ids) >= 3
    docs["long"]["text"] = sentence(99)
    write_jsonl(corpus, docs)
    out = run(s, endpoint(emu))
    assert sorted(rows(s)) == ["long#0", "short#0"]
    assert out.deleted_rows == len(long_ids) - 1


def test_unreadable_records_are_reported_and_protect_what_is_indexed(emu, corpus, tmp_path):
    docs = make_docs(6)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    # d2 and d5 cannot be read this time, but their lines still say which documents they are;
    # d4 is gone for real. Every problem names its document, so only d2 and d5 are protected.
    del docs["d2"], docs["d4"], docs["d5"]
    write_jsonl(corpus, docs, extra_lines=['{"id": "d2", "title": "Doc 2", "text": 12}',
                                           '{"id": "d5", "title": "Doc 5", "text": "   "}'])
    out = run(s, endpoint(emu))
    assert out.problems.count == 2 and out.problems.unidentified == 0
    assert set(out.problems.by_reason) == {"bad_text", "empty"}
    assert any("corpus.jsonl:4" in p for p in out.problems.samples)
    assert sorted(rows(s)) == ["d0#0", "d1#0", "d2#0", "d3#0", "d5#0"], \
        "a read error must never delete what is indexed, and a gone document is still deleted"
    assert (out.plan.docs_deleted, out.deleted_rows, out.plan.deletion_skipped_reason) == (1, 1, None)


def test_a_line_that_names_no_document_keeps_every_missing_one(emu, corpus, tmp_path):
    docs = make_docs(6)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    run(s, endpoint(emu))
    # d5 disappears behind a malformed line: we cannot know which document that line was
    del docs["d5"]
    write_jsonl(corpus, docs, extra_lines=['{"id": "d5", "title": "broken'])
    out = run(s, endpoint(emu))
    assert out.problems.count == 1 and out.problems.unidentified == 1
    assert any("corpus.jsonl:6" in p for p in out.problems.samples)
    assert "d5#0" in rows(s) and out.deleted_rows == 0
    assert out.plan.deletion_skipped_reason is not None


@pytest.mark.parametrize("kind", ["500", "503", "429", "drop", "malformed", "wrong_count", "hang"])
def test_each_fault_kind_ends_with_every_chunk_indexed_exactly_once(emu, corpus, tmp_path, kind):
    docs = make_docs(40)
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=10, concurrency=4)
    emu.admin.set_faults(script=[{"kind": kind, "count": 3}])
    ep = endpoint(emu, timeout_seconds=1.0) if kind == "hang" else endpoint(emu)
    out = run(s, ep)
    assert out.error is None and out.dead_lettered == 0
    stats = emu.admin.stats()
    assert stats[f"faults.{kind}"] == 3
    assert out.embed.retries >= 3
    assert_exact_vectors(s, docs)


def test_an_answer_that_drips_in_past_the_call_deadline_is_abandoned_and_retried(emu, corpus, tmp_path):
    docs = make_docs(20)
    # 20 s to trickle in, a piece every 0.8 s. The transport's 30 s timeout never ends it: httpx
    # bounds each read, aiohttp (when installed) the whole call, and both outlast the drip.
    emu.admin.set_config(drip_seconds=20.0)
    emu.admin.set_faults(script=[{"kind": "drip", "count": 1}])
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=20, concurrency=1, call_deadline_seconds=1.5)
    started = time.monotonic()
    out = run(s, endpoint(emu, timeout_seconds=30.0))
    took = time.monotonic() - started
    assert out.error is None and out.embed.retries == 1
    assert emu.admin.stats()["faults.drip"] == 1
    assert took < 20.0, f"{took:.1f} s: the dripping answer was awaited in full"
    assert_exact_vectors(s, docs)


def test_a_burst_of_429s_and_random_faults_still_index_everything_once(emu, corpus, tmp_path):
    docs = make_docs(60)
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=5, concurrency=6)
    emu.admin.set_faults(script=[{"kind": "429", "count": 8}], rates={"500": 0.1, "503": 0.1, "drop": 0.05}, seed=3)
    out = run(s, endpoint(emu))
    assert out.error is None
    assert out.embed.rate_limited >= 8
    assert_exact_vectors(s, docs)


def test_a_text_the_api_refuses_is_dead_lettered_while_the_rest_completes(emu, corpus, tmp_path):
    docs = make_docs(25)
    docs["big"] = {"title": "Big", "text": " ".join(sentence(5000 + j, 30) for j in range(8))}
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=10)
    # The server's tokenizer counts more than our estimate: it refuses the big text with a 400.
    emu.admin.set_config(max_input_tokens=300)
    out = run(s, endpoint(emu))
    assert out.error is None and out.dead_lettered == 1
    assert out.embed.bisections >= 1
    assert set(rows(s)) == {f"d{i}#0" for i in range(25)}
    dead = VectorStore.open(s.db_uri, s.table, create=False).dead_letters()
    assert [d.chunk_id for d in dead] == ["big#0"] and "300" in dead[0].error

    # Not paid for again on the next run, until asked to retry; then it lands and leaves the dead letters.
    emu.admin.reset()
    again = run(s, endpoint(emu))
    assert again.plan.chunks_dead_skipped == 1 and emu.admin.stats().get("calls", 0) == 0
    retry = run(settings(corpus, tmp_path, batch_size=10, retry_failed=True), endpoint(emu))
    assert retry.committed_rows == 1 and "big#0" in rows(s)
    assert VectorStore.open(s.db_uri, s.table, create=False).dead_letters() == []


def test_an_outage_ends_the_stage_keeping_committed_rows_and_the_rerun_resumes(emu, corpus, tmp_path):
    docs = make_docs(10)
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=10, max_attempts=2)
    run(s, endpoint(emu))
    docs.update({f"n{i}": {"title": "New", "text": sentence(900 + i)} for i in range(20)})
    write_jsonl(corpus, docs)
    emu.admin.set_faults(rates={"503": 1.0}, seed=1)  # down for longer than the retry policy lasts
    out = run(s, endpoint(emu))
    assert out.error is not None and out.error.transient
    assert out.dead_lettered == 0, "an outage must not dead-letter good chunks"
    assert out.deleted_rows == 0 and len(rows(s)) == 10, "what was committed stays"
    emu.admin.reset()
    again = run(s, endpoint(emu))
    assert again.error is None and again.committed_rows == 20
    assert emu.admin.stats()["texts"] == 20, "only what was missing is embedded"
    assert_exact_vectors(s, {k: v for k, v in docs.items()})


def test_an_outage_while_reindexing_edited_documents_deletes_no_row(emu, corpus, tmp_path):
    # The stream stops at the outage with most documents never read: none of them may look deleted.
    docs = make_docs(400)
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=10, concurrency=2, max_attempts=2)
    assert run(s, endpoint(emu)).committed_rows == 400
    before = {k: r["content_hash"] for k, r in rows(s).items()}
    for doc in docs.values():
        doc["text"] += " Edited."
    write_jsonl(corpus, docs)
    emu.admin.set_faults(rates={"503": 1.0}, seed=1)
    out = run(s, endpoint(emu))
    assert out.error is not None and out.error.transient
    assert out.plan.docs_seen < 400, "the outage stopped the stream early (else this test proves nothing)"
    assert out.deleted_rows == 0 and out.committed_rows == 0
    assert {k: r["content_hash"] for k, r in rows(s).items()} == before, "every indexed row stays as it was"


def test_a_recipe_change_is_refused_with_the_way_out(emu, corpus, tmp_path):
    s = settings(write_jsonl(corpus, make_docs(3)), tmp_path)
    run(s, endpoint(emu))
    with pytest.raises(RecipeMismatchError) as info:
        run(settings(corpus, tmp_path, dimensions=1536), endpoint(emu))
    assert "--rebuild" in str(info.value) and '"dimensions": 768' in info.value.stored
    rebuilt = run(settings(corpus, tmp_path, dimensions=1536, rebuild=True), endpoint(emu))
    assert rebuilt.committed_rows == 3


def test_plan_counts_without_calling_the_api(emu, corpus, tmp_path):
    docs = make_docs(12)
    s = settings(write_jsonl(corpus, docs), tmp_path)
    counts, problems = plan_run(s)
    assert (counts.chunks_new, counts.docs_new, problems.count) == (12, 12, 0)
    assert not (tmp_path / "db" / "t.lance").exists(), "planning creates nothing"
    run(s, endpoint(emu))
    docs["d0"]["text"] = "Changed."
    del docs["d1"]
    write_jsonl(corpus, docs)
    emu.admin.reset()
    counts, _ = plan_run(s)
    assert (counts.chunks_changed, counts.chunks_unchanged, counts.docs_deleted) == (1, 10, 1)
    assert emu.admin.stats().get("calls", 0) == 0


def _seed_for(pattern: list[str | None], rates: dict[str, float]) -> int:
    """A fault seed whose first draws give `pattern` (None = answered), found with the emulator's own injector."""
    from indexflow.emulator.faults import FaultInjector

    for seed in range(10_000):
        injector = FaultInjector(rates, seed=seed)
        if [injector.next_fault() for _ in pattern] == pattern:
            return seed
    raise AssertionError(f"no seed gives {pattern}")


def test_a_run_stopped_by_an_outage_reports_what_it_spent(emu, corpus, tmp_path):
    from indexflow.flows.index_corpus import summarize

    s = settings(write_jsonl(corpus, make_docs(30)), tmp_path, batch_size=10, concurrency=1, max_attempts=3)
    # one call at a time: a batch lands, one gets a 429 then lands, then the API stays down (503)
    rates = {"429": 0.3, "503": 0.3}
    emu.admin.set_faults(rates=rates, seed=_seed_for([None, "429", None, "503", "503", "503"], rates))
    out = run(s, endpoint(emu))
    assert out.error is not None and out.error.transient and out.committed_rows == 20
    stats = emu.admin.stats()
    assert (stats["calls"], stats["faults.429"], stats["faults.503"]) == (2, 1, 3)
    e = out.embed
    assert (e.calls, e.retries, e.rate_limited, e.unavailable) == (6, 3, 1, 3)
    assert e.tokens_sent > stats["tokens.online"] > 0, "tokens of refused calls are counted as sent"

    summary = summarize(s, "emulator", "online", out, 1.0)
    assert summary.status == f"stopped: {type(out.error).__name__}"
    assert (summary.api_calls, summary.retries, summary.rate_limited, summary.tokens) == (6, 3, 1, e.tokens_sent)
    rows = {r["metric"]: r["value"] for r in summary.rows()}
    assert (rows["API calls"], rows["retries"], rows["429 responses"]) == (6, 3, 1)

    # The flow raises a transient stop for a Prefect retry; what the stage did travels on the error,
    # through pickle (Prefect moves failed states between processes), to the run's summary.
    import pickle

    from indexflow.flows.index_corpus import _raise_if_retryable

    with pytest.raises(type(out.error)) as raised:
        _raise_if_retryable(out)
    carried = pickle.loads(pickle.dumps(raised.value)).outcome
    assert (carried.embed.calls, carried.embed.retries, carried.committed_rows) == (6, 3, 20)
    assert carried.error is None


def test_a_run_lists_the_first_20_failures_and_counts_every_one(emu, corpus, tmp_path):
    # 25 texts the API refuses, in several batches: the report names 20, the count says 25.
    docs = make_docs(3)
    docs.update({f"big{i}": {"title": "Big", "text": " ".join(sentence(7000 + 10 * i + j, 30) for j in range(8))}
                 for i in range(25)})
    s = settings(write_jsonl(corpus, docs), tmp_path, batch_size=5, concurrency=2)
    emu.admin.set_config(max_input_tokens=300)
    out = run(s, endpoint(emu))
    assert out.error is None and out.dead_lettered == 25 and out.committed_rows == 3
    assert len(out.failures) == 20
    dead = {d.chunk_id: d for d in VectorStore.open(s.db_uri, s.table, create=False).dead_letters()}
    assert set(dead) == {f"big{i}#0" for i in range(25)}
    expected = {f"{d.chunk_id} ({d.source}): {d.error}" for d in dead.values()}
    assert set(out.failures) <= expected and len(set(out.failures)) == 20


def test_a_stage_that_failed_before_reporting_is_summarized_as_nothing_written(corpus, tmp_path):
    # The flow's fallback when a stage raised without an outcome: OnlineOutcome(counts, ...) alone.
    from indexflow.flows.index_corpus import summarize
    from indexflow.tasks.embed_options import EmbedStats
    from indexflow.tasks.online import OnlineOutcome
    from indexflow.tasks.plan import PlanCounts
    from indexflow.tasks.problems import ProblemLog

    counts = PlanCounts(docs_seen=4, docs_new=4, chunks_seen=4, chunks_new=4, tokens_to_embed=40)
    out = OnlineOutcome(counts, ProblemLog(), EmbedStats())
    assert (out.committed_rows, out.deleted_rows, out.dead_lettered, out.failures, out.error) == (0, 0, 0, [], None)
    summary = summarize(settings(write_jsonl(corpus, make_docs(4)), tmp_path), "emulator", "online", out, 1.0)
    assert (summary.chunks_embedded, summary.chunks_deleted, summary.dead_lettered, summary.failures) == (0, 0, 0, [])
    assert summary.plan == counts and summary.status == "completed"


def test_only_a_database_with_nothing_on_disk_skips_reading_the_table(tmp_path):
    from indexflow.tasks.table import nothing_written_yet
    from indexflow.tasks.dead_letters import DEAD_LETTER_SUFFIX
    from indexflow.tasks.table import DEAD_LETTER_SUFFIX as mirrored

    assert mirrored == DEAD_LETTER_SUFFIX
    db = tmp_path / "db"
    s = Settings(corpus=tmp_path, db_uri=str(db), table="kb")
    assert nothing_written_yet(s)
    (db / "kb__dead_letters.lance").mkdir(parents=True)  # an earlier attempt dead-lettered chunks
    assert not nothing_written_yet(s)
    (db / "kb__dead_letters.lance").rmdir()
    (db / "kb.lance").mkdir()
    assert not nothing_written_yet(s)
    assert not nothing_written_yet(s.model_copy(update={"db_uri": "s3://bucket/db"}))
    assert not nothing_written_yet(s.model_copy(update={"rebuild": True, "db_uri": str(tmp_path / "other")}))
