"""The README's first commands, as a newcomer runs them: `make index` (twice), `make query`, `make plan`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make(target: str, db: Path, *extra: str) -> str:
    # What a newcomer's shell has: no key, no Prefect API (each run starts its temporary server).
    env = {k: v for k, v in os.environ.items()
           if k not in ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "PREFECT_API_URL", "PREFECT_HOME")}
    run = subprocess.run(["make", "--no-print-directory", target, f"DB={db}", *extra], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def api_calls(output: str) -> int:
    (count,) = re.findall(r"API calls\s*\S\s*(\d+)", output)
    return int(count)


def test_make_index_twice_then_query_and_plan(tmp_path):
    db = tmp_path / "lancedb"
    first = make("index", db)
    assert "built-in Gemini API emulator" in first
    assert api_calls(first) > 0
    assert re.search(r"\b1\. .*argparse", first), "the example query finds the argparse docs first"
    again = make("index", db)
    assert api_calls(again) == 0, "an unchanged re-run makes zero API calls"

    hits = make("query", db, "Q=read and write json files", "K=2")
    assert re.search(r"2 hit\(s\)", hits) and "json" in hits.lower()
    plan = make("plan", db)
    assert re.search(r"chunks to embed\s*\S\s*0\b", plan), plan
