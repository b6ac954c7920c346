"""Peak RSS of the in-process `indexflow index` pipeline, phase by phase, on SciFact x1 and xN.

    .venv/bin/python bench/bench_memory.py [--scales 1,10] [--url http://127.0.0.1:PORT --api-key KEY]
                                           [--workdir /tmp/mem] [--env NAME=VALUE ...] [--json]

Runs the pipeline the way the Prefect-free CLI does (plan_run, run_online, finalize), each
scenario in a fresh Python process, against an emulator in a SEPARATE process (started here
unless --url is given), so the emulator's memory is never counted. Scenarios per scale, on one
database: `first` (empty table), `noop` (nothing changed), `edit` (one document's text changed).

The child tunes its allocators first, as the CLI does (tasks.memory.tune_process_memory; off
with --env INDEXFLOW_TUNE_MEMORY=0). Its phases follow the planned path (plan, then embed: what
`indexflow index --mode auto` does); a CLI first run plans concurrently with embedding instead,
which measured the same peak (SciFact x1 346 vs 346 MB, x10 401-409 vs 405 MB). For whole CLI
processes use bench/bench_process.py.

Each phase's peak is read from VmHWM after resetting it (`echo 5 > /proc/self/clear_refs`), so
phases do not hide one another: imports, plan (plan_run), embed (run_online: planner, embedding,
merge_insert), finalize (optimize + indexes). `peak` is the process's peak over all phases
(what /usr/bin/time -v reports as "Maximum resident set size"). Also prints the RSS that
`import prefect` alone costs, for comparison. `--env` sets variables in the child before any import
(e.g. --env MALLOC_ARENA_MAX=2); `--set` a Settings field (e.g. --set write_group_rows=1000). Corpora are written under --workdir, never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status(field: str) -> int:
    """A /proc/self/status figure in MB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return -1


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Phases:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.peak = _status("VmHWM")
        _reset_peak()

    def mark(self, name: str) -> None:
        import pyarrow as pa

        hwm = _status("VmHWM")
        self.peak = max(self.peak, hwm)
        self.rows.append({"phase": name, "peak_mb": hwm, "rss_mb": _status("VmRSS"),
                          "arrow_mb": pa.total_allocated_bytes() // 2**20})
        _reset_peak()


def child(corpus: str, db: str, url: str, key: str) -> None:
    """One run of the pipeline in this process; prints its phases as JSON on the last line."""
    base = _status("VmRSS")
    phases = Phases()
    # What `indexflow index` does first (flows/cli.py); tasks.lance_tables.connect no longer does it.
    from indexflow.tasks.memory import tune_process_memory

    tune_process_memory()  # a no-op under INDEXFLOW_TUNE_MEMORY=0
    import asyncio

    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import lancedb  # noqa: F401
    import google.genai  # noqa: F401
    import pydantic
    from indexflow.tasks.online import run_online
    from indexflow.tasks.plan import plan_run
    from indexflow.tasks.table import open_store
    from indexflow.tasks.settings import Endpoint, Settings

    phases.mark("imports")
    extra = json.loads(os.environ.get("BENCH_MEMORY_SETTINGS", "{}"))
    settings = Settings(corpus=Path(corpus), db_uri=db, table="chunks", default_tier="unlimited", **extra)
    endpoint = Endpoint(api_key=pydantic.SecretStr(key), base_url=url)
    counts, _ = plan_run(settings)
    phases.mark("plan")
    outcome = asyncio.run(run_online(settings, endpoint, total=counts.chunks_to_embed))
    if outcome.error is not None:
        raise outcome.error
    phases.mark("embed+write")
    report = open_store(settings, rebuild=False).finalize()
    phases.mark("finalize")
    print(json.dumps({"base_mb": base, "peak_mb": phases.peak, "phases": phases.rows,
                      "to_embed": counts.chunks_to_embed, "committed": outcome.committed_rows,
                      "deleted": outcome.deleted_rows, "rows": report.rows}))


def prefect_import_cost() -> dict:
    code = ("import sys; sys.path.insert(0, %r); from bench.bench_memory import _status; a=_status('VmRSS');"
            "import numpy, pyarrow, lancedb, google.genai, pydantic; b=_status('VmRSS');"
            "import prefect; c=_status('VmRSS'); print(a, b, c)") % str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    a, b, c = map(int, out[-3:])
    return {"interpreter_mb": a, "pipeline_imports_mb": b - a, "prefect_on_top_mb": c - b}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(key: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "indexflow.emulator", "--port", str(port), "--tier", "unlimited",
                             "--api-key", key, "--log-level", "warning"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the emulator did not start")
            time.sleep(0.2)


def write_corpora(workdir: Path, scale: int) -> tuple[Path, Path]:
    """SciFact repeated `scale` times under new ids, and the same with one document's text changed."""
    sys.path.insert(0, str(REPO))
    from tests.datasets import scifact_corpus

    lines = scifact_corpus().read_text(encoding="utf-8").splitlines()
    plain, edited = workdir / f"scifact-x{scale}.jsonl", workdir / f"scifact-x{scale}-edit.jsonl"
    with plain.open("w", encoding="utf-8") as a, edited.open("w", encoding="utf-8") as b:
        for r in range(scale):
            for i, line in enumerate(lines):
                rec = json.loads(line)
                if scale > 1:
                    rec["_id"] = f"{rec['_id']}-r{r}"
                a.write(json.dumps(rec) + "\n")
                if r == 0 and i == 0:
                    rec["text"] += " (edited)"
                b.write(json.dumps(rec) + "\n")
    return plain, edited


def run_child(corpus: Path, db: Path, url: str, key: str, env: dict[str, str]) -> dict:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(corpus), str(db), url, key],
        capture_output=True, text=True, env=os.environ | env, cwd=REPO,
    )
    if proc.returncode:
        raise RuntimeError(f"child failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("CORPUS", "DB", "URL", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--scales", default="1,10")
    parser.add_argument("--url", help="a running emulator (default: start one in its own process)")
    parser.add_argument("--api-key", default="bench-memory-key")
    parser.add_argument("--workdir", default="/tmp/mem")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the indexing process")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Settings field for the run, e.g. write_group_rows=1000 (value parsed as JSON)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(e.split("=", 1) for e in args.env)
    if args.set:
        fields = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        env["BENCH_MEMORY_SETTINGS"] = json.dumps(fields)
    emulator, url = (None, args.url) if args.url else start_emulator(args.api_key)
    results = {"prefect": prefect_import_cost(), "env": env, "runs": []}
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            plain, edited = write_corpora(workdir, scale)
            db = workdir / f"db-x{scale}-{os.getpid()}"
            for scenario, corpus in (("first", plain), ("noop", plain), ("edit", edited)):
                r = run_child(corpus, db, url, args.api_key, env) | {"scale": scale, "scenario": scenario}
                results["runs"].append(r)
                if not args.json:
                    ph = "  ".join(f"{p['phase']} {p['peak_mb']}/{p['rss_mb']}/{p['arrow_mb']}" for p in r["phases"])
                    print(f"x{scale:<3} {scenario:<6} peak {r['peak_mb']:4d} MB  [{ph}]  "
                          f"embedded {r['committed']} deleted {r['deleted']} rows {r['rows']} {r['seconds']}s",
                          flush=True)
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=30)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        p = results["prefect"]
        print(f"interpreter {p['interpreter_mb']} MB; numpy+pyarrow+lancedb+google-genai+pydantic "
              f"+{p['pipeline_imports_mb']} MB; import prefect on top +{p['prefect_on_top_mb']} MB")
        print("phases: peak/rss-at-end/arrow-pool MB")


if __name__ == "__main__":
    main()
