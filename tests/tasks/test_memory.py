"""tasks.memory: the allocator settings indexflow's own processes apply, each probed in a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
how, db = sys.argv[1:3]
if how != "before-pyarrow":
    import pyarrow as pa
if how in ("tune", "before-pyarrow"):
    from indexflow.tasks.memory import tune_process_memory
    tune_process_memory()
elif how == "library":  # a library call in someone else's process changes nothing process-wide
    from indexflow.tasks.lance_tables import connect
    connect(db)
else:  # the command: the process is indexflow's
    from indexflow.flows.cli import main
    assert main(["index", sys.argv[3], "--db", db, "--json"]) == 0
import pyarrow as pa
print(json.dumps({"pool": pa.default_memory_pool().backend_name,
                  "io": os.environ.get("LANCE_DEFAULT_IO_BUFFER_SIZE"),
                  "batch": os.environ.get("LANCE_DEFAULT_BATCH_SIZE")}))
"""


def probe(tmp_path, how="tune", *extra, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("ARROW_DEFAULT_MEMORY_POOL", "INDEXFLOW_TUNE_MEMORY", "LANCE_DEFAULT_IO_BUFFER_SIZE",
                         "LANCE_DEFAULT_BATCH_SIZE")}
    out = subprocess.run([sys.executable, "-c", PROBE, how, str(tmp_path / "db"), *extra], cwd=REPO, env=base | env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the glibc settings are Linux only")
def test_a_connection_switches_arrow_to_the_system_pool_and_bounds_lance_readahead(tmp_path):
    assert probe(tmp_path) == {"pool": "system", "io": str(16 * 1024 * 1024), "batch": "1024"}


def test_before_pyarrow_loads_the_pool_is_chosen_without_importing_it(tmp_path):
    # The command tunes memory before a first run's first API call, which must not wait for pyarrow.
    assert probe(tmp_path, "before-pyarrow")["pool"] == "system"
    out = subprocess.run([sys.executable, "-c", "import sys; from indexflow.tasks.memory import tune_process_memory; "
                          "tune_process_memory(); print('pyarrow' in sys.modules, 'numpy' in sys.modules)"],
                         cwd=REPO, env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_index_command_applies_them_and_a_library_connection_does_not(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "title": "A", "text": "one small document"}) + "\n")
    env = {"GEMINI_API_KEY": "", "GOOGLE_GEMINI_BASE_URL": ""}  # the in-process emulator
    assert probe(tmp_path, "cli", str(corpus), **env) == {"pool": "system", "io": str(16 * 1024 * 1024),
                                                           "batch": "1024"}
    assert probe(tmp_path, "library") == {"pool": pa_default_pool(), "io": None, "batch": None}


def pa_default_pool() -> str:
    out = subprocess.run([sys.executable, "-c", "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"],
                         env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"},
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def test_settings_the_user_made_win(tmp_path):
    got = probe(tmp_path, ARROW_DEFAULT_MEMORY_POOL="jemalloc", LANCE_DEFAULT_IO_BUFFER_SIZE="1048576")
    assert got == {"pool": "jemalloc", "io": "1048576", "batch": "1024"}


def test_it_can_be_turned_off(tmp_path):
    got = probe(tmp_path, INDEXFLOW_TUNE_MEMORY="0")
    assert got["io"] is None and got["batch"] is None and got["pool"] != "system"


def test_it_applies_once(monkeypatch):
    from indexflow.tasks import memory

    monkeypatch.setattr(memory, "_done", True)
    assert memory.tune_process_memory() == {}
