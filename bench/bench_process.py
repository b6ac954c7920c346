"""Whole `indexflow` processes, as users run them, beside a plain-Python floor, in one sitting.

    .venv/bin/python bench/bench_process.py [--latency-base-ms 150] [--latency-per-text-ms 2]
                                            [--corpus PATH] [--copies 10] [--quick] [--json PATH]

For SciFact x1 and x10 (each document 10 times, ids `{id}-r{k}`, text ending ` (copy k)`), the wall
time and peak RSS of whole `indexflow index ... --tier unlimited --json` processes: the first run into
an empty table (and when its first API call reached the emulator, counted from Popen), a no-op re-run
(0 API calls) and a run after one document's text changed (1 chunk embedded). Beside them the floor: a plain-Python
process that reads the corpus, SHA-256s every document and reads the table's `id` and
`content_hash` columns, which any re-run has to do at least. Floor and no-op alternate 3 times
(the median of each is printed: the machine is shared). Also `indexflow --help` and a rejected
parameter (exit 2), median of 5. Each process runs in-process mode (no Prefect API: PREFECT_* dropped,
an empty PREFECT_HOME) against the emulator in its own process, with a latency standing in for the API.

Prints a table and PASS/FAIL acceptance lines; exits 0 whatever the figures (a measurement, not a
test) unless a run itself failed (non-zero exit, wrong API call count): then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from measure import (  # noqa: E402
    INDEXFLOW,
    Run,
    RunFailed,
    child_env,
    emulator_calls,
    measure,
    own_peak_rss_mb,
    start_emulator,
)
from tests.datasets import scifact_corpus  # noqa: E402

TABLE = "t"
REPEATS = 3  # floor / no-op alternations
CLI_REPEATS = 5  # --help and the bad parameter

# The floor: what a no-op re-run cannot avoid (read and hash the corpus, read the stored hashes),
# with nothing else imported. `search().select()` is lancedb's own column read and imports no more
# than `import lancedb` does (`to_lance()` imports pylance on top: 269 MB peak against 208, no faster).
FLOOR = """
import hashlib, json, sys
corpus, db, table = sys.argv[1:4]
hashes = {}
with open(corpus, encoding="utf-8") as f:
    for line in f:
        rec = json.loads(line)
        key = rec.get("id", rec.get("_id"))
        hashes[key] = hashlib.sha256((rec.get("title", "") + "\\n" + rec["text"]).encode()).hexdigest()
import lancedb
stored = lancedb.connect(db).open_table(table).search().select(["id", "content_hash"]).to_arrow()
ids, stored_hashes = stored.column("id").to_pylist(), stored.column("content_hash").to_pylist()
print(len(hashes), len(ids))
"""


def read_records(path: Path) -> Iterator[dict]:
    """The JSONL corpus record by record (SciFact: `_id`, `title`, `text`), never all of it at once."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def id_key(record: dict) -> str:
    """The record field the CLI takes the id from by default: `id`, then `_id`."""
    return "id" if "id" in record else "_id"


