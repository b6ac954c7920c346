"""The plan: which chunks a run embeds, skips and deletes, with the counts it reports; and its
forecast: money from tokens and the price list, time and days from the quota.

Every expectation is worked out by hand from the figures in the test, not from the code.
"""

from __future__ import annotations

import dataclasses

import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.plan import PRICE_PER_MILLION_TOKENS, PlanCounts, Planner, doc_id_of, forecast
from indexflow.tasks.settings import TIERS, Limits


def test_free_tier_requests_per_minute_bind_and_the_day_quota_spreads_the_run():
    # 2,500 texts of 240 tokens = 600,000 tokens, 100 texts per call.
    fc = forecast(2_500, 600_000, batch_size=100, limits=TIERS["free"])  # 100 rpm, 30,000 tpm, 1,000 rpd, per text
    assert fc.calls == 25
    # $0.15 per million tokens online: 0.6 M x 0.15 = $0.09; the Batch API is half: $0.045.
    assert fc.online_cost_usd == pytest.approx(0.09)
    assert fc.batch_cost_usd == pytest.approx(0.045)
    # Each text is a request: 2,500 / 100 rpm = 25 min; 600,000 / 30,000 tpm = 20 min. 25 min bind.
    assert fc.online_seconds == pytest.approx(25 * 60)
    # 2,500 requests at 1,000 a day: 3 days.
    assert fc.days == 3
    assert (fc.texts, fc.tokens) == (2_500, 600_000)


def test_tokens_per_minute_bind_when_texts_are_long():
    # Tier 1: 3,000 rpm, 1,000,000 tpm, no daily limit. 3,000 texts of ~1,667 tokens = 5 M tokens.
    fc = forecast(3_000, 5_000_000, batch_size=100, limits=TIERS["1"])
    assert fc.calls == 30
    assert fc.online_cost_usd == pytest.approx(0.75) and fc.batch_cost_usd == pytest.approx(0.375)
    # 3,000 / 3,000 rpm = 1 min; 5 M / 1 M tpm = 5 min: the tokens bind.
    assert fc.online_seconds == pytest.approx(300)
    assert fc.days == 1


def test_when_the_quota_counts_calls_a_partial_batch_is_a_whole_request():
    # 950 texts at 100 per call: 9 full calls and one of 50 = 10 calls, each one request.
    limits = Limits(rpm=4, rpd=4, count="calls")
    fc = forecast(950, 9_500, batch_size=100, limits=limits)
    assert fc.calls == 10
    assert fc.online_seconds == pytest.approx(10 / 4 * 60)  # 2.5 min at 4 calls a minute
    assert fc.days == 3  # 10 calls at 4 a day: 4 + 4 + 2
    # the same run counted per text: 950 requests at 4 a minute and 4 a day
    per_text = forecast(950, 9_500, batch_size=100, limits=Limits(rpm=4, rpd=4, count="texts"))
    assert per_text.online_seconds == pytest.approx(950 / 4 * 60) and per_text.days == 238


def test_a_run_that_exactly_fills_a_day_takes_one_day_and_one_more_request_takes_two():
    limits = Limits(rpd=1_000, count="texts")
    assert forecast(1_000, 10_000, batch_size=100, limits=limits).days == 1
    assert forecast(1_001, 10_010, batch_size=100, limits=limits).days == 2


def test_without_limits_there_is_no_time_estimate_and_nothing_to_embed_costs_nothing():
    unlimited = forecast(10_000, 2_000_000, batch_size=100, limits=TIERS["unlimited"])
    assert unlimited.online_seconds is None and unlimited.days == 1
    assert unlimited.calls == 100 and unlimited.online_cost_usd == pytest.approx(0.30)
    nothing = forecast(0, 0, batch_size=100, limits=TIERS["free"])
    assert (nothing.calls, nothing.online_cost_usd, nothing.batch_cost_usd, nothing.online_seconds, nothing.days) == (
        0, 0.0, 0.0, 0.0, 1)


