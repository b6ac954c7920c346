"""Batch API jobs of the emulator. STUB: being written."""

from __future__ import annotations

from fastapi import APIRouter

from emulator.config import EmulatorConfig
from emulator.files import FileStore
from emulator.stats import Stats

router = APIRouter()


class BatchStore:
    """Batch jobs and their lifecycle; persisted under config.state_dir when set."""

    def __init__(self, config: EmulatorConfig, stats: Stats, files: FileStore) -> None:
        self.config = config
        self.stats = stats
        self.files = files

    def reset(self) -> None:
        pass

    async def create(self, version: str, model: str, body: dict) -> dict:
        """Handle `POST /{version}/models/{model}:asyncBatchEmbedContent`; returns the operation JSON."""
        raise NotImplementedError
