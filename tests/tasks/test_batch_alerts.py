"""Batch success-rate alerts without Prefect: the rate, when `check` alerts, and what the alert says.

Sending them (`emit`) on a real Prefect server is tests/flows/test_batch_alerts.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from indexflow.tasks import redact as redaction
from indexflow.tasks.batch.alerts import EVENT, SuccessRateAlert, check, emit, success_rate
from indexflow.tasks.redact import MASK, remember

JOB = {"table": "corpus", "job_key": "indexflow:corpus:run-1:part-1", "job_name": "batches/abc123"}
KEY = "gw-7Hq2Lp9Xv4Tz8Rk3Mn6Bd1"  # not Google-shaped: only redaction by value hides it


@pytest.fixture(autouse=True)
def no_keys():
    redaction.forget_all()
    yield
    redaction.forget_all()


def test_the_rate_is_succeeded_over_settled_and_none_when_nothing_settled():
    assert success_rate(90, 10) == 0.9
    assert success_rate(0, 7) == 0.0
    assert success_rate(7, 0) == 1.0
    assert success_rate(0, 0) is None
    assert success_rate(-1, 1) is None and success_rate(1, -1) is None  # not counts: nothing to say


def test_nothing_settled_means_no_alert():
    assert check(**JOB, succeeded=0, failed=0, final=False) is None
    assert check(**JOB, succeeded=0, failed=0, final=True) is None


def test_exactly_at_the_threshold_is_no_alert_just_below_is_one():
    assert check(**JOB, succeeded=95, failed=5, final=True) is None  # 95 % vs the default 0.95
    assert check(**JOB, succeeded=19, failed=1, final=True) is None
    assert check(**JOB, succeeded=99, failed=1, final=True) is None
    below = check(**JOB, succeeded=9499, failed=501, final=True)
    assert below is not None and below.rate == 0.9499


def test_an_alert_carries_the_job_the_counts_and_the_threshold():
    alert = check(**JOB, succeeded=90, failed=10, threshold=0.97, final=False)
    assert alert == SuccessRateAlert(table="corpus", job_key="indexflow:corpus:run-1:part-1",
                                     job_name="batches/abc123", rate=0.9, succeeded=90, failed=10,
                                     threshold=0.97, final=False)
    assert check(**JOB, succeeded=96, failed=4, threshold=0.97, final=False) is not None
    assert check(**JOB, succeeded=96, failed=4, threshold=0.9, final=False) is None


def test_the_message_says_what_happened_in_one_line():
    message = check(**JOB, succeeded=90, failed=10, final=True).message
    assert message.startswith("batch job batches/abc123 (indexflow:corpus:run-1:part-1) of table corpus: "
                              "success rate 90.0% (90 ok, 10 failed) is below 95%; ")
    assert "\n" not in message


def test_the_message_says_what_to_do_next_at_completion_and_while_polling():
    final = check(**JOB, succeeded=90, failed=10, final=True).message
    polling = check(**JOB, succeeded=90, failed=10, final=False).message
    assert "dead letters" in final and "`indexflow batches status batches/abc123 --table corpus`" in final
    assert "still running" in polling and "`indexflow batches cancel batches/abc123 --table corpus`" in polling


def test_a_rate_just_below_the_threshold_never_prints_as_the_threshold():
    assert "success rate 94.99% (9499 ok, 501 failed) is below 95%" in check(
        **JOB, succeeded=9499, failed=501, final=True).message
    assert "success rate 99.4% (994 ok, 6 failed) is below 99.5%" in check(
        **JOB, succeeded=994, failed=6, threshold=0.995, final=True).message


def test_the_event_names_the_job_as_its_resource_and_carries_every_field():
    alert = check(**JOB, succeeded=90, failed=10, final=True)
    assert EVENT == "indexflow.batch.success-rate-low"
    assert alert.resource == {"prefect.resource.id": "indexflow.batch-job.batches/abc123",
                              "prefect.resource.name": "indexflow:corpus:run-1:part-1",
                              "indexflow.table": "corpus"}
    assert alert.payload == {"table": "corpus", "job_name": "batches/abc123",
                             "job_key": "indexflow:corpus:run-1:part-1", "rate": 0.9, "succeeded": 90,
                             "failed": 10, "threshold": 0.95, "final": True, "message": alert.message}


def test_every_text_of_the_event_is_redacted():
    remember(KEY)
    alert = check(table=f"t-{KEY}", job_key=f"indexflow:{KEY}:r:part-1", job_name=f"batches/{KEY}",
                  succeeded=1, failed=1, final=False)
    texts = [*alert.resource.values(), *(v for v in alert.payload.values() if isinstance(v, str))]
    assert all(KEY not in text for text in texts) and all(MASK in text for text in texts)


def test_no_alert_is_nothing_to_emit():
    assert emit(None) is False


def test_without_a_prefect_api_emit_neither_imports_prefect_nor_starts_anything(tmp_path):
    # A batch run without Prefect (the CLI's local run) must not pay for an alert it cannot send.
    probe = ("import os, sys\n"
             "from indexflow.tasks.batch.alerts import check, emit\n"
             "sent = emit(check(table='t', job_key='k', job_name='batches/x', succeeded=1, failed=9, final=True))\n"
             "try:\n    os.waitpid(-1, os.WNOHANG); children = 'children'\n"
             "except ChildProcessError:\n    children = 'no children'\n"
             "print(sent, 'prefect' in sys.modules, children)\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False False no children", run.stderr
    assert not (tmp_path / "prefect-home").exists()  # no temporary server, no Prefect database
