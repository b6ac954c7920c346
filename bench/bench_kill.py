"""Texts re-paid per SIGKILL: whole `indexflow index` processes killed at seeded moments, spill on and off.

    .venv/bin/python bench/bench_kill.py [--kills 10] [--seed 7] [--docs 1500] [--json PATH]

The first `--docs` SciFact abstracts, the emulator in its own process (150 ms + 10 ms per text, so
an attempt lasts seconds), the default batch size 100 and concurrency 8. Each attempt is killed
(SIGKILL, whole session) at a seeded moment after its first answer arrives: at once for a third
of them, else up to 3 s later, inside the first 5 s write group. Then one run completes. Printed:
texts the emulator embedded over every attempt minus the chunks, per kill, beside the bound the
spill promises (concurrency x batch size: the calls that were in flight), and whether the table
ends with every chunk once. Exit 1 only if a run failed or the table is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from measure import INDEXFLOW, RunFailed, child_env, start_emulator  # noqa: E402
from tests.datasets import scifact_corpus  # noqa: E402

BATCH, CONCURRENCY = 100, 8


def texts(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=5) as response:
        return int(json.loads(response.read()).get("texts", 0))


def one_series(workdir: Path, url: str, corpus: Path, *, spill: bool, kills: int, seed: int) -> dict:
    db = workdir / ("db-spill" if spill else "db-nospill")
    argv = [INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "t", "--tier", "unlimited", "--json"]
    argv += [] if spill else ["--no-spill"]
    env = child_env(workdir, url)
    rng = random.Random(seed)
    start, killed = texts(url), 0
    for _ in range(kills):
        before = texts(url)
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        while texts(url) == before:
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        if proc.poll() is not None:  # it finished before it could be killed
            break
        time.sleep(rng.choice([0.0, rng.uniform(0.1, 3.0), rng.uniform(0.1, 3.0)]))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed += 1
    done = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise RunFailed(f"the completing run exited {done.returncode}:\n{done.stderr[-2000:]}")
    import lancedb

    ids = lancedb.connect(str(db)).open_table("t").to_arrow().column("id").to_pylist()
    chunks = len(ids)
    paid = texts(url) - start
    return {"spill": spill, "kills": killed, "chunks": chunks, "unique": len(set(ids)) == chunks,
            "texts": paid, "re_paid": paid - chunks, "per_kill": (paid - chunks) / max(killed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus.jsonl"
        with open(scifact_corpus(), encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i == args.docs:
                    break
                dst.write(line)
        emulator, url = start_emulator(workdir, 150.0, 10.0)
        try:
            results = [one_series(workdir, url, corpus, spill=spill, kills=args.kills, seed=args.seed)
                       for spill in (False, True)]
        finally:
            emulator.terminate()
            emulator.wait(10)
    bound = BATCH * CONCURRENCY
    print(f"SciFact first {args.docs} docs, batch {BATCH}, concurrency {CONCURRENCY}, seed {args.seed}; "
          f"bound per kill (calls in flight) {bound} texts")
    print(f"{'spill':<6} {'kills':>5} {'chunks':>7} {'texts paid':>10} {'re-paid':>8} {'per kill':>9}  table")
    for r in results:
        print(f"{'on' if r['spill'] else 'off':<6} {r['kills']:>5} {r['chunks']:>7} {r['texts']:>10} "
              f"{r['re_paid']:>8} {r['per_kill']:>9.0f}  {'every chunk once' if r['unique'] else 'DUPLICATES'}")
    on = results[1]
    verdict = "PASS" if on["per_kill"] <= bound else "FAIL"
    print(f"{verdict}: re-paid per kill with the spill {on['per_kill']:.0f} <= {bound} (calls in flight)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["unique"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
