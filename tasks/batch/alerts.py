"""Success-rate alerts for Batch API jobs: `check` decides, `emit` tells Prefect as an event.

An Automation turns the event into a notification (automations/batch-success-rate-low.yaml).
Imports nothing from the batch route, which calls it; Prefect is imported only by `emit`, and only
when a Prefect API is configured.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

from indexflow.tasks.prefect_api import prefect_api_configured
from indexflow.tasks.redact import redact

EVENT = "indexflow.batch.success-rate-low"
RESOURCE_PREFIX = "indexflow.batch-job."  # + the job name: `indexflow.batch-job.batches/ID`
DEFAULT_THRESHOLD = 0.95
FLUSH_SECONDS = 10.0  # longest `emit` waits for the event to leave the process

logger = logging.getLogger(__name__)


def success_rate(succeeded: int, failed: int) -> float | None:
    """Succeeded over settled items; None when nothing settled (or a count is negative)."""
    if succeeded < 0 or failed < 0 or succeeded + failed == 0:
        return None
    return succeeded / (succeeded + failed)


@dataclass(frozen=True)
class SuccessRateAlert:
    """A batch job whose success rate is below its threshold, at completion (`final`) or while polling."""

    table: str
    job_key: str  # our display name, `indexflow:<table>:<run>:part-<n>`
    job_name: str  # the API's `batches/ID`
    rate: float
    succeeded: int
    failed: int
    threshold: float
    final: bool

    @property
    def message(self) -> str:
        """One line that says what happened and what to do next."""
        job = f"{self.job_name} --table {self.table}"
        if self.final:
            advice = ("the run retries its failed items online or dead-letters them: find their common cause "
                      f"(bad input, quota) in the run's summary and dead letters, or `indexflow batches status {job}`")
        else:
            advice = (f"it is still running: watch it with `indexflow batches status {job}`, "
                      f"stop it with `indexflow batches cancel {job}` if failures keep coming")
        return redact(
            f"batch job {self.job_name} ({self.job_key}) of table {self.table}: success rate "
            f"{_percent(self.rate, self.threshold)} ({self.succeeded} ok, {self.failed} failed) is below "
            f"{self.threshold * 100:g}%; {advice}")

    @property
    def resource(self) -> dict[str, str]:
        """The event's resource: the job, named by our display name, labelled with its table."""
        return {
            "prefect.resource.id": RESOURCE_PREFIX + redact(self.job_name),
            "prefect.resource.name": redact(self.job_key),
            "indexflow.table": redact(self.table),
        }

    @property
    def payload(self) -> dict[str, Any]:
        """The event's payload: every field, and the message, for an Automation's templates."""
        return {
            "table": redact(self.table), "job_name": redact(self.job_name), "job_key": redact(self.job_key),
            "rate": self.rate, "succeeded": self.succeeded, "failed": self.failed,
            "threshold": self.threshold, "final": self.final, "message": self.message,
        }


def _percent(rate: float, threshold: float) -> str:
    # 94.99 % must not print as "95.0 %" next to "below 95 %": add digits until they differ.
    for digits in range(1, 5):
        if round(rate * 100, digits) != round(threshold * 100, digits):
            break
    return f"{rate * 100:.{digits}f}%"


def check(*, table: str, job_key: str, job_name: str, succeeded: int, failed: int,
          threshold: float = DEFAULT_THRESHOLD, final: bool) -> SuccessRateAlert | None:
    """An alert when the job's success rate is below `threshold` (a fraction); None when not, or nothing settled."""
    rate = success_rate(succeeded, failed)
    if rate is None or rate >= threshold:
        return None
    return SuccessRateAlert(table=table, job_key=job_key, job_name=job_name, rate=rate, succeeded=succeeded,
                            failed=failed, threshold=threshold, final=final)


def emit(alert: SuccessRateAlert | None, *, timeout: float = FLUSH_SECONDS) -> bool:
    """Send `alert` as the Prefect event EVENT, waiting up to `timeout` s until Prefect's events client sent it.

    False when there is no alert, no Prefect API (nothing is started), or it was not sent (logged). Never raises.
    """
    if alert is None:
        return False
    job = redact(alert.job_name)
    try:
        if not _prefect_api_configured():
            logger.debug("no Prefect API configured: batch success-rate alert for %s not sent", job)
            return False
        from prefect.events import emit_event

        if emit_event(EVENT, resource=alert.resource, payload=alert.payload) is None:
            logger.warning("batch success-rate alert for %s not sent: Prefect's events client is off", job)
            return False
        if not _flush(timeout):
            logger.warning("batch success-rate alert for %s not sent within %gs (is the Prefect API up?); "
                           "it may still go before this process exits", job, timeout)
            return False
        return True
    except Exception as exc:  # an alert must never break the run it reports on
        logger.warning("batch success-rate alert for %s not sent: %s", job, redact(repr(exc)))
        return False


async def aemit(alert: SuccessRateAlert | None, *, timeout: float = FLUSH_SECONDS) -> bool:
    """`emit` in a thread, so an async caller's event loop keeps running while the event is sent."""
    return await asyncio.to_thread(emit, alert, timeout=timeout)  # copies the context: a run's stays related


def _prefect_api_configured() -> bool:
    # Without an API URL, prefect.events.emit_event has its events worker start a temporary server
    # (a subprocess, 15 s here) just to take this event. Inside a flow or task run the run already
    # has its API (its temporary server too), so the event goes there, related to the run.
    if "prefect" not in sys.modules:  # then no run is going on here: don't import Prefect to find out
        return prefect_api_configured()
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url) or FlowRunContext.get() is not None \
        or TaskRunContext.get() is not None


def _flush(timeout: float) -> bool:
    """Wait until Prefect's events worker has sent every queued event; False after `timeout` s."""
    from prefect.events.worker import EventsWorker

    # The worker sends in the background and drains only at a normal interpreter exit, which
    # os._exit (an interrupted CLI run) skips. Its wait has no timeout, and never returns when the
    # worker could not connect, so it runs in a daemon thread joined with one.
    done = threading.Event()
    worker = EventsWorker.instance()

    def wait() -> None:
        worker.wait_until_empty()
        done.set()

    threading.Thread(target=wait, name="indexflow-alert-flush", daemon=True).start()
    return done.wait(timeout)
