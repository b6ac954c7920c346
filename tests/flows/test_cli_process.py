"""Whole `indexflow` processes as a user runs them without a Prefect API: no temporary server,
imports on demand, signals, one-line errors, what reaches the terminal. Real console script,
real emulator (the session's, over loopback), real LanceDB tables; no PREFECT_API_URL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from indexflow.flows.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from indexflow.tasks.writer_lock import table_writer
from tests.flows.service_fixtures import files_holding, table_ids, write_corpus

INDEXFLOW = str(Path(sys.executable).with_name("indexflow"))
# Generous on purpose: these bound a hang, they are not the timings under test.
STARTUP_SECONDS = 120


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no Prefect API: an empty PREFECT_HOME, no PREFECT_API_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_GEMINI_BASE_URL", None)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.update(extra)
    return env


class Run:
    """An `indexflow` process in its own session, its stderr read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen([INDEXFLOW, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, *texts: str, timeout: float = STARTUP_SECONDS) -> str:
        """The first stderr line holding every one of `texts`, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if all(text in line for text in texts):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"never printed {texts!r}; stderr so far:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = STARTUP_SECONDS) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out, "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def runs():
    started: list[Run] = []
    yield lambda argv, env, cwd: started.append(Run(argv, env, cwd)) or started[-1]
    for run in started:
        run.kill()


def key_env(tmp_path, emu, **extra):
    return local_env(tmp_path, GEMINI_API_KEY=emu.api_key, GOOGLE_GEMINI_BASE_URL=emu.base_url, **extra)


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)])
def test_a_signal_during_a_throttled_run_stops_within_3_s_keeps_what_was_embedded_and_the_next_run_resumes(
        emu, tmp_path, runs, sig, code):
    corpus = write_corpus(tmp_path / "c.jsonl", 250)
    db = tmp_path / "db"
    env = key_env(tmp_path, emu)
    # 100 texts a minute: the first call goes at once, the second waits for the next minute.
    run = runs(["index", str(corpus), "--db", str(db), "--table", "kb", "--rpm", "100", "--progress-seconds",
                "0.2"], env, tmp_path)
    # The first call settled; the limiter holds the second for the next minute.
    run.wait_for("embedded 100 of 250 chunks", "waiting for quota: requests/min, next slot in")
    sent = time.monotonic()
    os.killpg(run.proc.pid, sig)
    exit_code, _, err = run.finish()
    stopped_after = time.monotonic() - sent
    assert exit_code == code, err
    assert stopped_after < 3.0, f"took {stopped_after:.1f} s to stop"
    assert "stopped: kept 100 chunks; run again to resume" in err.splitlines()
    assert "Traceback" not in err
    assert sorted(table_ids(db, "kb")) == [f"doc-{i:03d}#0" for i in range(100)]
    assert emu.admin.stats()["calls"] == 1

    emu.admin.reset()
    again = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "kb", "--json",
                            "--tier", "unlimited"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=STARTUP_SECONDS)
    assert again.returncode == EXIT_OK, again.stderr
    summary = json.loads(again.stdout)
    assert summary["chunks_embedded"] == 150 and summary["plan"]["chunks_unchanged"] == 100
    ids = table_ids(db, "kb")
    assert len(ids) == len(set(ids)) == 250


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)])
def test_a_signal_stops_a_tracked_run_the_same_way_and_its_flow_run_ends_cancelled(
        prefect_api, emu, tmp_path, runs, sig, code):
    """With PREFECT_API_URL set the run is a flow run on that server: the signal still commits what
    was embedded (without waiting for its group to be due) and the flow run says what it kept."""
    corpus = write_corpus(tmp_path / "c.jsonl", 250)
    db = tmp_path / "db"
    env = key_env(tmp_path, emu, PREFECT_API_URL=prefect_api)
    run = runs(["index", str(corpus), "--db", str(db), "--table", "kb", "--rpm", "100"], env, tmp_path)
    run.wait_for("Plan: 250 chunk(s) to embed")
    deadline = time.monotonic() + STARTUP_SECONDS
    while emu.admin.stats().get("texts", 0) < 100:  # the first call answered; the second waits a minute
        assert time.monotonic() < deadline, "the first call never came"
        time.sleep(0.02)
    sent = time.monotonic()
    os.killpg(run.proc.pid, sig)
    exit_code, _, err = run.finish()
    stopped_after = time.monotonic() - sent
    assert exit_code == code, err
    # Bounds a hang, under a worker's 30 s grace: a tracked run also reports its end to the server
    # (state, summary artifacts, logs), which took 3.0 s on a loaded machine.
    assert stopped_after < 10.0, f"took {stopped_after:.1f} s to stop"
    assert "stopped: kept 100 chunks; run again to resume" in err.splitlines(), err
    assert "Traceback" not in err
    assert sorted(table_ids(db, "kb")) == [f"doc-{i:03d}#0" for i in range(100)]
    assert emu.admin.stats()["calls"] == 1

    async def last_run():
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        async with get_client() as client:
            return (await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1))[0]

    flow_run = asyncio.run(last_run())
    assert flow_run.name == "index-kb-online" and flow_run.state.type.value == "CANCELLED", flow_run.state
    assert flow_run.state.message == f"stopped by {sig.name}: kept 100 chunks; run again to resume"


def test_a_second_ctrl_c_exits_at_once_without_a_traceback(emu, tmp_path, runs):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    emu.admin.set_faults(script=[{"kind": "hang"}])  # the call on the wire never answers
    run = runs(["index", str(corpus), "--db", str(tmp_path / "db"), "--table", "kb", "--concurrency", "1"],
               key_env(tmp_path, emu), tmp_path)
    run.wait_for("Plan: 30 chunk(s) to embed")
    deadline = time.monotonic() + STARTUP_SECONDS
    while emu.emulator.concurrency.in_flight < 1:  # the hanging call is in the emulator
        assert time.monotonic() < deadline, "the call never reached the emulator"
        time.sleep(0.02)
    os.killpg(run.proc.pid, signal.SIGINT)
    run.wait_for("indexflow: stopping")
    sent = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    exit_code, _, err = run.finish()
    assert exit_code == EXIT_SIGINT, err
    assert time.monotonic() - sent < 1.0
    assert "indexflow: interrupted again: exiting now; committed rows are kept" in err.splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def session_processes(sid: int) -> list[int]:
    """Every live process of session `sid` (a killed run's children would stay in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
                found.append(int(entry.name))
    return found


def test_sigkill_leaves_no_process_of_the_run_behind(tmp_path, runs):
    corpus = write_corpus(tmp_path / "c.jsonl", 250)
    # The in-process emulator, throttled so the run is alive and mid-flight when killed.
    run = runs(["index", str(corpus), "--db", str(tmp_path / "db"), "--rpm", "100", "--progress-seconds", "0.2"],
               local_env(tmp_path), tmp_path)
    run.wait_for("waiting for quota")
    sid = run.proc.pid  # start_new_session: the run leads its own session
    assert session_processes(sid) == [run.proc.pid]  # no server or helper process was started
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait(30)
    assert session_processes(sid) == []


KILL_CORPUS = 1200


def kill_loop(emu, tmp_path, *, table: str, kills: int, seed: int, spill: bool = True) -> dict:
    """`indexflow index` SIGKILLed `kills` times at seeded moments after its first answers, then run
    to completion; returns the emulator's texts over all attempts and the table's ids and vectors."""
    import random

    corpus = write_corpus(tmp_path / "kill.jsonl", KILL_CORPUS)
    db = tmp_path / "db"
    argv = [INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", table, "--batch-size", "20",
            "--concurrency", "2", "--tier", "unlimited"]
    env = key_env(tmp_path, emu)
    rng = random.Random(seed)
    emu.admin.set_config(latency_base_ms=250)  # 160 texts/s: an attempt is seconds long
    start = emu.admin.stats().get("texts", 0)
    for _ in range(kills):
        before = emu.admin.stats().get("texts", 0)
        proc = subprocess.Popen(argv + ([] if spill else ["--no-spill"]), env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while emu.admin.stats().get("texts", 0) == before:  # this attempt's first answer came back
            assert proc.poll() is None and time.monotonic() < deadline, "the attempt never called"
            time.sleep(0.005)
        # Right after an answer, or up to 2 s later: inside the first 5 s write group, no commit yet.
        time.sleep(rng.choice([0.0, rng.uniform(0.2, 2.0)]))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    done = subprocess.run(argv + ([] if spill else ["--no-spill"]), env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=STARTUP_SECONDS)
    assert done.returncode == EXIT_OK, done.stderr
    import lancedb

    rows = lancedb.connect(str(db)).open_table(table).to_arrow()
    return {"texts": emu.admin.stats()["texts"] - start, "ids": rows.column("id").to_pylist(),
            "vectors": dict(zip(rows.column("id").to_pylist(), rows.column("vector").to_pylist()))}


def test_sigkill_at_seeded_moments_re_pays_at_most_the_calls_in_flight(emu, tmp_path):
    kills, in_flight = 6, 2 * 20  # concurrency x batch size
    killed = kill_loop(emu, tmp_path, table="kb", kills=kills, seed=20261201)
    assert len(killed["ids"]) == len(set(killed["ids"])) == KILL_CORPUS  # nothing lost, nothing twice
    re_paid = killed["texts"] - KILL_CORPUS
    assert re_paid <= kills * in_flight, f"re-paid {re_paid} texts over {kills} kills"

    emu.admin.reset()
    clean = subprocess.run([INDEXFLOW, "index", str(tmp_path / "kill.jsonl"), "--db", str(tmp_path / "db"),
                            "--table", "clean", "--tier", "unlimited"], env=key_env(tmp_path, emu), cwd=tmp_path,
                           capture_output=True, text=True, timeout=STARTUP_SECONDS)
    assert clean.returncode == EXIT_OK, clean.stderr
    import lancedb

    rows = lancedb.connect(str(tmp_path / "db")).open_table("clean").to_arrow()
    expected = dict(zip(rows.column("id").to_pylist(), rows.column("vector").to_pylist()))
    assert killed["vectors"] == expected  # every vector exactly what an uninterrupted run wrote


# -- errors -------------------------------------------------------------------------------------


def test_an_unwritable_db_is_one_line_exit_2_and_creates_nothing(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    proc = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(tmp_path / "afile" / "db")],
                          env=local_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=STARTUP_SECONDS)
    assert proc.returncode == EXIT_CONFIG
    errors = [line for line in proc.stderr.splitlines() if line.startswith("indexflow:")]
    assert errors == [f"indexflow: cannot write the database '{tmp_path / 'afile' / 'db'}': Not a directory "
                      f"({tmp_path / 'afile' / 'db' / '.indexflow-locks'}); choose a --db directory you can "
                      "create and write"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "afile").read_text() == "not a directory"

    debug = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(tmp_path / "afile" / "db"), "--debug"],
                           env=local_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                           timeout=STARTUP_SECONDS)
    assert debug.returncode != EXIT_OK
    assert "Traceback (most recent call last):" in debug.stderr
    assert "indexflow.tasks.errors.ConfigError: cannot write the database" in debug.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_is_one_line_that_promises_no_retry_and_keeps_the_table(emu, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    db = tmp_path / "db"
    env = key_env(tmp_path, emu)
    first = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "kb"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=STARTUP_SECONDS)
    assert first.returncode == EXIT_OK, first.stderr
    write_corpus(tmp_path / "c.jsonl", 40)  # 20 more to embed
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "kb"],
                          env=env | {"GOOGLE_GEMINI_BASE_URL": url}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=STARTUP_SECONDS)
    assert proc.returncode == EXIT_FAILED
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"indexflow: cannot reach {url} after 3 attempt(s): cannot connect"), proc.stderr
    assert last.endswith("check the URL (GOOGLE_GEMINI_BASE_URL) and the network, then run again")
    assert "retried" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(table_ids(db, "kb")) == [f"doc-{i:03d}#0" for i in range(20)]


