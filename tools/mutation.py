"""`make mutation`: mutation testing of the modules that carry indexflow's guarantees, with cosmic-ray.

    make mutation                                          # every target in TARGETS, within the budget
    make mutation MODULES="tasks/plan.py tasks/store.py"   # some of them
    make mutation ARGS=--resume                            # what the last run's budget left unjudged
    make mutation BUDGET=0                                 # no time limit: every mutant
    make mutation ARGS=--report                            # run nothing; report the last run again
    .venv-mutation/bin/python tools/mutation.py --count    # mutants per target; nothing is run

How a run goes:
  1. One coverage run of every mapped test file over the unmutated code says which tests execute
     which lines of the targets (tools/mutation_runner.py). Tests that fail there judge nothing.
  2. For each target, cosmic-ray makes its mutants (a session in .mutation/<module>.sqlite).
     Some are not run; the session records why:
       - inside type annotations: never evaluated under `from __future__ import annotations`;
       - a `*` that starts a parameter or argument, which cosmic-ray takes for a multiplication;
       - the reduced operator set: a binary operator gets one replacement (+ -> -, * -> /, | -> &)
         instead of eleven, a comparison its negation and its boundary (< -> >=, < -> <=) instead
         of seven, a number n becomes n + 1 (not also n - 1);
       - outside the target's `scope`, when it names the definitions that carry the guarantee.
  3. Mutants run in a seeded random order across all targets, so a run cut short by the budget
     still measures every module on an unbiased sample. --jobs shards (one per CPU) judge them
     side by side: each is a scratch copy of the worktree under .mutation/shards/ with its own
     .venv (hard links; the editable install points at the copy). Each mutant is written into its
     shard's file (cosmic-ray's `use_mutation`, which puts the original back) and judged by the tests
     that execute the mutated statement: fastest first, up to TEST_CAP seconds of their clean
     duration, with -x, in a child forked from the shard's warm pytest process. A run past
     TIMEOUT_FACTOR x that duration x the number of shards + TIMEOUT_FLOOR is killed, and the mutant counts as killed by timeout. A mutant
     whose statement no test executes survives unrun; one in code that runs at import time
     (constants, defaults, decorators, dataclass fields) may matter to any test of the target.
  4. The score per target (killed / (run - equivalent)) and every survivor are printed and written
     to .mutation/report.md; survivors listed in tools/mutation_equivalents.toml are reported as
     equivalent, with the reason, the others as to kill.

One mutant per shard: a mutant on disk is seen by every process that imports it, so two in one
tree would judge each other; the worktree itself is never mutated. cosmic-ray runs in its own venv (.venv-mutation) because its dependency aiohttp, installed
in .venv, changes google-genai's async transport under the tests.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import fcntl
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cosmic_ray.commands
import cosmic_ray.plugins
from cosmic_ray.mutating import mutate_code, use_mutation
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkItem, WorkResult, WorkerOutcome

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".mutation"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
# -x is added for a mutant: its first failure kills it. The runner imports anyio's pytest plugin
# before pytest starts, so pytest warns it cannot rewrite that plugin's asserts; nothing changes.
PYTEST_ARGS = ["-q", "--no-header", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
TEST_CAP = 15.0  # seconds of (coverage-timed) clean test duration a mutant may use; the fastest tests first
TIMEOUT_FACTOR = 3.0  # a mutant's tests may take this many times their clean duration (plus the floor) ...
TIMEOUT_FLOOR = 10.0  # ... before it counts as killed by timeout (a hang, a retry loop gone wild)
MAP_TIMEOUT = 1800.0  # the coverage run of every mapped test file
DEFAULT_BUDGET_MINUTES = 55.0  # the whole run, coverage map included
SEED = 20261201
NO_TEST = "no test executes it"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"  # survivors that no test can kill, and why


@dataclass(frozen=True)
class Target:
    """A module to mutate and the test files that exercise it."""

    path: str
    tests: tuple[str, ...]
    scope: tuple[str, ...] = ()  # top-level names ("sanitize", "VectorStore.upsert"); empty: whole file
    exclude: tuple[str, ...] = ()  # test ids never run for this target (say why in TARGETS)

    def test_files(self) -> list[str]:
        """The mapped test files, plus the module's mirror test file once someone writes it."""
        mirror = f"tests/{Path(self.path).parent.name}/test_{Path(self.path).name}"
        files = list(self.tests)
        if mirror not in files and (ROOT / mirror).exists():
            files.insert(0, mirror)
        return files


