"""Success-rate alerts (placeholder until the Prefect event lands)."""

from __future__ import annotations

from dataclasses import dataclass

EVENT = "indexflow.batch.success-rate-low"


def success_rate(succeeded: int, failed: int) -> float | None:
    settled = succeeded + failed
    return succeeded / settled if settled else None


@dataclass(frozen=True)
class SuccessRateAlert:
    table: str
    job_key: str
    job_name: str
    rate: float
    succeeded: int
    failed: int
    threshold: float
    final: bool

    @property
    def message(self) -> str:
        return (f"batch job {self.job_name} ({self.job_key}) of table {self.table!r}: success rate "
                f"{self.rate:.1%} ({self.succeeded} ok, {self.failed} failed) is below {self.threshold:.0%}")


def check(*, table, job_key, job_name, succeeded, failed, threshold=0.95, final) -> SuccessRateAlert | None:
    rate = success_rate(succeeded, failed)
    if rate is None or rate >= threshold:
        return None
    return SuccessRateAlert(table, job_key, job_name, rate, succeeded, failed, threshold, final)


def emit(alert: SuccessRateAlert) -> bool:
    return False