def test_batch_is_always_half_the_online_price():
    for tokens in (1, 12_345, 7_000_000):
        fc = forecast(10, tokens, batch_size=10, limits=TIERS["2"])
        assert fc.batch_cost_usd == pytest.approx(fc.online_cost_usd / 2)
        assert fc.online_cost_usd == pytest.approx(tokens * 0.15 / 1_000_000)


# --- the planner: what a run embeds, skips and deletes, and the counts it reports ----------------

def chunk(chunk_id: str, content_hash: str, tokens: int = 1) -> Chunk:
    doc_id, _, ordinal = chunk_id.rpartition("#")
    return Chunk(id=chunk_id, doc_id=doc_id, ordinal=int(ordinal), text=f"text of {chunk_id}", title="T",
                 source="corpus.jsonl", tokens=tokens, content_hash=content_hash)


# The table before the run: chunk id -> content hash.
TABLE = {
    "same#0": "h-same-0", "same#1": "h-same-1",  # read again unchanged
    "edited#0": "h-edited-0", "edited#1": "h-edited-1-old",  # its second chunk was edited
    "shrunk#0": "h-shrunk-0", "shrunk#1": "h-shrunk-1",  # now one chunk: its tail is stale
    "gone#0": "h-gone-0",  # no longer in the corpus
    "a#b#0": "h-ab-0",  # a document id with '#' in it, unchanged
}
# Chunks that failed before, with the content they failed with.
DEAD = {"refused#0": "h-refused-0", "fixed#0": "h-fixed-0-old"}
# This run's chunk stream, document by document.
STREAM = [
    chunk("same#0", "h-same-0"), chunk("same#1", "h-same-1"),
    chunk("edited#0", "h-edited-0"), chunk("edited#1", "h-edited-1", tokens=7),
    chunk("shrunk#0", "h-shrunk-0"),
    chunk("a#b#0", "h-ab-0"),
    chunk("new#0", "h-new-0", tokens=5), chunk("new#1", "h-new-1", tokens=6),
    chunk("refused#0", "h-refused-0", tokens=50),  # the content that failed: skipped, and the stream goes on
    chunk("refused#1", "h-refused-1", tokens=3),
    chunk("fixed#0", "h-fixed-0", tokens=4),  # failed before with other content: embedded
]
TO_EMBED = ["edited#1", "new#0", "new#1", "refused#1", "fixed#0"]
# What every planned run below finds in the stream (before deciding what to delete).
STREAM_COUNTS = dict(
    docs_seen=7, docs_new=3, docs_changed=2, docs_unchanged=2,  # new: new, refused, fixed; changed: edited, shrunk
    chunks_seen=11, chunks_new=4, chunks_changed=1, chunks_unchanged=5, chunks_dead_skipped=1,
    tokens_to_embed=7 + 5 + 6 + 3 + 4,
)


def planned() -> Planner:
    """A planner that has consumed STREAM against TABLE and DEAD (the default: no retry of dead letters)."""
    planner = Planner(dict(TABLE), DEAD)
    assert [c.id for c in planner.select(iter(STREAM))] == TO_EMBED
    return planner


def test_a_fresh_report_counts_nothing():
    assert PlanCounts().as_dict() == {
        "docs_seen": 0, "docs_new": 0, "docs_changed": 0, "docs_unchanged": 0, "docs_deleted": 0,
        "chunks_seen": 0, "chunks_new": 0, "chunks_changed": 0, "chunks_unchanged": 0, "chunks_stale": 0,
        "chunks_dead_skipped": 0, "tokens_to_embed": 0, "deletion_skipped_reason": None, "chunks_to_embed": 0,
    }


def test_a_run_embeds_only_new_and_changed_chunks_and_deletes_stale_tails_and_gone_documents():
    planner = planned()
    assert planner.stale_ids(delete_missing=True) == ["shrunk#1", "gone#0"]
    assert planner.counts == PlanCounts(**STREAM_COUNTS, docs_deleted=1, chunks_stale=2)
    assert planner.counts.chunks_to_embed == 5
    assert planner.counts.as_dict() == {**STREAM_COUNTS, "docs_deleted": 1, "chunks_stale": 2,
                                        "deletion_skipped_reason": None, "chunks_to_embed": 5}


