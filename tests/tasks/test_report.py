"""The run summary's one-line note on what a completed run left out."""

from __future__ import annotations

from indexflow.tasks.report import RunSummary


def test_problem_note_says_what_and_how_many_and_where_to_look():
    summary = RunSummary(table="kb", mode="online", endpoint="emulator")
    assert summary.problem_note() is None
    summary.docs_failed, summary.dead_lettered = 3, 2
    assert summary.problem_note() == ("skipped 3 unreadable or invalid corpus item(s); dead-lettered 2 chunk(s) "
                                      "into kb__dead_letters; what and why: artifact indexflow-failures-kb")