# The map: each guarantee-carrying module -> the test files that exercise it. Prefect-server tests
# (tests/flows/) only where nothing else exercises the code: each run starts a server (~15 s).
# The SciFact batch test (30 s) is left out of the batch modules: it runs the same route as
# test_batch_run_equals_online_run_row_for_row_and_books_batch_tokens (3 s), on 5,183 documents.
SCIFACT_BATCH = "tests/tasks/test_batch_jobs.py::test_full_scifact_batch_run_equals_online_run"
TARGETS: tuple[Target, ...] = (
    Target("tasks/normalize.py", ("tests/tasks/test_normalize.py",)),
    Target("tasks/recipe.py", ("tests/tasks/test_chunk.py", "tests/tasks/test_store.py")),
    Target("tasks/chunk.py", ("tests/tasks/test_chunk.py",), scope=("normalize_text", "chunk_document")),
    Target("tasks/plan.py", ("tests/tasks/test_online.py",)),
    Target("tasks/online.py", ("tests/tasks/test_online.py",)),
    Target("tasks/table.py", ("tests/tasks/test_online.py",)),
    Target("tasks/writer.py", ("tests/tasks/test_store.py",)),
    Target("tasks/store.py", ("tests/tasks/test_store.py", "tests/tasks/test_online.py")),
    Target("tasks/lance_tables.py", ("tests/tasks/test_store.py", "tests/tasks/test_online.py")),
    Target("tasks/dead_letters.py", ("tests/tasks/test_store.py", "tests/tasks/test_online.py")),
    Target("tasks/retry.py", ("tests/tasks/test_retry.py", "tests/tasks/test_batcher.py")),
    Target("tasks/limits.py", ("tests/tasks/test_limits.py", "tests/tasks/test_retry.py",
                               "tests/tasks/test_batcher.py")),
    Target("tasks/batch/ledger.py", ("tests/tasks/test_ledger.py", "tests/tasks/test_batch_jobs.py"),
           exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/create.py", ("tests/tasks/test_batch_submit.py", "tests/tasks/test_batch_jobs.py"),
           exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/wire.py", ("tests/tasks/test_batch_submit.py", "tests/tasks/test_batch_results.py",
                                   "tests/tasks/test_batch_jobs.py"), exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/submit.py", ("tests/tasks/test_batch_jobs.py", "tests/tasks/test_batch_recovery.py"),
           exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/settle.py", ("tests/tasks/test_batch_jobs.py", "tests/tasks/test_batch_recovery.py"),
           exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/route.py", ("tests/tasks/test_batch_jobs.py", "tests/tasks/test_batch_recovery.py"),
           exclude=(SCIFACT_BATCH,)),
    Target("tasks/batch/watch.py", ("tests/tasks/test_batch_jobs.py", "tests/tasks/test_batch_alert_route.py"),
           exclude=(SCIFACT_BATCH,)),
    # redaction: what hides an API key in every error message
    Target("tasks/redact.py", ("tests/tasks/test_redact.py", "tests/tasks/test_gemini.py")),
    # the API key's source (never a parameter); only a Prefect server and a worker exercise it
    Target("flows/index_corpus.py", ("tests/flows/test_secrets.py",), scope=("_api_key_from_environment",)),
)

# The reduced operator set: the one replacement kept for each binary operator, and the negation
# and boundary kept for each comparison. Other operators (not, and/or, True/False, break/continue,
# exceptions, zero-iteration loops, decorators, unary operators) are all kept.
BINARY_KEPT = {"Add": "Sub", "Sub": "Add", "Mul": "Div", "Div": "Mul", "FloorDiv": "Mul", "Mod": "FloorDiv",
               "Pow": "Mul", "LShift": "RShift", "RShift": "LShift", "BitOr": "BitAnd", "BitAnd": "BitOr",
               "BitXor": "BitOr"}
COMPARISON_KEPT = {"Eq": {"NotEq"}, "NotEq": {"Eq"}, "Is": {"IsNot"}, "IsNot": {"Is"},
                   "Lt": {"GtE", "LtE"}, "LtE": {"Gt", "Lt"}, "Gt": {"LtE", "GtE"}, "GtE": {"Lt", "Gt"}}


