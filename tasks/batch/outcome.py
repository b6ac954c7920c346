"""What one Batch API run did: its counters, its cost, its failures and alerts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from indexflow.tasks.embed_options import EmbedStats
from indexflow.tasks.plan import PRICE_PER_MILLION_TOKENS, PlanCounts
from indexflow.tasks.problems import ProblemLog

if TYPE_CHECKING:
    from indexflow.tasks.batch.alerts import SuccessRateAlert


@dataclass
class BatchOutcome:
    """What the batch route did; mirrors OnlineOutcome where the fields apply."""

    plan: PlanCounts
    problems: ProblemLog
    embed: EmbedStats = field(default_factory=EmbedStats)  # the online part: item retries and fallbacks
    status: Literal["completed", "waiting", "error"] = "completed"
    committed_rows: int = 0
    deleted_rows: int = 0
    dead_lettered: int = 0
    failures: list[str] = field(default_factory=list)
    error: BaseException | None = None
    run_id: str = ""
    jobs_created: int = 0
    jobs_resumed: int = 0
    jobs_collected: int = 0
    jobs_failed: int = 0
    jobs_expired: int = 0
    jobs_cancelled: int = 0
    jobs_resubmitted: int = 0
    jobs_waiting: list[str] = field(default_factory=list)  # keys of jobs still alive at the end
    chunks_in_flight: int = 0  # planned chunks a live job from an earlier run already covers
    chunks_submitted: int = 0
    chunks_embedded_batch: int = 0
    item_failures: int = 0
    retried_online: int = 0
    online_fallback_chunks: int = 0
    cancelled_chunks: int = 0
    batch_tokens: int = 0
    online_tokens: int = 0
    alerts: list[SuccessRateAlert] = field(default_factory=list)  # at most one per job while polling, one at its end

    @property
    def batch_cost_usd(self) -> float:
        return self.batch_tokens * PRICE_PER_MILLION_TOKENS["batch"] / 1e6

    @property
    def online_equivalent_cost_usd(self) -> float:
        """What the batch-embedded tokens would have cost through the online API."""
        return self.batch_tokens * PRICE_PER_MILLION_TOKENS["online"] / 1e6

    @property
    def cost_usd(self) -> float:
        """The run's estimated spend: batch tokens at the batch price, online retries at the online price."""
        return self.batch_cost_usd + self.online_tokens * PRICE_PER_MILLION_TOKENS["online"] / 1e6

    def add_embed(self, stats: EmbedStats) -> None:
        """Count an online part's calls, retries and tokens in with the run's."""
        for name, value in stats.as_dict().items():
            if isinstance(value, (int, float)) and name not in ("max_reader_lead", "reader_lead_bound"):
                setattr(self.embed, name, getattr(self.embed, name) + value)
        self.online_tokens += stats.tokens_sent
