"""Success-rate alerts from a real batch run on the emulator: one job at 10 % failed items alerts
(while polling and at the end), one at 99 % does not. The Prefect event itself: tests/flows/test_batch_alerts.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.settings import Endpoint, Settings
from tests.tasks.test_batch_jobs import small_corpus

OPTS = BatchOptions(poll_seconds=0.05, item_errors="dead_letter", poll_jitter=0.0)


def run(emu, tmp_path, rate: float, seen: list, opts: BatchOptions = OPTS):
    emu.admin.set_batch_config({"item_failure_rate": rate, "running_seconds": 1.0})
    # 1,000 items: a 10 % draw lands within 5-15 % with all but certainty (mean 100, sd 9.5)
    corpus = small_corpus(tmp_path / "c.jsonl", list(range(1000)))
    settings = Settings(corpus=corpus, db_uri=str(tmp_path / "db"), table="alerts")
    endpoint = Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)
    return asyncio.run(run_batch(settings, endpoint, options=opts, on_job_status=seen.append, wait_limit_seconds=60))


def test_a_job_with_10_percent_failed_items_alerts_while_polling_and_at_the_end(emu, tmp_path, caplog):
    seen = []
    with caplog.at_level(logging.WARNING, logger="indexflow.batch"):
        out = run(emu, tmp_path, 0.10, seen)
    final = seen[-1]
    assert out.status == "completed" and final.state == "SUCCEEDED" and final.requests == 1000
    assert final.success_rate < 0.95, "the emulator's draw fails about 100 of 1,000 items"
    polling, at_end = out.alerts
    assert (polling.final, at_end.final) == (False, True)
    assert (at_end.job_name, at_end.succeeded, at_end.failed) == (final.name, final.succeeded, final.failed)
    assert at_end.rate == pytest.approx(final.success_rate) and at_end.threshold == 0.95
    # while polling it fired as soon as the failures were more than 5 % of the job, before the end
    assert polling.failed > 50 and polling.succeeded + polling.failed < 1000
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(final.name in w and "success rate" in w for w in warnings) == 2
    assert out.dead_lettered == final.failed and out.committed_rows == final.succeeded


def test_a_job_at_99_percent_raises_no_alert(emu, tmp_path):
    seen = []
    out = run(emu, tmp_path, 0.01, seen)
    assert out.status == "completed" and seen[-1].state == "SUCCEEDED" and seen[-1].success_rate >= 0.95
    assert out.alerts == []


def test_the_threshold_is_the_users(emu, tmp_path):
    """At threshold 0.5 the same 10 % job is fine: nothing is raised."""
    seen = []
    out = run(emu, tmp_path, 0.10, seen, BatchOptions(poll_seconds=0.05, item_errors="dead_letter", poll_jitter=0.0,
                                                        success_rate_threshold=0.5))
    assert seen[-1].state == "SUCCEEDED" and 0.5 <= seen[-1].success_rate < 0.95
    assert out.alerts == []