def test_a_server_that_quotes_the_key_sees_it_repeated_nowhere(emu, tmp_path):
    """A gateway's 403 quotes the caller's key ('emulator-key': no pattern would recognise it): it is
    hidden by value, on stderr, in --json, and in every file of the table."""
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    db = tmp_path / "db"
    env = local_env(tmp_path, GEMINI_API_KEY=emu.api_key, GOOGLE_GEMINI_BASE_URL=emu.base_url)
    first = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "kb", "--json",
                            "--batch-size", "10"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=STARTUP_SECONDS)
    assert first.returncode == EXIT_OK, first.stderr
    write_corpus(tmp_path / "c.jsonl", 30)
    emu.admin.set_faults(script=[{"kind": "quote_key", "count": 1}])
    proc = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(db), "--table", "kb", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=STARTUP_SECONDS)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert emu.admin.stats()["faults.quote_key"] == 1
    last = proc.stderr.splitlines()[-1]
    # The server's words arrive, its copy of the key does not.
    assert "refused the API key (403 PERMISSION_DENIED: API key '***' is not authorized" in last, proc.stderr
    secret = emu.api_key
    for text in (proc.stdout, proc.stderr):
        assert secret not in text
    assert files_holding(db, secret) == [] and files_holding(tmp_path / "prefect-home", secret) == []
    assert sorted(table_ids(db, "kb")) == [f"doc-{i:03d}#0" for i in range(20)]


