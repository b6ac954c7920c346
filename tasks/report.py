"""What a run tells people: the summary table, the progress artifact, the failure note, the terminal."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from indexflow.tasks.plan import PRICE_PER_MILLION_TOKENS, PlanCounts
from indexflow.tasks.redact import redact
from indexflow.tasks.settings import describe_quota


def artifact_key(kind: str, table: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", table.lower()).strip("-") or "table"
    return f"indexflow-{kind}-{slug}"[:120]


@dataclass
class RunSummary:
    """The facts of one run, in the order a person reads them."""

    table: str
    mode: str
    endpoint: str
    route: str = "online"
    status: str = "completed"
    plan: PlanCounts = field(default_factory=PlanCounts)
    limits: dict[str, Any] = field(default_factory=dict)  # Settings.quota.as_dict(): values and their sources
    docs_failed: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    dead_lettered: int = 0
    api_calls: int = 0
    tokens: int = 0  # sent through the online API
    batch_tokens: int = 0  # embedded by Batch API jobs, at half price
    jobs_created: int = 0
    jobs_resumed: int = 0
    jobs_waiting: int = 0
    jobs_failed: int = 0  # FAILED or EXPIRED, then resubmitted or sent online as configured
    jobs_cancelled: int = 0
    batch_item_failures: int = 0
    retried_online: int = 0
    rate_limited: int = 0
    retries: int = 0
    wall_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # batch jobs whose success rate fell below the threshold
    message: str | None = None

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def cost_usd(self) -> float:
        """Estimated spend: online tokens at the online price, batch tokens at the batch price."""
        return (self.tokens * PRICE_PER_MILLION_TOKENS["online"]
                + self.batch_tokens * PRICE_PER_MILLION_TOKENS["batch"]) / 1e6

    @property
    def online_equivalent_usd(self) -> float:
        """What the same tokens would have cost through the online API."""
        return (self.tokens + self.batch_tokens) * PRICE_PER_MILLION_TOKENS["online"] / 1e6

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        """Rebuild from `as_dict()` (what the flow returns); derived figures are recomputed."""
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "plan"}
        plan = {k: v for k, v in d.get("plan", {}).items() if k in PlanCounts.__dataclass_fields__}
        return cls(**fields, plan=PlanCounts(**plan))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = self.plan.as_dict()
        d["chunks_per_second"] = round(self.chunks_per_second, 2)
        d["cost_usd"] = round(self.cost_usd, 6)
        d["online_equivalent_usd"] = round(self.online_equivalent_usd, 6)
        return d

    def rows(self) -> list[dict[str, Any]]:
        """The summary as (metric, value) rows for a table artifact and the terminal."""
        p = self.plan
        pairs = [
            ("status", self.status),
            ("endpoint", self.endpoint),
            ("mode", self.mode),
            ("route", self.route),
            *([("limits", describe_quota(self.limits))] if self.limits else []),
            ("documents seen", p.docs_seen),
            ("documents new", p.docs_new),
            ("documents changed", p.docs_changed),
            ("documents unchanged", p.docs_unchanged),
            ("documents deleted", p.docs_deleted),
            ("documents failed", self.docs_failed),
            ("chunks embedded", self.chunks_embedded),
            ("chunks unchanged", p.chunks_unchanged),
            ("chunks deleted", self.chunks_deleted),
            ("dead-lettered", self.dead_lettered),
            ("API calls", self.api_calls),
            ("tokens", self.tokens + self.batch_tokens),
            ("429 responses", self.rate_limited),
            ("retries", self.retries),
            ("wall time (s)", round(self.wall_seconds, 2)),
            ("chunks/s", round(self.chunks_per_second, 1)),
            ("estimated cost (USD)", f"{self.cost_usd:.6f}"),
        ]
        if self.route == "batch":
            pairs += [
                ("batch tokens", self.batch_tokens),
                ("cost at online price (USD)", f"{self.online_equivalent_usd:.6f}"),
                ("batch jobs created", self.jobs_created),
                ("batch jobs resumed", self.jobs_resumed),
                ("batch jobs still running", self.jobs_waiting),
                ("batch jobs failed or expired", self.jobs_failed),
                ("batch jobs cancelled", self.jobs_cancelled),
                ("batch items failed", self.batch_item_failures),
                ("batch items retried online", self.retried_online),
                ("batch success-rate alerts", len(self.alerts)),
            ]
        return [{"metric": k, "value": v} for k, v in pairs]

    def problem_note(self) -> str | None:
        """One line on what a completed run left out (skipped input, dead-lettered chunks); None if nothing."""
        parts = []
        if self.docs_failed:
            parts.append(f"skipped {self.docs_failed} unreadable or invalid corpus item(s)")
        if self.dead_lettered:
            parts.append(f"dead-lettered {self.dead_lettered} chunk(s) into {self.table}__dead_letters")
        if not parts:
            return None
        return f"{'; '.join(parts)}; what and why: artifact {artifact_key('failures', self.table)}"

    def failure_markdown(self) -> str | None:
        """A short note for people: what failed, how many, what to do; None when nothing failed."""
        if not (self.docs_failed or self.dead_lettered or self.alerts or self.status.startswith("stopped")):
            return None
        lines = [f"# indexflow: {self.table} — {self.status}", ""]
        if self.message:
            lines += [self.message, ""]
        if self.docs_failed:
            lines += [f"**{self.docs_failed} corpus item(s) could not be read** and were skipped "
                      "(anything they had in the index is kept). Fix the files below and re-run.", ""]
            lines += [f"- `{s}`" for s in self.problems[:20]] + [""]
        if self.dead_lettered:
            lines += [f"**{self.dead_lettered} chunk(s) failed to embed** and are in the dead-letter table "
                      f"`{self.table}__dead_letters`. Re-run with `indexflow index --retry-failed` "
                      "once the cause is fixed.", ""]
            lines += [f"- {s}" for s in self.failures[:20]] + [""]
        if self.alerts:
            lines += [f"**{len(self.alerts)} batch success-rate alert(s)** (Prefect event "
                      "`indexflow.batch.success-rate-low`): the failed items were retried online or "
                      "dead-lettered; look at the job's errors with `indexflow batches status JOB`.", ""]
            lines += [f"- {a}" for a in self.alerts[:20]] + [""]
        return "\n".join(lines)


async def publish_summary(summary: RunSummary) -> None:
    """Table artifact keyed per table (so the UI keeps its history) and a failure note if needed."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    await acreate_table_artifact(
        table=[{k: redact(v) if isinstance(v, str) else v for k, v in row.items()} for row in summary.rows()],
        key=artifact_key("summary", summary.table),
        description=f"indexflow run summary for table {summary.table}",
    )
    note = summary.failure_markdown()
    if note:
        await acreate_markdown_artifact(
            markdown=redact(note), key=artifact_key("failures", summary.table),
            description=f"What failed in the last indexflow run on {summary.table}",
        )


