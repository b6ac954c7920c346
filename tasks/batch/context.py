"""The parts of one batch run that its steps share: settings, table, ledger, client, writer, outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from indexflow.tasks.batch.ledger import Ledger
from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.outcome import BatchOutcome
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.settings import Settings

if TYPE_CHECKING:
    from indexflow.tasks.store import VectorStore
    from indexflow.tasks.writer import GroupWriter


@dataclass
class BatchContext:
    """What every step of a batch run reads and writes; one per run."""

    settings: Settings
    opts: BatchOptions
    store: VectorStore
    ledger: Ledger
    client: Any  # a google-genai client, used only through tasks.gemini
    writer: GroupWriter
    out: BatchOutcome
    sleep: Callable[[float], Awaitable[None]]

    @property
    def recipe(self) -> Recipe:
        return self.settings.recipe

    @property
    def deadline(self) -> float | None:
        """Seconds one Batch API call may take (create, read, list, cancel)."""
        return self.settings.call_deadline_seconds
