"""Files API of the emulator (resumable upload, get, delete, download). STUB: being written."""

from __future__ import annotations

from fastapi import APIRouter

from emulator.config import EmulatorConfig
from emulator.stats import Stats

router = APIRouter()


class FileStore:
    """Uploaded and generated files; persisted under config.state_dir when set."""

    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats

    def reset(self) -> None:
        pass
