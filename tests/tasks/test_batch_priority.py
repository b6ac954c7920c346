"""Job priority end to end: `--priority` on the command line and `priority` in the options reach the
server as the batch resource's field, the ledger records it, `indexflow batches list` shows it, and on a
paused emulator running one job at a time the higher priority finishes first."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from pydantic import SecretStr

from indexflow.tasks.batch.ledger import Ledger
from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.route import run_batch
from indexflow.tasks.batch.watch import read_status
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.settings import Endpoint, Settings
from tests.tasks.test_batch_jobs import small_corpus

INDEXFLOW = [sys.executable, "-m", "indexflow.flows.cli"]


def cli(emu, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"GEMINI_API_KEY": emu.api_key, "GOOGLE_GEMINI_BASE_URL": emu.base_url}
    return subprocess.run([*INDEXFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def test_two_jobs_on_a_paused_emulator_finish_in_priority_order_and_the_ledger_shows_it(emu, tmp_path):
    emu.admin.set_batch_config({"paused": True, "max_running": 1, "pending_seconds": 0.05, "running_seconds": 1.0})
    db = str(tmp_path / "db")
    endpoint = Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)
    low = Settings(corpus=small_corpus(tmp_path / "low.jsonl", [0, 1, 2]), db_uri=db, table="low")
    # created first, at priority 1, through the Python route (options key)
    first = asyncio.run(run_batch(low, endpoint, options=BatchOptions(priority=1), wait_limit_seconds=0.1))
    assert first.status == "waiting" and first.jobs_created == 1
    # created second, at priority 9, through the command line
    made = cli(emu, "index", str(small_corpus(tmp_path / "high.jsonl", [3, 4])), "--db", db, "--table", "high",
               "--mode", "batch", "--priority", "9", "--wait-limit", "0.5", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["status"].startswith("waiting")

    listed = {}
    for table in ("low", "high"):
        out = cli(emu, "batches", "list", "--db", db, "--table", table, "--json")
        assert out.returncode == 0, out.stderr
        (row,) = json.loads(out.stdout)
        listed[table] = row
    assert (listed["low"]["priority"], listed["high"]["priority"]) == (1, 9)
    names = {table: row["job"] for table, row in listed.items()}

    async def finishing_order() -> list[str]:
        client = make_client(endpoint)
        statuses = {t: await read_status(client, n) for t, n in names.items()}
        assert {t: s.state for t, s in statuses.items()} == {"low": "PENDING", "high": "PENDING"}
        assert (statuses["low"].priority, statuses["high"].priority) == (1, 9), "reported back by the server"
        emu.admin.set_batch_config({"paused": False})
        order, deadline = [], time.monotonic() + 30
        while len(order) < 2:
            assert time.monotonic() < deadline, f"jobs not done: {order}"
            for table, name in names.items():
                if table not in order and (await read_status(client, name)).state == "SUCCEEDED":
                    order.append(table)
            await asyncio.sleep(0.02)
        return order

    assert asyncio.run(finishing_order()) == ["high", "low"], "9 runs before 1, though created after it"
    for table, corpus in (("low", low.corpus), ("high", tmp_path / "high.jsonl")):
        done = asyncio.run(run_batch(Settings(corpus=corpus, db_uri=db, table=table), endpoint))
        assert done.status == "completed" and done.jobs_collected == 1 and done.jobs_created == 0
    assert [r.priority for r in Ledger.open(db, "high").jobs()] == [9]
