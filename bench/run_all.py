"""`make bench`: every benchmark in turn, each in its own process, figures printed as they come.

    bench_process      whole `indexflow` processes (first run, no-op, one edit, --help) beside a floor
    bench_kill         texts re-paid per SIGKILL of a whole `indexflow index`, spill off and on
    bench_emulator     the emulator's own throughput (to subtract from the others)
    bench_pipeline     (a) tier-1 limits: wall time vs the ceiling, share of 429s;
                       (b) unlimited: the embed stage vs a bare loop of SDK calls
    bench_end_to_end   read -> chunk -> embed -> LanceDB on SciFact x1 and x10: chunks/s, peak RSS
    bench_index        vector index types: build time, recall@10 vs exact, latency
    bench_scale        the index policy by size: build, p50/p95, recall@10 (random, clustered), two
                       incremental runs and queries while they write; BENCH_ROWS (default 100,000)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_process.py"],
    ["bench_kill.py"],
    ["bench_emulator.py"],
    ["bench_pipeline.py", "--part", "both"],
    ["bench_end_to_end.py"],
    ["bench_index.py", "--data", "scifact,clustered"],
    ["bench_scale.py"],  # --rows from BENCH_ROWS: `BENCH_ROWS=1000000 make bench` for the full size
]


def main() -> int:
    failed = 0
    for args in RUNS:
        print(f"\n=== {' '.join(args)} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent)
        print(f"--- {args[0]}: exit {code}, {time.monotonic() - started:.0f} s", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
