"""One small indexflow table, written by the real online route against the session's emulator.

Its documents use disjoint words, so the emulator's lexical vectors give each query below one
known best document.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from indexflow.emulator.server import RunningEmulator
from indexflow.integrations.query import QueryEmbedder
from indexflow.tasks.online import run_online
from indexflow.tasks.table import open_store
from indexflow.tasks.settings import Endpoint, Settings

DOCS = {
    "argparse": ("argparse — parser for command-line options",
                 "The argparse module parses command line arguments, options and sub-commands, "
                 "and writes help and usage messages when users give invalid arguments."),
    "json": ("json — JSON encoder and decoder",
             "Serialize Python objects to JSON strings and decode JSON documents into dicts and lists."),
    "sqlite3": ("sqlite3 — DB-API interface for SQLite databases",
                "Connect to a SQLite database file, execute SQL statements through a cursor, commit transactions."),
    "zipfile": ("zipfile — work with ZIP archives",
                "Create, read, write, append and list a ZIP archive; compress members with deflate."),
    "datetime": ("datetime — basic date and time types",
                 "Dates, times and time zones: arithmetic with timedelta, formatting with strftime."),
}
# query -> the document that must come first
QUERIES = {
    "how do I parse command line arguments": "argparse",
    "decode a JSON document into a dict": "json",
    "execute SQL statements against a SQLite database": "sqlite3",
}
TABLE = "kb"


@dataclass(frozen=True)
class Indexed:
    db_uri: str
    table: str
    source: str


@pytest.fixture(scope="session")
def indexed(emulator: RunningEmulator, tmp_path_factory) -> Indexed:
    """The table after a full indexing run: online route, then finalize (compaction, full-text index)."""
    root = tmp_path_factory.mktemp("interop")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "title": t, "text": x}) + "\n" for k, (t, x) in DOCS.items()))
    settings = Settings(corpus=corpus, db_uri=str(root / "db"), table=TABLE)
    endpoint = Endpoint(api_key=SecretStr(emulator.api_key), base_url=emulator.base_url)
    outcome = asyncio.run(run_online(settings, endpoint))
    assert outcome.error is None and outcome.committed_rows == len(DOCS)
    open_store(settings).finalize()
    return Indexed(settings.db_uri, TABLE, str(corpus))


@pytest.fixture
def embedder(emu: RunningEmulator, indexed: Indexed) -> QueryEmbedder:
    with QueryEmbedder.for_table(indexed.db_uri, indexed.table, api_key=emu.api_key, base_url=emu.base_url) as made:
        yield made


@pytest.fixture
def endpoint(emu: RunningEmulator) -> Endpoint:
    return Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)