def write_records(path: Path, records: Iterable[dict]) -> None:
    """Rewrite the corpus file in one go, as a user's export would."""
    with path.open("w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps(rec) + "\n")


def copies(source: Path, n: int) -> Iterator[dict]:
    """Each document n times, ids `{id}-r{k}` and text ending ` (copy k)`, so no two texts are the same."""
    if n == 1:
        yield from read_records(source)
        return
    for k in range(n):
        for rec in read_records(source):
            yield {**rec, id_key(rec): f"{rec[id_key(rec)]}-r{k}", "text": f"{rec['text']} (copy {k})"}


def shortest(records: Iterable[dict]) -> str:
    """The id of the document with the shortest text: editing it re-embeds exactly one chunk."""
    return min(((len(r["text"]), r[id_key(r)]) for r in records))[1]


def edited(records: Iterable[dict], doc_id: str) -> Iterator[dict]:
    """The corpus with document `doc_id`'s text changed and every other record as it was."""
    for rec in records:
        yield {**rec, "text": rec["text"] + " (edited)"} if rec[id_key(rec)] == doc_id else rec


def index_run(corpus: Path, db: Path, env: dict[str, str], cwd: Path, url: str, expect: str,
              failures: list[str], poll: bool = False) -> Run:
    """`indexflow index CORPUS --db DB --table t --tier unlimited --json`; checks its exit and API calls."""
    calls_before = emulator_calls(url)
    # With a key the CLI assumes the free tier (100 texts a minute: SciFact x1 would take an hour);
    # the emulator is unlimited, so the client is told so too and only the process itself is measured.
    argv = [INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", TABLE, "--tier", "unlimited", "--json"]
    run = measure(argv, env, cwd, poll_url=url if poll else None)
    if run.exit_code != 0:
        raise RunFailed(f"{expect} run on {corpus.name} exited {run.exit_code}:\n{run.stderr[-2000:]}")
    run.summary = json.loads(run.stdout[run.stdout.index("{"):])
    calls, chunks = run.summary.get("api_calls"), run.summary.get("chunks_embedded")
    served = emulator_calls(url) - calls_before
    ok = {
        "first": bool(calls) and bool(chunks) and served == calls,
        "no-op": calls == 0 and chunks == 0 and served == 0,
        "edit": calls == 1 and chunks == 1 and served == 1 and run.summary["plan"].get("docs_changed") == 1,
    }[expect]
    if not ok:
        failures.append(f"{expect} run on {corpus.name}: api_calls {calls}, chunks_embedded {chunks}, "
                        f"emulator served {served}")
    return run


def floor_run(corpus: Path, db: Path, env: dict[str, str], cwd: Path) -> Run:
    """The plain-Python floor on this corpus and table."""
    run = measure([sys.executable, "-c", FLOOR, str(corpus), str(db), TABLE], env, cwd)
    if run.exit_code != 0:
        raise RunFailed(f"floor on {corpus.name} exited {run.exit_code}:\n{run.stderr[-2000:]}")
    return run


def scenario(runs: list[Run]) -> dict:
    """Median wall and RSS of a scenario's runs (one run: its own), the peak over them, and every run."""
    return {"wall_s": round(statistics.median(r.wall_s for r in runs), 4),
            "rss_mb": round(statistics.median(r.rss_mb for r in runs), 1),
            "max_rss_mb": round(max(r.rss_mb for r in runs), 1),
            "runs": [r.figures() for r in runs]}


def bench_corpus(label: str, source: Path, n: int, workdir: Path, url: str, repeats: int,
                 failures: list[str]) -> dict:
    """First run, floor and no-op alternately, then the one-document edit, on a fresh table."""
    corpus = workdir / f"corpus-{label}.jsonl"
    db = workdir / f"db-{label}"
    # Streamed, never held: a child's ru_maxrss can't be below this process's peak (see measure)
    write_records(corpus, copies(source, n))
    env = child_env(workdir, url)
    first = index_run(corpus, db, env, workdir, url, "first", failures, poll=True)
    print(f"  {label} first run {first.wall_s:.2f} s", flush=True)
    floors, noops = [], []
    for _ in range(repeats):
        # alternated, so a burst of load on the shared machine hits both sides alike
        floors.append(floor_run(corpus, db, env, workdir))
        noops.append(index_run(corpus, db, env, workdir, url, "no-op", failures))
    target = shortest(read_records(corpus))
    edit_copy = corpus.with_suffix(".edited.jsonl")
    write_records(edit_copy, edited(read_records(corpus), target))
    os.replace(edit_copy, corpus)
    edit = index_run(corpus, db, env, workdir, url, "edit", failures)
    out = {"docs": first.summary["plan"].get("docs_seen"), "chunks": first.summary.get("chunks_embedded"),
           "first": scenario([first]), "floor": scenario(floors), "noop": scenario(noops), "edit": scenario([edit])}
    out["first"]["first_call_s"] = None if first.first_call_s is None else round(first.first_call_s, 4)
    return out


def bench_cli(corpus: Path, workdir: Path, url: str, repeats: int) -> dict:
    """`indexflow --help` and a parameter the CLI rejects (exit 2) before importing anything heavy."""
    env = child_env(workdir, url)
    out = {}
    for name, argv, expected in (("help", [INDEXFLOW, "--help"], 0),
                                 ("bad_parameter", [INDEXFLOW, "index", str(corpus), "--dimensions", "5000"], 2)):
        runs = [measure(argv, env, workdir) for _ in range(repeats)]
        for run in runs:
            if run.exit_code != expected:
                raise RunFailed(f"{' '.join(argv[1:])} exited {run.exit_code}, not {expected}:\n{run.stderr[-2000:]}")
        out[name] = scenario(runs)
    return out


def acceptance(results: dict) -> list[dict]:
    """The issue's acceptance lines: figure, limit, PASS or not (only those the run measured)."""
    lines = []

    def line(text: str, value: float | None, limit: float) -> None:
        lines.append({"line": text, "value": value, "limit": limit, "pass": value is not None and value <= limit})

    x1 = results["corpora"]["x1"]
    line("no-op re-run x1 / floor x1", x1["noop"]["wall_s"] / x1["floor"]["wall_s"], 2.0)
    line("--help wall s", results["cli"]["help"]["wall_s"], 0.5)
    line("bad parameter wall s", results["cli"]["bad_parameter"]["wall_s"], 0.5)
    line("first API call after start x1, s", x1["first"]["first_call_s"], 1.5)
    x1_peak = max(x1[s]["max_rss_mb"] for s in ("first", "noop", "edit"))
    line("peak RSS x1 MB (max of first, no-op, edit)", x1_peak, 300.0)
    xn_label = next((k for k in results["corpora"] if k != "x1"), None)
    if xn_label:
        xn = results["corpora"][xn_label]
        line(f"peak RSS {xn_label} / x1, first run", xn["first"]["max_rss_mb"] / x1["first"]["max_rss_mb"], 1.15)
        xn_peak = max(xn[s]["max_rss_mb"] for s in ("first", "noop", "edit"))
        line(f"peak RSS {xn_label} / x1, max over the three scenarios", xn_peak / x1_peak, 1.15)
    return lines


def report(results: dict) -> None:
    """The table (medians where repeated) and the acceptance lines."""
    rows = []
    for label, c in results["corpora"].items():
        for key, name in (("first", "first run"), ("noop", "no-op re-run"), ("floor", "floor"), ("edit", "one-doc edit")):
            reps = f" (median of {len(c[key]['runs'])})" if len(c[key]["runs"]) > 1 else ""
            rows.append((f"{label} {name}{reps}", c[key]["wall_s"], c[key]["rss_mb"]))
    for key, name in (("help", "indexflow --help"), ("bad_parameter", "index --dimensions 5000 (exit 2)")):
        s = results["cli"][key]
        reps = f" (median of {len(s['runs'])})" if len(s["runs"]) > 1 else ""
        rows.append((f"{name}{reps}", s["wall_s"], s["rss_mb"]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'scenario':<{width}} | {'wall s':>7} | {'peak RSS MB':>11}")
    print(f"{'-' * width}-+-{'-' * 7}-+-{'-' * 11}")
    for name, wall, rss in rows:
        print(f"{name:<{width}} | {wall:7.2f} | {rss:11.0f}")
    for label, c in results["corpora"].items():
        print(f"{label}: {c['docs']:,} docs, {c['chunks']:,} chunks; first API call reached the emulator "
              f"{c['first']['first_call_s']} s after Popen")
    print(f"(no RSS figure can be below this bench process's own peak, {results['bench_peak_rss_mb']:.0f} MB)\n")
    for a in results["acceptance"]:
        value = "n/a" if a["value"] is None else f"{a['value']:.3f}"
        print(f"{'PASS' if a['pass'] else 'FAIL'}  {a['line']}: {value} (limit {a['limit']:g})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-base-ms", type=float, default=150.0, help="emulator latency per call")
    parser.add_argument("--latency-per-text-ms", type=float, default=2.0, help="emulator latency per text")
    parser.add_argument("--corpus", type=Path, help="a JSONL corpus instead of SciFact (ids in `id` or `_id`)")
    parser.add_argument("--copies", type=int, default=10, help="copies in the larger corpus")
    parser.add_argument("--quick", action="store_true", help="x1 only, one repetition: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure here as JSON")
    args = parser.parse_args()
    source = args.corpus or scifact_corpus()
    repeats, cli_repeats = (1, 1) if args.quick else (REPEATS, CLI_REPEATS)
    sizes = [1] if args.quick or args.copies == 1 else [1, args.copies]
    results: dict = {"config": {"latency_base_ms": args.latency_base_ms, "latency_per_text_ms": args.latency_per_text_ms,
                                "corpus": str(args.corpus or "scifact"), "sizes": sizes, "repeats": repeats,
                                "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
                     "corpora": {}, "failures": []}
    print(f"indexflow processes: emulator latency {args.latency_base_ms:g} ms + {args.latency_per_text_ms:g} ms/text, "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-process-"))
    code = 0
    try:
        emulator, url = start_emulator(workdir, args.latency_base_ms, args.latency_per_text_ms)
        try:
            for n in sizes:
                results["corpora"][f"x{n}"] = bench_corpus(f"x{n}", source, n, workdir, url, repeats,
                                                           results["failures"])
            results["cli"] = bench_cli(workdir / "corpus-x1.jsonl", workdir, url, cli_repeats)
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
        results["bench_peak_rss_mb"] = round(own_peak_rss_mb(), 1)
        results["acceptance"] = acceptance(results)
        report(results)
    except RunFailed as exc:
        results["failures"].append(str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for failure in results["failures"]:
        print(f"RUN FAILED: {failure}", file=sys.stderr)
        code = 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
