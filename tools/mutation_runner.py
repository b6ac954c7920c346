"""The test runner behind `make mutation`: a warm pytest process that forks one child per test run.

Runs in the project's .venv, started by tools/mutation.py (which runs in .venv-mutation with
cosmic-ray). Importing numpy, pyarrow, LanceDB, google-genai and the emulator's web stack takes
3-7 s on this machine, longer than most mutants' tests; this process imports them once and forks
a child per run, so a mutant costs only the tests it runs. It never imports `indexflow` or the
tests: each child imports those from disk, so it sees the mutant cosmic-ray has just written.

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout.
    {"args": [pytest args...], "timeout": 30.0, "log": "path"}
        -> {"exit": 0 | 1 | ... | null, "timeout": false, "seconds": 1.2}
    {"args": [...], "timeout": 900, "log": "path", "map": {"sources": [abs paths], "out": "path"}}
        -> the same; the child also writes to `out` which tests execute which lines of `sources`
           ({"lines": {file: {line: [test ids]}}, "durations": {test id: s}, "failed": [test ids]};
           test id "" = at import time)
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import sys
import time
import warnings
from typing import Any

# Third-party modules the tests and indexflow import at module level; each child gets them for free.
PRELOAD = ("numpy", "pyarrow", "pyarrow.compute", "pyarrow.csv", "pyarrow.parquet", "lancedb", "lancedb.expr",
           "google.genai", "google.genai.types", "google.genai.errors", "fastapi", "uvicorn", "httpx", "orjson",
           "pydantic", "pytest", "anyio.pytest_plugin", "coverage")


class _Contexts:
    """A pytest plugin that names the coverage context after the running test (setup to teardown)."""

    def __init__(self, cov: Any) -> None:
        self.cov = cov
        self.durations: dict[str, float] = {}
        self.failed: set[str] = set()

    def pytest_runtest_setup(self, item: Any) -> None:
        self.cov.switch_context(item.nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.add(report.nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.cov.switch_context("")


def _child(request: dict[str, Any]) -> int:
    import pytest

    plan = request.get("map")
    if plan is None:
        return int(pytest.main(request["args"]))
    import coverage

    cov = coverage.Coverage(data_file=None, include=plan["sources"], concurrency=["thread"], config_file=False)
    plugin = _Contexts(cov)
    cov.start()
    try:
        code = int(pytest.main(request["args"], plugins=[plugin]))
    finally:
        cov.stop()
    data = cov.get_data()
    lines = {f: {str(line): sorted(ids) for line, ids in data.contexts_by_lineno(f).items()}
             for f in data.measured_files()}
    with open(plan["out"], "w") as out:
        json.dump({"lines": lines, "durations": plugin.durations, "failed": sorted(plugin.failed)}, out)
    return code


def _descendants(pid: int) -> list[int]:
    """Every live process under pid, from /proc (a server a fixture starts in a session of its own
    leaves the child's process group, and outlives the child if the fixture never tears it down)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    for descendant in _descendants(pid):
        try:
            os.kill(descendant, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own group: the rest of its subprocesses go too
    except ProcessLookupError:
        pass


def run(request: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its own session, output to the log, never back to the parent's loop
        code = 70
        try:
            os.setsid()
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = _child(request)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = started + request["timeout"]
    try:
        while True:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                return {"exit": os.waitstatus_to_exitcode(raw), "timeout": False,
                        "seconds": time.monotonic() - started}
            if time.monotonic() > deadline:
                _kill(pid)
                os.waitpid(pid, 0)
                return {"exit": None, "timeout": True, "seconds": time.monotonic() - started}
            time.sleep(0.01)
    finally:
        _kill(pid)  # whatever the tests left running, and the child itself on Ctrl-C


def main() -> int:
    # SIGTERM unwinds run()'s `finally`, which kills the child's process group: nothing is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # LanceDB warns at every fork that forking is experimental: its runtime is reset in the child,
    # and the only risk is a fork while it is mid-operation. This process never uses it, only imports it.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()  # the preloaded heap is never garbage: pytest's gc.collect() calls in each child skip it
    leaked = [m for m in sys.modules if m == "indexflow" or m.startswith(("indexflow.", "tests."))]
    assert not leaked, f"the runner must not import the code under test: {leaked}"
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