# --- which mutants to run -------------------------------------------------------------------------

Span = tuple[tuple[int, int], tuple[int, int]]  # ((line, col), (end_line, end_col)), cosmic-ray's positions


def _char_col(lines: list[str], line: int, byte_col: int) -> int:
    """ast counts columns in UTF-8 bytes, cosmic-ray (parso) in characters."""
    return len(lines[line - 1].encode()[:byte_col].decode(errors="ignore"))


def _span(node: ast.expr, lines: list[str]) -> Span:
    end = node.end_lineno or node.lineno
    return ((node.lineno, _char_col(lines, node.lineno, node.col_offset)),
            (end, _char_col(lines, end, node.end_col_offset or 0)))


def annotation_spans(tree: ast.Module, lines: list[str]) -> list[Span]:
    """Every annotation in the module (never evaluated under `from __future__ import annotations`)."""
    spans: list[Span] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            spans.append(_span(node.returns, lines))
        elif isinstance(node, ast.arg) and node.annotation is not None:
            spans.append(_span(node.annotation, lines))
        elif isinstance(node, ast.AnnAssign):
            spans.append(_span(node.annotation, lines))
    return spans


def _named(body: Sequence[ast.stmt], name: str) -> ast.stmt | None:
    head, _, rest = name.partition(".")
    for node in body:
        names: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        if head in names:
            if not rest:
                return node
            return _named(node.body, rest) if isinstance(node, ast.ClassDef) else None
    return None


def scope_lines(tree: ast.Module, names: Sequence[str]) -> list[tuple[int, int]]:
    """The line ranges (decorators included) of the named top-level definitions."""
    ranges = []
    for name in names:
        node = _named(tree.body, name)
        if node is None:
            raise SystemExit(f"mutation: scope name {name!r} not found")
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno, *(d.lineno for d in decorators)])
        ranges.append((start, node.end_lineno or node.lineno))
    return ranges


def _is_star_syntax(lines: list[str], pos: tuple[int, int]) -> bool:
    """A `*`/`**` that starts a parameter or argument (`def f(a, *, b)`, `f(*args)`): not a multiplication,
    though cosmic-ray mutates some of them as one."""
    line, col = pos
    before = "\n".join([*lines[: line - 1], lines[line - 1][:col]]).rstrip()
    return lines[line - 1][col] == "*" and (not before or before[-1] in "(,")


def skip_reason(spec: MutationSpec, lines: list[str], annotations: list[Span],
                scope: list[tuple[int, int]] | None) -> str | None:
    """Why this mutant is not run, or None to run it."""
    line = spec.start_pos[0]
    if scope is not None and not any(a <= line <= b for a, b in scope):
        return "out of scope"
    if any(span[0] <= tuple(spec.start_pos) < span[1] for span in annotations):
        return "annotation"
    kind, _, pair = _operator(spec).partition("_")
    if kind == "ReplaceBinaryOperator" and _is_star_syntax(lines, tuple(spec.start_pos)):
        return "star in a signature or call"
    if kind in ("ReplaceBinaryOperator", "ReplaceComparisonOperator"):
        source, _, dest = pair.partition("_")
        kept = {BINARY_KEPT.get(source)} if kind == "ReplaceBinaryOperator" else COMPARISON_KEPT.get(source, set())
        if dest not in kept:
            return "reduced operator set"
    # cosmic-ray makes two mutants per number, n + 1 then n - 1: the odd occurrences are the n - 1
    if kind == "NumberReplacer" and spec.occurrence % 2:
        return "reduced operator set"
    return None


def init_session(target: Target, db: WorkDB) -> Counter[str]:
    """A fresh cosmic-ray session for the target, with the mutants not to run marked skipped."""
    source = (ROOT / target.path).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    annotations = annotation_spans(tree, lines)
    scope = scope_lines(tree, target.scope) if target.scope else None
    db.clear()
    cosmic_ray.commands.init([Path(target.path)], db, {})
    skipped: dict[str, list[str]] = {}
    for item in db.work_items:
        reason = skip_reason(item.mutations[0], lines, annotations, scope)
        if reason:
            skipped.setdefault(reason, []).append(item.job_id)
    for reason, ids in skipped.items():
        db.set_multiple_results(ids, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason))
    return Counter({reason: len(ids) for reason, ids in skipped.items()})


