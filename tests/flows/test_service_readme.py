"""The README's "Run as a service" section, run as written: its commands are read from the README.

The walkthrough runs in a copy of the checkout (so its tables and `prefect deploy`'s recorded
path stay out of the repository), with its own PREFECT_HOME, against `make server` on a free
port: the only change to any command is that port in place of 4200. The environment adds
PREFECT_WORKER_QUERY_SECONDS=1 (the worker polls every second instead of every ten) and a wide
COLUMNS (tables are not wrapped). Every command runs with bash and must exit 0, except the
ones in NOT_RUN; a code block under a heading the test does not know fails it, so README and
reality cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tarfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from indexflow.tasks.settings import DEFAULT_DB_URI, DEFAULT_TABLE
from tests.flows.service_fixtures import REPO, RUN_TIMEOUT, stop, table_ids
from tests.prefect_server import free_port

pytestmark = pytest.mark.slow

README = REPO / "README.md"
README_PORT = "4200"
BACKGROUND = ("make server", "make worker")  # they run until stopped: started, then waited for
NOT_RUN = {"prefect cloud login": "needs a Prefect Cloud account"}
SECRET_VALUE = "indexflow-readme-secret-5Hq8Wd2Lz"
CLOUD_URL = "https://prefect.example.com/api"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Command:
    """One shell command of a README code block, and the `###` heading it sits under."""

    heading: str
    text: str

    @property
    def words(self) -> str:
        """The command without its comment, words separated by one space."""
        return " ".join(shlex.split(self.text, comments=True))


def section(markdown: str, title: str) -> str:
    """The text of a `## ` section, up to the next `## ` heading."""
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end >= 0 else None]


def readme_commands(markdown: str) -> list[Command]:
    """Every command of the bash blocks in "Run as a service"; continued lines (`\\`) stay one command."""
    commands: list[Command] = []
    heading = ""
    fence = re.compile(r"^(?P<indent> *)```bash\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
    text = section(markdown, "Run as a service")
    pos = 0
    for block in fence.finditer(text):
        headings = re.findall(r"^### (.+)$", text[pos:block.start()], re.M)
        heading = headings[-1] if headings else heading
        pos = block.end()
        pending = ""
        for line in textwrap.dedent(block["body"]).splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            if not line.rstrip().endswith("\\"):
                commands.append(Command(heading, pending.strip()))
                pending = ""
    return commands


def http_json(url: str, body: dict | None = None) -> Any:
    """GET (or POST `body` to) a Prefect API URL; the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until(what: str, probe: Callable[[], Any], proc: subprocess.Popen, log: Path, timeout: float) -> Any:
    """Poll `probe` until it returns something truthy; fail early if `proc` exits, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


def copy_checkout(dest: Path) -> Path:
    """The repository's files (tracked, or untracked and not ignored) in `dest`, sharing its .venv."""
    stamp = REPO / ".venv" / ".installed"
    if not stamp.exists() or any(stamp.stat().st_mtime < (REPO / f).stat().st_mtime
                                 for f in ("pyproject.toml", "constraints.txt")):
        pytest.fail(".venv is missing or older than pyproject.toml: run `make install` first")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    archive = dest.parent / "checkout.tar"
    with tarfile.open(archive, "w") as tar:  # keeps mtimes, so make sees .venv as up to date
        for name in filter(None, files):
            if (REPO / name).exists():
                tar.add(REPO / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def fresh_terminal(home: Path) -> dict[str, str]:
    """A new shell's environment: nothing of Prefect configured, no Gemini key, PREFECT_HOME = `home`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "GEMINI_", "GOOGLE_GEMINI_")) and k not in ("TABLE", "DB", "CORPUS")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1", COLUMNS="200")
    return env


class Walkthrough:
    """Runs README commands in order in one checkout, like a person with a few terminals open."""

    def __init__(self, checkout: Path, env: dict[str, str], port: int, logs: Path) -> None:
        self.checkout, self.env, self.port, self.logs = checkout, env, port, logs
        self.background: list[subprocess.Popen] = []
        self.outputs: dict[str, str] = {}
        self.ran: list[str] = []

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def run(self, command: Command) -> None:
        """Run one README command (port and schedule id filled in); long-running ones in the background."""
        text = command.text.replace(README_PORT, str(self.port))
        if "<schedule-id>" in text:
            text = text.replace("<schedule-id>", self.schedule_id())
        words = Command(command.heading, text).words
        for skip, reason in NOT_RUN.items():
            if words.startswith((skip, f".venv/bin/{skip}")):
                print(f"not run ({reason}): {words}")
                return
        started = time.monotonic()
        self.run_one(text)
        self.ran.append(words)
        print(f"{time.monotonic() - started:6.1f} s  {words}")  # shown by pytest when the test fails

    def run_one(self, text: str) -> None:
        """`export` sets the environment of later commands; `make server`/`make worker` keep running."""
        if text.startswith("export "):
            name, _, value = shlex.split(text)[1].partition("=")
            self.env[name] = value
        elif text.startswith(BACKGROUND):
            self.start(text)
        else:
            self.outputs[text] = self.shell(text)

    def shell(self, text: str, timeout: float = 300) -> str:
        """Run one command with bash in the checkout; its output, failing the test on a non-zero exit."""
        result = subprocess.run(["bash", "-c", text], cwd=self.checkout, env=self.env, input=SECRET_VALUE + "\n",
                                capture_output=True, text=True, timeout=timeout, start_new_session=True)
        if result.returncode != 0:
            pytest.fail(f"README command failed ({result.returncode}): {text}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout + result.stderr

    def start(self, text: str) -> None:
        """Start a long-running command (own process group) and wait until it serves."""
        log = self.logs / f"{text.split()[1]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", text], cwd=self.checkout, env=dict(self.env), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append(proc)
        if text.startswith("make server"):
            wait_until("server healthy", lambda: http_json(f"{self.api}/health"), proc, log, timeout=180)
        else:
            wait_until("worker online", lambda: http_json(f"{self.api}/work_pools/indexflow-process/workers/filter", {}),
                       proc, log, timeout=120)

    def schedule_id(self) -> str:
        listing = next(out for cmd, out in self.outputs.items() if "schedule ls index-corpus/nightly" in cmd)
        ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listing)
        assert len(ids) == 1, f"expected one schedule id in:\n{listing}"
        return ids[0]

    def stop(self) -> None:
        """The worker before the server: a worker whose server is gone ignores SIGTERM."""
        for proc in reversed(self.background):
            stop(proc)


def schedules(api: str) -> list[dict]:
    deployment = http_json(f"{api}/deployments/name/index-corpus/nightly")
    return http_json(f"{api}/deployments/{deployment['id']}/schedules")


def flow_runs(api: str) -> dict[str, dict]:
    """Every flow run on the server by name."""
    return {run["name"]: run for run in http_json(f"{api}/flow_runs/filter", {})}


def final_run(api: str, flow_run_id: str) -> dict | None:
    """The flow run once it is in a final state, else None."""
    run = http_json(f"{api}/flow_runs/{flow_run_id}")
    return run if run["state"] and run["state"]["type"] in FINAL_STATES else None


def test_readme_commands_are_known_to_this_test():
    commands = readme_commands(README.read_text())
    headings = {c.heading for c in commands}
    assert headings == {"Local server, step by step", "Pause, resume or change the schedule",
                        "The Gemini API key", "Prefect Cloud or a remote server"}
    texts = [c.words for c in commands]
    for expected in ("make server PREFECT_PORT=4200", "make pool", "make deploy", "make worker",
                     "make run-deployment", "export PREFECT_API_URL=http://127.0.0.1:4200/api"):
        assert expected in texts
    assert any("--param tier=1 --watch" in t for t in texts)


def test_the_readme_service_walkthrough_runs_as_written(tmp_path):
    commands = readme_commands(README.read_text())
    checkout = copy_checkout(tmp_path / "checkout")
    port = free_port()
    walk = Walkthrough(checkout, fresh_terminal(tmp_path / "prefect-home"), port, tmp_path)
    api = walk.api
    try:
        local = [c for c in commands if c.heading == "Local server, step by step"]
        for command in local:
            walk.run(command)
            if command.text.startswith("make server"):
                # the UI asks /ui-settings where its API is: this server's port, not 4200
                assert http_json(f"http://127.0.0.1:{port}/ui-settings")["api_url"] == api
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                    assert page.status == 200 and b"<html" in page.read(2000).lower()
        assert walk.ran[0] == f"make server PREFECT_PORT={port}" and "make worker" in walk.ran

        runs = flow_runs(api)
        for name in ("index-corpus-online", "index-functions-online"):  # both watched to the end
            assert runs[name]["state"]["type"] == "COMPLETED", runs[name]["state"]
        assert runs["index-functions-online"]["parameters"]["tier"] == 1  # a bare number, as the CLI sends it
        backfill_output = next(out for cmd, out in walk.outputs.items() if "index-corpus/backfill" in cmd)
        backfill_id = re.search(r"UUID: ([0-9a-f-]{36})", backfill_output)[1]  # started without --watch

        checks = {
            "schedule pause": lambda: [s["active"] for s in schedules(api)] == [False],
            "schedule resume": lambda: [s["active"] for s in schedules(api)] == [True],
            "work-queue pause": lambda: http_json(f"{api}/work_pools/indexflow-process/queues/scheduled")["is_paused"],
            "work-queue resume": lambda: not http_json(f"{api}/work_pools/indexflow-process/queues/scheduled")["is_paused"],
            "schedule create": lambda: [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in schedules(api)]
            == [("30 3 * * 1-5", "Europe/Berlin")],
        }
        for command in (c for c in commands if c.heading == "Pause, resume or change the schedule"):
            walk.run(command)
            for needle, check in checks.items():
                if needle in command.text:
                    assert check(), f"after `{command.text}`"
        assert all(any(needle in ran for ran in walk.ran) for needle in checks)

        # the backfill ran meanwhile; it ends before the Secret block exists (its run would use that key)
        backfill = wait_until("backfill run final", lambda: final_run(api, backfill_id),
                              walk.background[-1], tmp_path / "worker.log", timeout=RUN_TIMEOUT)
        assert backfill["state"]["type"] == "COMPLETED" and backfill["name"] == "index-exceptions-batch", backfill
        db = checkout / DEFAULT_DB_URI
        assert len(table_ids(db, DEFAULT_TABLE)) > 400
        assert len(table_ids(db, "functions")) > 0 and len(table_ids(db, "exceptions")) > 0

        for command in (c for c in commands if c.heading == "The Gemini API key"):
            walk.run(command)
        secret = http_json(f"{api}/block_documents/filter", {"include_secrets": True})
        assert [b["data"]["value"] for b in secret if b["name"] == "gemini-api-key"] == [SECRET_VALUE]
    finally:
        walk.stop()

    # Prefect Cloud or a remote server: another machine (fresh terminal and profile), then `make pool deploy`
    remote = Walkthrough(checkout, fresh_terminal(tmp_path / "remote-home"), port, tmp_path)
    cloud = [c for c in commands if c.heading == "Prefect Cloud or a remote server"]
    for command in cloud:
        remote.run(command)
    assert any("config set PREFECT_API_URL" in ran for ran in remote.ran)
    dry = remote.shell("make -n pool deploy worker")
    assert dry.count(f"PREFECT_API_URL={CLOUD_URL} ") == 3, dry


def make_dry_run(target: str, env: dict[str, str], *args: str) -> str:
    """`make -n <target> [VAR=value ...]` in the repository: the commands make would run."""
    result = subprocess.run(["make", "-n", target, *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_targets_use_the_configured_api_else_the_local_server(tmp_path):
    env = fresh_terminal(tmp_path / "home")
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/prefect work-pool create" in make_dry_run("pool", env)
    assert "PREFECT_API_URL=http://127.0.0.1:4251/api .venv/bin/prefect worker start" in make_dry_run(
        "worker", env, "PREFECT_PORT=4251")

    exported = dict(env, PREFECT_API_URL="https://exported.example.com/api")
    assert "PREFECT_API_URL=https://exported.example.com/api .venv/bin/prefect --no-prompt deploy --all" in \
        make_dry_run("deploy", exported)
    # PREFECT_PORT on the command line is the more explicit wish: the local server on that port
    assert "PREFECT_API_URL=http://127.0.0.1:4251/api" in make_dry_run("deploy", exported, "PREFECT_PORT=4251")

    subprocess.run([str(REPO / ".venv/bin/prefect"), "config", "set", f"PREFECT_API_URL={CLOUD_URL}"],
                   env=env, check=True, capture_output=True, timeout=120)
    assert f"PREFECT_API_URL={CLOUD_URL} .venv/bin/prefect deployment run" in make_dry_run("run-deployment", env)

    server = make_dry_run("server", exported, "PREFECT_PORT=4251")
    assert "PREFECT_SERVER_UI_API_URL=http://127.0.0.1:4251/api" in server and "--port 4251" in server


def test_one_default_table_and_database_everywhere():
    import inspect

    from indexflow.flows.index_corpus import index_corpus

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        assert (deployment["parameters"]["table"], deployment["parameters"]["db_uri"]) == (DEFAULT_TABLE, DEFAULT_DB_URI)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"^TABLE\s*\?=\s*{DEFAULT_TABLE}$", makefile, re.M)
    assert re.search(rf"^DB\s*\?=\s*{re.escape(DEFAULT_DB_URI)}$", makefile, re.M)
    defaults = inspect.signature(index_corpus.fn).parameters
    assert (defaults["table"].default, defaults["db_uri"].default) == (DEFAULT_TABLE, DEFAULT_DB_URI)
    service = section(README.read_text(), "Run as a service")
    assert f"`table={DEFAULT_TABLE}`" in service and f"`db_uri={DEFAULT_DB_URI}`" in service


def test_no_dangling_links_in_docs_config_or_docstrings():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    link = re.compile(r"\]\(([^)#\s]+)")
    # a document path with a directory in it: docs/service.md, ../shared/reference/x.md
    mention = re.compile(r"(?<![\w/.:-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)+\.(?:md|yaml|yml|py|toml))\b")
    dangling = []
    for name in files:
        path = REPO / name
        if not path.exists() or name.startswith(("tests/", "data/")):
            continue
        if not (name.endswith((".md", ".py", ".yaml", ".toml")) or name == "Makefile"):
            continue
        text = path.read_text(errors="replace")
        targets = [t for t in link.findall(text) if not re.match(r"[a-z]+://", t)] if name.endswith(".md") else []
        for target in targets + mention.findall(text):
            resolved = [(REPO / target).resolve(), (path.parent / target).resolve()]
            inside = [r for r in resolved if r.is_relative_to(REPO.resolve())]
            if not any(r.exists() for r in inside) and not _generated(target):
                dangling.append(f"{name}: {target}")
    assert not dangling, dangling


def _generated(target: str) -> bool:
    """A path git ignores (e.g. `.mutation/report.md`) is an output a command writes, not a link to fix."""
    return subprocess.run(["git", "check-ignore", "-q", target], cwd=REPO).returncode == 0
