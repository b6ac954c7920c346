"""The process dies mid-run (SIGKILL): the re-run completes the table with no duplicate and no
missing chunk, and pays again for at most the group that was in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
from pydantic import SecretStr

from indexflow.tasks.online import run_online
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.spill import leftovers, read_spill, spill_dir

REPO = Path(__file__).resolve().parents[2]
N, GROUP, BATCH = 120, 10, 5

CHILD = """
import asyncio, sys
from pathlib import Path
from pydantic import SecretStr
from indexflow.tasks.online import run_online
from indexflow.tasks.settings import Endpoint, Settings
corpus, db, url, key = sys.argv[1:5]
s = Settings(corpus=Path(corpus), db_uri=db, table="t", batch_size={batch}, concurrency=1,
             write_group_rows={group}, write_group_seconds=60)
asyncio.run(run_online(s, Endpoint(api_key=SecretStr(key), base_url=url)))
"""


def committed(db: Path) -> int:
    try:
        return lancedb.connect(str(db)).open_table("t").count_rows()
    except (ValueError, FileNotFoundError):
        return 0


def test_a_killed_run_is_completed_by_the_next_without_duplicates(emu, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i:03d}", "title": "T", "text": f"alpha beta {i} gamma"}) + "\n"
                              for i in range(N)))
    db = tmp_path / "db"
    emu.admin.set_config(latency_base_ms=30)  # slow enough to be killed half-way
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(batch=BATCH, group=GROUP), str(corpus), str(db), emu.base_url, emu.api_key],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        deadline = time.monotonic() + 60
        while committed(db) < 3 * GROUP:  # some groups are in the table
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no group was committed in 60 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    # The dead child's last call may still be inside the emulator; its texts count when it leaves.
    deadline = time.monotonic() + 10
    while emu.emulator.concurrency.in_flight:
        assert time.monotonic() < deadline, "a call stayed in flight for 10 s"
        time.sleep(0.01)
    first_texts = emu.admin.stats()["texts"]
    survived = committed(db)
    spilled = {row for path in leftovers(spill_dir(str(db), "t"))
               for batch in read_spill(path)[1] for row in batch.column("id").to_pylist()}
    assert GROUP * 3 <= survived < N
    in_table = set(lancedb.connect(str(db)).open_table("t").to_arrow().column("id").to_pylist())
    kept = len(in_table | spilled)  # committed, or on disk for the next run to commit
    # at most the call in flight (concurrency 1) was paid for and lost: not the group being filled
    assert first_texts - kept <= BATCH, (first_texts, survived, len(spilled))

    emu.admin.reset()
    s = Settings(corpus=corpus, db_uri=str(db), table="t", batch_size=BATCH)
    out = asyncio.run(run_online(s, Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)))
    assert out.error is None
    assert emu.admin.stats().get("texts", 0) == N - kept, "only what was neither committed nor spilled is embedded again"
    assert leftovers(spill_dir(str(db), "t")) == []
    ids = lancedb.connect(str(db)).open_table("t").to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N