# --- which tests judge a mutant --------------------------------------------------------------------

class Runner:
    """tools/mutation_runner.py in .venv: a warm pytest process that forks a child per test run."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.proc = subprocess.Popen([str(root / ".venv" / "bin" / "python"), str(root / "tools" / "mutation_runner.py")],
                                     cwd=root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._ready = False

    def wait_ready(self) -> Runner:
        """Wait until the runner has imported what every child shares (started in parallel, awaited here)."""
        if not self._ready:
            self._answer()
            self._ready = True
        return self

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("mutation: the test runner died (see its output above)")
        return json.loads(line)

    def pytest(self, args: Sequence[str], *, timeout: float, log: Path, coverage_of: Sequence[Path] = (),
               map_out: Path | None = None) -> dict[str, Any]:
        self.wait_ready()
        request: dict[str, Any] = {"args": [*PYTEST_ARGS, *args], "timeout": timeout, "log": str(log)}
        if map_out is not None:
            request["map"] = {"sources": [str(p) for p in coverage_of], "out": str(map_out)}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stopped mid-mutant: the runner kills its child's whole group
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass(frozen=True)
class Selection:
    tests: list[str]  # test ids, fastest first
    seconds: float  # their clean duration
    capped: int  # covering tests left out by TEST_CAP


@dataclass
class TestMap:
    """Which tests execute which lines of the targets, from one coverage run of the unmutated code."""

    lines: dict[str, dict[int, set[str]]]  # absolute file -> line -> test ids ("" = at import time)
    durations: dict[str, float]
    failing: set[str]  # tests that fail without any mutant: never used to judge one

    @classmethod
    def measure(cls, runner: Runner, targets: Sequence[Target]) -> TestMap:
        files = sorted({f for t in targets for f in t.test_files()})
        print(f"mapping tests to lines: {len(files)} test files under coverage ...", flush=True)
        started = time.monotonic()
        out = OUT / "testmap.json"
        out.unlink(missing_ok=True)
        answer = runner.pytest(["--tb=line", *files], timeout=MAP_TIMEOUT, log=OUT / "testmap.log",
                               coverage_of=[ROOT / t.path for t in targets], map_out=out)
        if answer["timeout"] or not out.exists():
            raise SystemExit(f"mutation: the coverage run did not finish; see {OUT / 'testmap.log'}")
        (OUT / "testmap.targets").write_text("\n".join(t.path for t in targets) + "\n")
        test_map = cls.load(out)
        print(f"  done in {time.monotonic() - started:.0f} s" + (
            f"; these fail without mutants and judge none: {sorted(test_map.failing)}" if test_map.failing else ""),
            flush=True)
        return test_map

    @classmethod
    def load(cls, path: Path) -> TestMap:
        data = json.loads(path.read_text())
        lines = {f: {int(n): set(ids) for n, ids in by_line.items()} for f, by_line in data["lines"].items()}
        return cls(lines, data["durations"], set(data["failed"]))

    def select(self, target: Target, statement: tuple[int, int], cap: float = TEST_CAP) -> Selection | None:
        """The target's tests that execute the statement, fastest first, within TEST_CAP; None if none does.

        Code run at import time (module constants, decorators, default values, dataclass fields) may
        matter to any test, so it gets every test of the target's files."""
        by_line = self.lines.get(str(ROOT / target.path), {})
        ids = set().union(*(by_line.get(n, set()) for n in range(statement[0], statement[1] + 1)))
        if "" in ids:
            ids = set(self.durations)
        files = target.test_files()
        covering = sorted((i for i in ids if i.split("::")[0] in files and i not in self.failing
                           and i not in target.exclude), key=lambda i: self.durations.get(i, 0.0))
        if not covering:
            return None
        chosen: list[str] = []
        seconds = 0.0
        for test in covering:
            duration = self.durations.get(test, 0.0)
            if chosen and seconds + duration > cap:
                break
            chosen.append(test)
            seconds += duration
        return Selection(chosen, seconds, len(covering) - len(chosen))