class Progress:
    """Progress sink for the embed stage: a throttled Prefect progress artifact and a terminal bar.

    Called synchronously from the event loop; artifact updates are scheduled, at most one every
    `every` seconds, because each costs tens of milliseconds on the server.
    """

    def __init__(self, table: str, *, prefect: bool, terminal: bool | None = None,
                 every: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.key = artifact_key("progress", table)
        self.prefect = prefect
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.every = every
        self.clock = clock
        self._artifact_id = None
        self._last = float("-inf")
        self._pending: asyncio.Task | None = None
        self._bar = None
        self.total: int | None = None

    def plan(self, total: int, fc: Any = None) -> None:
        """The total, when it is counted after embedding started (a first run)."""
        self.total = total

    def __call__(self, done: int, total: int | None) -> None:
        total = total or self.total
        pct = 100.0 * done / total if total else 0.0
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=done, total=total)
        now = self.clock()
        if self.prefect and (now - self._last >= self.every or (total and done >= total)):
            if self._pending is None or self._pending.done():
                self._last = now
                self._pending = asyncio.get_running_loop().create_task(self._push(pct))

    async def _push(self, pct: float) -> None:
        from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

        try:
            if self._artifact_id is None:
                self._artifact_id = await acreate_progress_artifact(
                    progress=pct, key=self.key, description="chunks embedded, % of planned")
            else:
                await aupdate_progress_artifact(artifact_id=self._artifact_id, progress=pct)
        except Exception:  # progress is best effort; it must never fail a run
            pass

    def __enter__(self) -> "Progress":
        if self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TimeRemainingColumn

            bar = Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=False)
            bar.start()
            self._bar = (bar, bar.add_task("embedding", total=None))
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None

    async def aclose(self, done: int, total: int | None) -> None:
        """Push the final figure, waiting for any update in flight."""
        total = total or self.total
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        if self.prefect:
            await self._push(100.0 * done / total if total else 100.0)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class TerminalProgress:
    """Progress for a person: a bar on a terminal, else one line every `every` seconds.

    The ETA takes the larger of the plan's forecast (what the quota allows) and the live rate,
    so a throttled run's first fast minute does not promise too much. While the rate limiter
    holds calls, the line says which limit and for how long.
    """

    def __init__(self, total: int | None, fc: Any = None, *, stream=None, terminal: bool | None = None,
                 every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.forecast_seconds = getattr(fc, "online_seconds", None)
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.every = every
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.limiter = None
        self._bar = None
        self._ticker: asyncio.Task | None = None

    def plan(self, total: int, fc: Any = None) -> None:
        """The total and forecast, when counted after embedding started (a first run)."""
        self.total = total
        self.forecast_seconds = getattr(fc, "online_seconds", None)
        if self._bar is not None:
            self._bar[0].update(self._bar[1], total=total or None)

    def watch(self, limiter: Any) -> None:
        """Show the limiter's hold (`limiter.holding`: which limit, until when) while there is one."""
        self.limiter = limiter

    def __call__(self, done: int, total: int | None) -> None:
        self.done = done
        if total:
            self.total = total
        if self._bar is not None:
            bar, task = self._bar
            bar.update(task, completed=done, total=self.total or None)

    def eta(self) -> float | None:
        """Seconds left: max(forecast left, remaining / live rate); None before either is known."""
        if self.total is None:
            return None
        remaining = max(0, self.total - self.done)
        if not remaining:
            return 0.0
        elapsed = self.clock() - self.started
        guesses = []
        if self.forecast_seconds is not None:
            guesses.append(self.forecast_seconds - elapsed)
        if self.done and elapsed > 0:
            guesses.append(remaining / (self.done / elapsed))
        return max(0.0, max(guesses)) if guesses else None

    def waiting(self) -> str | None:
        """`waiting for quota: tokens/min, next slot in 41 s` while the limiter holds calls, else None."""
        holding = getattr(self.limiter, "holding", None)
        if not holding:
            return None
        reason, until = holding
        left = until - self.clock()
        if left == float("inf"):
            return f"waiting for quota: {reason}, until a call in flight finishes"
        if left < 1.0:
            return None
        return f"waiting for quota: {reason}, next slot in {_duration(left)}"

    def status(self) -> str:
        eta = self.eta()
        parts = [f"ETA {_duration(eta)}" if eta is not None else "ETA unknown"]
        if (wait := self.waiting()) is not None:
            parts.append(wait)
        return "; ".join(parts)

    def line(self) -> str:
        """The progress as one line, for logs."""
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:  # still being counted
            return f"embedded {self.done:,} chunks, {rate:,.0f}/s; {self.status()}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"embedded {self.done:,} of {self.total:,} chunks ({pct:.0f} %), {rate:,.0f}/s; "
                f"{self.status()}")

    def print(self, message: str) -> bool:
        """Print `message` above the bar when one is showing (False: the caller prints it)."""
        if self._bar is None:
            return False
        self._bar[0].console.print(message, markup=False, highlight=False)
        return True

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "TerminalProgress":
        self.started = self.clock()
        if self.total == 0:  # planned: nothing to embed
            return self
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, ProgressColumn, TextColumn
            from rich.text import Text

            progress = self

            class Status(ProgressColumn):  # rendered on every refresh: a held limiter shows while nothing moves
                def render(self, task) -> Text:
                    return Text(progress.status())

            bar = Bar(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), Status(),
                      console=Console(file=self.stream), transient=False)
            bar.start()
            self._bar = (bar, bar.add_task("embedding", total=self.total or None))
        else:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None

    async def aclose(self, done: int, total: int | None) -> None:
        """The final figure (the bar shows it; a log gets one last line if anything was planned)."""
        self(done, total)
        if self._bar is None and self._ticker is not None:
            print(self.line(), file=self.stream, flush=True)