def test_a_bad_parameter_is_rejected_before_anything_heavy_is_imported(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    probe = ("import sys; from indexflow.flows.cli import main; code = main(sys.argv[1:]); "
             "heavy = sorted(m for m in ('prefect', 'lancedb', 'google.genai', 'pyarrow', 'uvicorn') "
             "if m in sys.modules); print(code, heavy, file=sys.stderr)")
    cases = {
        ("index", str(corpus), "--dimensions", "5000"): (EXIT_CONFIG, "[]"),
        ("--help",): (EXIT_OK, "[]"),
        ("index", "--help"): (EXIT_OK, "[]"),
        ("plan", str(corpus), "--db", str(tmp_path / "none")): (EXIT_OK, "['lancedb', 'pyarrow']"),
    }
    for argv, (code, heavy) in cases.items():
        proc = subprocess.run([sys.executable, "-c", probe, *argv], env=local_env(tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=STARTUP_SECONDS)
        assert proc.stderr.splitlines()[-1] == f"{code} {heavy}", (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad = subprocess.run([INDEXFLOW, "index", str(corpus), "--dimensions", "5000"], env=local_env(tmp_path),
                         cwd=tmp_path, capture_output=True, text=True, timeout=STARTUP_SECONDS)
    assert bad.returncode == EXIT_CONFIG
    assert bad.stderr.splitlines() == [
        "indexflow: invalid parameters: dimensions: Input should be less than or equal to 3072"]


def test_an_index_run_without_a_prefect_api_never_imports_prefect_nor_starts_a_server(emu, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    probe = ("import sys; from indexflow.flows.cli import main; code = main(sys.argv[1:]); "
             "print(code, 'prefect' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, "index", str(corpus), "--db", str(tmp_path / "db"),
                           "--json"], env=key_env(tmp_path, emu), cwd=tmp_path, capture_output=True, text=True,
                          timeout=STARTUP_SECONDS)
    assert proc.stderr.splitlines()[-1] == "0 False", proc.stderr
    assert json.loads(proc.stdout)["chunks_embedded"] == 5
    assert not (tmp_path / "prefect-home").exists()  # no temporary server, no Prefect database


# -- what reaches the terminal --------------------------------------------------------------------


def test_waiting_for_another_writer_reaches_the_terminal_then_the_run_completes(emu, tmp_path, runs):
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    db = tmp_path / "db"
    release = threading.Event()
    held = threading.Event()

    def hold_the_table() -> None:
        async def hold() -> None:
            async with table_writer(str(db), "kb"):
                held.set()
                await asyncio.to_thread(release.wait, STARTUP_SECONDS)
        asyncio.run(hold())

    holder = threading.Thread(target=hold_the_table, daemon=True)
    holder.start()
    assert held.wait(30)
    run = runs(["index", str(corpus), "--db", str(db), "--table", "kb", "--json"], key_env(tmp_path, emu), tmp_path)
    line = run.wait_for("is being written by another run", "waiting")
    assert "'kb'" in line
    assert run.proc.poll() is None and not (db / "kb.lance").exists()  # waiting, before planning
    release.set()
    code, out, err = run.finish()
    assert code == EXIT_OK, err
    assert json.loads(out)["chunks_embedded"] == 5


def test_a_run_prints_its_plan_and_limits_and_off_a_terminal_progress_lines(emu, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    proc = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(tmp_path / "db"), "--tier", "1"],
                          env=key_env(tmp_path, emu), cwd=tmp_path, capture_output=True, text=True,
                          timeout=STARTUP_SECONDS)
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("Plan: 12 chunk(s) to embed (") and line.endswith("0 unchanged; route: online")
               for line in lines), proc.stderr
    assert "Limits: rpm 3000 (tier 1), tpm 1000000 (tier 1), rpd none (tier 1), rpm counts texts (tier 1)" \
        in lines, proc.stderr
    # A first run counts its plan while it embeds: the last progress line may come before the
    # plan line, and then knows no total yet.
    progress = [line for line in lines if line.startswith("embedded ")]
    assert progress and progress[-1].split(" chunk")[0] in ("embedded 12 of 12", "embedded 12"), proc.stderr
    assert lines[-1].startswith("Finalized corpus: 12 rows")

    again = subprocess.run([INDEXFLOW, "index", str(corpus), "--db", str(tmp_path / "db"), "--tier", "1"],
                           env=key_env(tmp_path, emu), cwd=tmp_path, capture_output=True, text=True,
                           timeout=STARTUP_SECONDS)
    assert again.returncode == EXIT_OK, again.stderr
    lines = again.stderr.splitlines()
    assert "Plan: 0 chunk(s) to embed (0 tokens; ~$0.0000 online, ~$0.0000 batch), 12 unchanged; route: online" \
        in lines, again.stderr
    assert not any(line.startswith(("embedded ", "Finalized")) for line in lines)  # nothing to do, nothing done