def test_with_deletion_off_gone_documents_are_kept_and_the_report_says_why():
    planner = planned()
    assert planner.stale_ids(delete_missing=False) == ["shrunk#1"]  # a shrunk document's tail still goes
    assert planner.counts == PlanCounts(**STREAM_COUNTS, docs_deleted=0, chunks_stale=1,
                                        deletion_skipped_reason="delete_missing is off")


def test_unreadable_records_of_unknown_documents_keep_every_gone_document():
    planner = planned()
    assert planner.stale_ids(delete_missing=True, unknown_problems=2) == ["shrunk#1"]
    assert planner.counts == PlanCounts(
        **STREAM_COUNTS, docs_deleted=0, chunks_stale=1,
        deletion_skipped_reason="2 corpus record(s) could not be read or identified; "
                                "missing documents are kept until the corpus reads cleanly")


def test_a_document_that_could_not_be_read_is_protected_from_deletion():
    planner = planned()
    assert planner.stale_ids(delete_missing=True, protected_docs={"gone"}) == ["shrunk#1"]
    assert planner.counts == PlanCounts(**STREAM_COUNTS, docs_deleted=0, chunks_stale=1)


def test_with_nothing_gone_deletion_off_gives_no_reason():
    planner = Planner({"a#0": "h-a-0"})
    assert list(planner.select([chunk("a#0", "h-a-0")])) == []
    assert planner.stale_ids(delete_missing=False) == []
    assert planner.counts == PlanCounts(docs_seen=1, docs_unchanged=1, chunks_seen=1, chunks_unchanged=1)


def test_retry_failed_pays_again_for_what_failed_with_the_same_content():
    planner = Planner(dict(TABLE), DEAD, retry_failed=True)
    assert [c.id for c in planner.select(STREAM)] == ["edited#1", "new#0", "new#1", "refused#0", "refused#1",
                                                      "fixed#0"]
    assert planner.counts == PlanCounts(**{**STREAM_COUNTS, "chunks_new": 5, "chunks_dead_skipped": 0,
                                           "tokens_to_embed": 75})


def test_document_ids_may_contain_the_separator():
    assert doc_id_of("a#b#12") == "a#b"
    assert doc_id_of("plain#0") == "plain"
    planner = Planner({"a#b#0": "h0", "a#b#1": "h1"})
    assert list(planner.select([chunk("a#b#0", "h0")])) == []
    assert planner.stale_ids(delete_missing=True) == ["a#b#1"]  # the tail of a#b, not a gone document "a"
    assert planner.counts == PlanCounts(docs_seen=1, docs_changed=1, chunks_seen=1, chunks_unchanged=1,
                                        chunks_stale=1)


def test_an_empty_stream_against_an_empty_table_plans_nothing():
    planner = Planner({})
    assert list(planner.select([])) == [] and planner.stale_ids(delete_missing=True) == []
    assert planner.counts == PlanCounts()


def test_a_forecast_is_a_value():
    fc = forecast(10, 100, batch_size=10, limits=TIERS["1"])
    assert fc == forecast(10, 100, batch_size=10, limits=TIERS["1"]) and len({fc, fc}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        fc.calls = 0


def test_the_price_list_is_gemini_embedding_001s():
    # USD per million input tokens (ai.google.dev pricing): $0.15 online, $0.075 through the Batch API
    assert PRICE_PER_MILLION_TOKENS == {"online": 0.15, "batch": 0.075}
    fc = forecast(1_000, 1_000_000, batch_size=100, limits=TIERS["1"])
    assert fc.online_cost_usd == pytest.approx(0.15, rel=1e-12)
    assert fc.batch_cost_usd == pytest.approx(0.075, rel=1e-12)
