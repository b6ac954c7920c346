"""Whole processes as the benchmarks run them: the emulator in its own process, the environment
every measured process gets, and one run's wall time, peak RSS and first API call.

Shared by `bench_process.py` and `bench_kill.py`. Stdlib only: the bench process's own peak RSS
is the floor of every child's figure (see `measure`).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# The console script beside this interpreter: the one this checkout's venv installs.
INDEXFLOW = str(Path(sys.executable).with_name("indexflow"))
API_KEY = "bench-key"


class RunFailed(RuntimeError):
    """A measured process exited non-zero or made the wrong number of API calls."""


@dataclass
class Run:
    """One whole process: wall seconds from Popen to reaped, peak RSS, exit code, what it printed."""

    wall_s: float
    rss_mb: float
    exit_code: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    first_call_s: float | None = None
    summary: dict | None = field(default=None, repr=False)

    def figures(self) -> dict:
        """What the JSON report keeps of this run."""
        out = {"wall_s": round(self.wall_s, 4), "rss_mb": round(self.rss_mb, 1), "exit_code": self.exit_code}
        if self.first_call_s is not None:
            out["first_call_s"] = round(self.first_call_s, 4)
        if self.summary is not None:
            out |= {k: self.summary.get(k) for k in ("status", "api_calls", "chunks_embedded")}
        return out


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_calls(url: str) -> int:
    """The emulator's `calls.received` counter (online calls arrived, before its latency), stdlib only."""
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=5) as response:
        return int(json.loads(response.read()).get("calls.received", 0))


def start_emulator(workdir: Path, base_ms: float, per_text_ms: float) -> tuple[subprocess.Popen, str]:
    """`indexflow emulator` in its own process (not sharing a GIL with anything measured), once it answers."""
    port = free_port()
    log_path = workdir / "emulator.log"
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([INDEXFLOW, "emulator", "--port", str(port), "--api-key", API_KEY,
                                 "--latency-base-ms", str(base_ms), "--latency-per-text-ms", str(per_text_ms),
                                 "--log-level", "warning"], stdout=log, stderr=log, cwd=workdir, env=child_env(workdir))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # a loaded 2-core machine takes its time importing FastAPI
    while True:
        try:
            emulator_calls(url)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RunFailed(f"the emulator did not start:\n{log_path.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)


def child_env(workdir: Path, url: str | None = None) -> dict[str, str]:
    """The environment of every measured process: no Prefect API anywhere, so the CLI runs in process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home = workdir / "prefect-home"  # no profiles.toml: no profile can set PREFECT_API_URL
    home.mkdir(exist_ok=True)
    env["PREFECT_HOME"] = str(home)
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_GEMINI_BASE_URL", None)
    if url is not None:
        env |= {"GEMINI_API_KEY": API_KEY, "GOOGLE_GEMINI_BASE_URL": url}
    return env


def measure(argv: list[str], env: dict[str, str], cwd: Path, poll_url: str | None = None) -> Run:
    """Run argv to the end; wall time and the child's own peak RSS (os.wait4, not RUSAGE_CHILDREN's max).

    Linux hands the exec'ing child the peak RSS of the memory it replaces, here this process's
    (subprocess uses vfork), so a child's figure is never below this process's own peak: kept small.
    """
    seen: list[float] = []
    done = threading.Event()

    def poll(baseline: int) -> None:
        # The counter moves when a call arrives, before the emulator's latency for it.
        while not done.is_set():
            if emulator_calls(poll_url) > baseline:
                seen.append(time.perf_counter())
                return
            time.sleep(0.005)

    with tempfile.TemporaryFile(dir=cwd) as out, tempfile.TemporaryFile(dir=cwd) as err:
        poller = None
        if poll_url is not None:
            # started right before Popen, its baseline read first: the poll never delays the start
            poller = threading.Thread(target=poll, args=(emulator_calls(poll_url),), daemon=True)
            poller.start()
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        done.set()
        if poller is not None:
            poller.join(timeout=5)
        out.seek(0)
        err.seek(0)
        run = Run(wall, usage.ru_maxrss / 1024, proc.returncode, out.read().decode(errors="replace"),
                  err.read().decode(errors="replace"))
    if seen:
        run.first_call_s = seen[0] - started
    return run


def own_peak_rss_mb() -> float:
    """This process's peak RSS, which every child's figure includes (see measure): their resolution.

    VmHWM, not getrusage: ru_maxrss also carries whatever started this process (pytest, make).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