def statement_lines(tree: ast.Module) -> dict[int, tuple[int, int]]:
    """Line -> (first line of the innermost statement holding it, that line): what coverage sees executed."""
    first: dict[int, int] = {}
    for node in ast.walk(tree):  # breadth first: inner statements overwrite outer ones
        if isinstance(node, ast.stmt):
            end = node.end_lineno or node.lineno
            body_start = min((c.lineno for f in ("body", "orelse", "finalbody", "handlers")
                              for c in getattr(node, f, []) or []), default=end + 1)
            for n in range(node.lineno, min(body_start, end + 1)):  # a compound statement: its header only
                first[n] = node.lineno
    return {n: (s, n) for n, s in first.items()}


# --- running ---------------------------------------------------------------------------------------

def forget_bytecode(module: Path) -> None:
    """Drop the module's cached bytecode: a mutant written in the same second as the last one, with the
    same size, would otherwise pass Python's mtime+size check and run the last mutant's code."""
    for pyc in (module.parent / "__pycache__").glob(f"{module.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


def make_shard(k: int) -> Path:
    """A scratch copy of the worktree where mutants are written: its files (real copies, which a
    mutant overwrites) and .venv (hard links, with the editable install and scripts pointed at the copy).

    Every process a test starts imports the shard's code, so shards judge mutants side by side and
    the worktree itself is never mutated."""
    dest = OUT / "shards" / str(k)
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    venv = dest / ".venv"
    subprocess.run(["cp", "-al", str(ROOT / ".venv"), str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    old, new = str(ROOT).encode(), str(dest).encode()
    for path in [*(venv / "bin").iterdir(), *site.glob("__editable__*"), *site.glob("*.pth")]:
        if path.is_file() and not path.is_symlink() and old in (text := path.read_bytes()):
            mode = path.stat().st_mode
            path.unlink()  # a new file, not a write through the hard link into .venv
            path.write_bytes(text.replace(old, new))
            path.chmod(mode)
    for pyc in (site / "__pycache__").glob("__editable__*"):
        pyc.unlink()
    return dest


def diff_of(original: str, mutated: str) -> str:
    return "\n".join(difflib.unified_diff(original.split("\n"), mutated.split("\n"), lineterm="", n=0))


def test_mutant(runner: Runner, spec: MutationSpec, selection: Selection, slowdown: float = 1.0) -> WorkResult:
    """Write the mutant into the runner's shard (cosmic-ray), run its tests, put the original back.
    `slowdown`: how many shards share the machine, which stretches every test's duration."""
    operator = cosmic_ray.plugins.get_operator(spec.operator_name)(**spec.operator_args)
    module = runner.root / spec.module_path
    try:
        with use_mutation(module, operator, spec.occurrence) as (original, mutated):
            if mutated is None:
                return WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
            forget_bytecode(module)
            timeout = TIMEOUT_FLOOR + TIMEOUT_FACTOR * slowdown * selection.seconds
            answer = runner.pytest(["-x", *selection.tests], timeout=timeout,
                                   log=OUT / f"last-mutant-{runner.root.name}.log")
    finally:
        forget_bytecode(module)
    capped = f"; {selection.capped} {CAPPED}" if selection.capped else ""
    if answer["timeout"]:
        return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.KILLED,
                          output=f"timeout in {answer['seconds']:.1f} s", diff=diff_of(original, mutated))
    outcome = TestOutcome.SURVIVED if answer["exit"] == 0 else TestOutcome.KILLED
    return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=outcome, diff=diff_of(original, mutated),
                      output=f"{len(selection.tests)} tests, exit {answer['exit']} in {answer['seconds']:.1f} s{capped}")


def untested(spec: MutationSpec) -> WorkResult:
    """A mutant no test executes: it survives without being run (its diff is made in memory)."""
    operator = cosmic_ray.plugins.get_operator(spec.operator_name)(**spec.operator_args)
    original = Path(spec.module_path).read_text()
    mutated = mutate_code(original, operator, spec.occurrence)
    if mutated is None:
        return WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
    return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED, output=NO_TEST,
                      diff=diff_of(original, mutated))


def is_timeout(result: WorkResult) -> bool:
    return (result.output or "").startswith("timeout")


def seconds_of(result: WorkResult) -> float:
    """The test run's duration, from the result's note ("... in 1.2 s"; an older bare "timeout": the floor)."""
    found = re.search(r" in ([0-9.]+) s", result.output or "")
    return float(found.group(1)) if found else TIMEOUT_FLOOR if is_timeout(result) else 0.0


def verdict(result: WorkResult) -> str:
    if result.worker_outcome != WorkerOutcome.NORMAL:
        return result.worker_outcome.value
    if result.test_outcome == TestOutcome.KILLED:
        return "killed (timeout)" if is_timeout(result) else "killed"
    return f"SURVIVED ({result.output})"


@dataclass
class Score:
    """One target's outcome."""

    target: Target
    total: int = 0
    run: int = 0
    killed: int = 0
    timeouts: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    survivors: list[tuple[MutationSpec, WorkResult]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.run if self.run else 100.0

    def tally(self, db: WorkDB) -> None:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                self.skipped[result.output or "?"] += 1
            if result.worker_outcome != WorkerOutcome.NORMAL:
                continue
            self.run += 1
            self.seconds += seconds_of(result)
            if result.test_outcome == TestOutcome.KILLED:
                self.killed += 1
                self.timeouts += is_timeout(result)
            else:
                self.survivors.append((item.mutations[0], result))
        self.survivors.sort(key=lambda s: (tuple(s[0].start_pos), s[0].operator_name))


CAPPED = "slower covering tests not run"


def run_all(targets: Sequence[Target], dbs: dict[Target, WorkDB], runners: Sequence[Runner], test_map: TestMap,
            deadline: float | None, *, recheck: bool = False) -> None:
    """Judge every pending mutant, in a seeded random order across targets, until the deadline.
    With `recheck`, judge again instead the survivors whose slower covering tests were not run, with all of them."""
    if recheck:
        work = [(t, w) for t in targets for w, r in sorted(dbs[t].completed_work_items, key=lambda i: i[0].job_id)
                if r.test_outcome == TestOutcome.SURVIVED and CAPPED in (r.output or "")]
    else:
        work = [(t, w) for t in targets for w in sorted(dbs[t].pending_work_items, key=lambda w: w.job_id)]
    random.Random(SEED).shuffle(work)
    statements = {t: statement_lines(ast.parse((ROOT / t.path).read_text())) for t in targets}
    plans = []
    for target, item in work:
        line = item.mutations[0].start_pos[0]
        selection = test_map.select(target, statements[target].get(line, (line, line)),
                                    cap=float("inf") if recheck else TEST_CAP)
        if selection is None:  # costs nothing: recorded whatever the budget
            dbs[target].set_result(item.job_id, untested(item.mutations[0]))
        else:
            plans.append((target, item, selection))
    started = time.monotonic()
    todo: queue.SimpleQueue[tuple[Target, WorkItem, Selection]] = queue.SimpleQueue()
    for plan in plans:
        todo.put(plan)
    done: queue.SimpleQueue[tuple[Target, WorkItem, WorkResult] | None] = queue.SimpleQueue()

    def judge(runner: Runner) -> None:  # one thread per shard; results are written by the main thread
        try:
            while deadline is None or time.monotonic() <= deadline:
                try:
                    target, item, selection = todo.get_nowait()
                except queue.Empty:
                    return
                done.put((target, item, test_mutant(runner, item.mutations[0], selection, len(runners))))
        finally:
            done.put(None)

    threads = [threading.Thread(target=judge, args=(r,), daemon=True) for r in runners]
    for thread in threads:
        thread.start()
    finished, n = 0, 0
    while finished < len(threads):
        got = done.get()
        if got is None:
            finished += 1
            continue
        target, item, result = got
        n += 1
        dbs[target].set_result(item.job_id, result)
        spec = item.mutations[0]
        print(f"  [{n}/{len(plans)} {time.monotonic() - started:4.0f}s] {target.path}:{spec.start_pos[0]} "
              f"{_operator(spec)}: {verdict(result)}", flush=True)
    if n < len(plans):
        print(f"budget reached: {len(plans) - n} of {len(plans)} mutants not run", flush=True)


# --- reporting -------------------------------------------------------------------------------------

def _operator(spec: MutationSpec) -> str:
    return spec.operator_name.partition("/")[2]


def changed_lines(diff: str) -> tuple[str, str]:
    """(old, new) source of one mutant, from its unified diff, each stripped and joined on one line."""
    removed = [l[1:].strip() for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    added = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return " ".join(removed), " ".join(added)


def load_equivalents() -> dict[tuple[str, str, str], str]:
    """(module, old, new) -> why the mutant is equivalent, from EQUIVALENTS (matched by text, not line)."""
    data = tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    return {(e["module"], e["old"].strip(), e["new"].strip()): e["why"] for e in data.get("equivalent", [])}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def count_report(scores: Sequence[Score]) -> Iterator[str]:
    yield "| module | mutants | not made (reason: n) | test files |"
    yield "|---|---:|---|---|"
    for s in scores:
        skipped = ", ".join(f"{r}: {n}" for r, n in sorted(s.skipped.items()))
        yield f"| `{s.target.path}` | {s.total} | {skipped} | {' '.join(s.target.test_files())} |"
    yield f"| **all** | **{sum(s.total for s in scores)}** | | |"


def report(scores: Sequence[Score], equivalents: dict[tuple[str, str, str], str]) -> Iterator[str]:
    """The score table, then every survivor: the equivalent ones with the reason, the others to kill.
    Score = killed / (run - equivalent)."""
    def why(s: Score, result: WorkResult) -> str | None:
        return equivalents.get((s.target.path, *changed_lines(result.diff or "")))

    yield ("| module | mutants | run | killed | equivalent | score | timeouts | no test executes it "
           "| s / mutant run | time |")
    yield "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    totals = Counter[str]()
    for s in scores:
        equivalent = sum(why(s, r) is not None for _, r in s.survivors)
        uncovered = sum(r.output == NO_TEST for _, r in s.survivors)
        judged = s.run - equivalent
        per = f"{s.seconds / (s.run - uncovered):.1f}" if s.run > uncovered else "-"
        score = f"{100.0 * s.killed / judged:.1f} %" if judged else "-"
        yield (f"| `{s.target.path}` | {s.total} | {s.run} | {s.killed} | {equivalent} | {score} | {s.timeouts} | "
               f"{uncovered} | {per} | {_minutes(s.seconds)} |")
        totals.update(total=s.total, run=s.run, killed=s.killed, equivalent=equivalent, timeouts=s.timeouts,
                      uncovered=uncovered, seconds=int(s.seconds))
    judged = totals["run"] - totals["equivalent"]
    yield (f"| **all** | **{totals['total']}** | **{totals['run']}** | **{totals['killed']}** | "
           f"**{totals['equivalent']}** | **{100.0 * totals['killed'] / judged if judged else 100.0:.1f} %** | "
           f"{totals['timeouts']} | {totals['uncovered']} | | {_minutes(totals['seconds'])} |")
    for s in scores:
        if not s.survivors:
            continue
        yield ""
        yield f"`{s.target.path}`:"
        for spec, result in s.survivors:
            old, new = changed_lines(result.diff or "")
            reason = why(s, result)
            verdict_ = f"equivalent: {reason}" if reason else f"to kill ({result.output})"
            yield f"- {spec.start_pos[0]} {_operator(spec)}: `{old}` -> `{new}` — {verdict_}"


KNOWN = ROOT / "tools" / "known_mutants.toml"  # breaks found by hand that once survived the suite


def check_known() -> int:
    """Write each of KNOWN's breaks into a scratch shard and run its tests: each must fail. 0 if all do."""
    known = tomllib.loads(KNOWN.read_text())["known"]
    runner = Runner(make_shard(0))
    survived = 0
    try:
        for entry in known:
            module = runner.root / entry["module"]
            original = module.read_text()
            if original.count(entry["old"]) != 1:
                raise SystemExit(f"mutation: {KNOWN.name}: {entry['name']!r}: its `old` text is not in "
                                 f"{entry['module']} exactly once; update the entry to the code")
            module.write_text(original.replace(entry["old"], entry["new"]))
            forget_bytecode(module)
            try:
                answer = runner.pytest(["-x", *entry["tests"]], timeout=900, log=OUT / "known.log")
            finally:
                module.write_text(original)
                forget_bytecode(module)
            killed = answer["timeout"] or answer["exit"] == 1  # 1: tests failed (not a usage error)
            survived += not killed
            failed = re.findall(r"^FAILED (\S+)", (OUT / "known.log").read_text(errors="replace"), re.M)
            how = "timeout" if answer["timeout"] else failed[0] if failed else f"exit {answer['exit']}"
            print(f"{'killed' if killed else 'SURVIVED'}: {entry['name']} ({entry['module']}; "
                  f"{how}, {answer['seconds']:.1f} s)", flush=True)
    finally:
        runner.close()
    print(f"{len(known) - survived} of {len(known)} known breaks killed")
    return 1 if survived else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="target paths (default: all), e.g. tasks/plan.py")
    parser.add_argument("--count", action="store_true", help="count the mutants per target; run nothing")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MINUTES,
                        help=f"minutes for the whole run (default {DEFAULT_BUDGET_MINUTES:.0f}; 0: no limit)")
    parser.add_argument("--resume", action="store_true",
                        help="run only the mutants the last run left unjudged (same sessions, same coverage map)")
    parser.add_argument("--recheck", action="store_true",
                        help="judge the last run's survivors that were judged by their fastest tests only, "
                             "with every test that executes them")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: report the last run again (after editing mutation_equivalents.toml)")
    parser.add_argument("--known", action="store_true",
                        help=f"run nothing else: check that each break in {KNOWN.name} fails a test")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants judged at once, each in its own scratch copy of the worktree "
                             "(default: one per CPU)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    known = {t.path: t for t in TARGETS}
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        parser.error(f"not a target: {', '.join(unknown)} (targets: {', '.join(known)})")
    targets = [known[m] for m in args.modules] or list(TARGETS)
    os.chdir(ROOT)
    OUT.mkdir(exist_ok=True)
    lock = (OUT / "lock").open("w")
    try:  # one run per worktree: a second would put the first one's mutant back, or judge it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("mutation: another run is using this worktree (.mutation/lock)") from None
    # SIGTERM (make interrupted, a CI limit) unwinds like Ctrl-C: the runners and their tests are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.known:
        return check_known()
    started = time.monotonic()
    deadline = started + 60 * args.budget if args.budget > 0 else None
    scores = {t: Score(t) for t in targets}
    with contextlib.ExitStack() as stack:
        # --count makes its sessions in a scratch folder: the last run's results stay as they are
        sessions = Path(stack.enter_context(tempfile.TemporaryDirectory())) if args.count else OUT
        dbs = {t: stack.enter_context(use_db(str(sessions / f"{Path(t.path).stem}.sqlite"))) for t in targets}
        if args.count or not (args.resume or args.report or args.recheck):
            for t in targets:
                init_session(t, dbs[t])
        for t in targets:
            scores[t].total = sum(r.worker_outcome != WorkerOutcome.SKIPPED for _, r in dbs[t].completed_work_items)
            scores[t].total += len(dbs[t].pending_work_items)
        if args.count:
            for t in targets:
                scores[t].tally(dbs[t])
            print("\n".join(count_report(list(scores.values()))))
            return 0
        if not args.report:
            saved = OUT / "testmap.json"
            mapped = OUT / "testmap.targets"  # a map made for fewer modules knows no tests of the others
            reuse = ((args.resume or args.recheck) and saved.exists() and mapped.exists()
                     and {t.path for t in targets} <= set(mapped.read_text().split()))
            if reuse:
                test_map = TestMap.load(saved)
            else:
                runner = Runner()  # the map is made in the worktree itself, on the unmutated code
                try:
                    test_map = TestMap.measure(runner, targets)
                finally:
                    runner.close()
            print(f"judging mutants in {args.jobs} shard(s) under {OUT / 'shards'} ...", flush=True)
            runners: list[Runner] = []
            try:
                for k in range(1, args.jobs + 1):
                    runners.append(Runner(make_shard(k)))
                for runner in runners:
                    runner.wait_ready()
                run_all(targets, dbs, runners, test_map, deadline, recheck=args.recheck)
                if not args.recheck and (deadline is None or time.monotonic() < deadline):
                    # Survivors judged by their fastest tests only get every test that executes them.
                    print("rechecking survivors with every covering test ...", flush=True)
                    run_all(targets, dbs, runners, test_map, deadline, recheck=True)
            finally:
                for runner in runners:
                    runner.close()
        for t in targets:
            scores[t].tally(dbs[t])
    elapsed = _minutes(time.monotonic() - started)
    lines = list(report(list(scores.values()), load_equivalents()))
    print("\n" + "\n".join(lines))
    note = ("report only" if args.report else "this pass, rechecked" if args.recheck
            else "this pass, resumed" if args.resume else "coverage map included")
    (OUT / "report.md").write_text(f"Mutation score, {time.strftime('%Y-%m-%d')}, {elapsed} ({note})\n\n"
                                   + "\n".join(lines) + "\n")
    print(f"\n{elapsed} in all; written to .mutation/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
