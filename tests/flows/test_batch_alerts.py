"""Batch success-rate alerts on the session's real Prefect server, through a real Automation.

The README's commands (read from its "Alert on a low batch success rate" block, with only the
server's port and the webhook's URL swapped for the test's) save the webhook block and create the
automation; a plain process then emits alerts and exits at once, and a local HTTP receiver must
get the notification. The server runs its reactive triggers and actions services (pinned on in
tests/prefect_server.py): an event reaches them as it arrives, no loop interval; on SQLite a new
automation is live as soon as it is committed; the event persister (what `read_events` reads)
flushes every second here (default 5 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from indexflow.tasks.batch.alerts import EVENT, RESOURCE_PREFIX, aemit, check
from tests.flows.service_fixtures import REPO, prefect_cli, python_env
from tests.prefect_server import free_port

pytestmark = pytest.mark.slow

T = TypeVar("T")
HEADING = "### Alert on a low batch success rate"
README_API = "http://127.0.0.1:4200/api"
README_HOOK = "https://hooks.example.com/indexflow"
AUTOMATION = "batch-success-rate-low"
BLOCK = "indexflow-alerts"
DEADLINE = 20.0
JOB_KEY = "indexflow:corpus:run-7:part-1"


@dataclass
class Receiver:
    """A local webhook: every POST body it was sent."""

    url: str
    bodies: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, needle: str, timeout: float = DEADLINE) -> str:
        """The first body that holds `needle`; fails the test after `timeout` s."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: any(needle in b for b in self.bodies), timeout):
                pytest.fail(f"no notification holding {needle!r} within {timeout}s; got {self.bodies}")
            return next(b for b in self.bodies if needle in b)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """An HTTP server on a free loopback port, in a thread, that records what it is POSTed."""
    bodies: list[str] = []
    arrived = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            with arrived:
                bodies.append(body)
                arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet: pytest shows what the test asserts
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_port}/hook", bodies, arrived)
    finally:
        server.shutdown()
        server.server_close()


def readme_alert_commands() -> str:
    """The bash block under HEADING in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(f"\n{HEADING}\n"):]
    return re.search(r"^```bash\n(.*?)^```$", section, re.M | re.S).group(1)


def until(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    """Poll `probe` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.2)
    return result


def events(job_name: str | None = None) -> list:
    """The server's stored EVENT events (of `job_name`'s resource when given)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    resource = EventResourceFilter(id=[RESOURCE_PREFIX + job_name]) if job_name else None
    with get_client(sync_client=True) as client:
        return client.read_events(filter=EventFilter(event=EventNameFilter(name=[EVENT]), resource=resource),
                                  limit=50).events


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def readme_automation(prefect_api: str, receiver: Receiver, tmp_path_factory) -> Iterator[None]:
    """The README's commands as written, but for the port and the webhook URL, in a directory of their
    own (webhook.py writes .indexflow/ there); afterwards the README's delete command, and the block.
    Once for the module: its tests tell their notifications apart by job name."""
    tmp_path = tmp_path_factory.mktemp("readme-automation")
    services = http_json(f"{prefect_api}/admin/settings")["server"]["services"]
    assert services["triggers"]["enabled"] and services["event_persister"]["enabled"]
    script = readme_alert_commands()
    assert README_API in script and README_HOOK in script
    for name in ("automations", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    env = python_env()
    env.pop("PREFECT_API_URL")  # the README's export sets it
    setup = subprocess.run(["bash", "-euo", "pipefail", "-c",
                            script.replace(README_API, prefect_api).replace(README_HOOK, receiver.url)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, f"{setup.stdout}\n{setup.stderr}"
    assert f"Created automation '{AUTOMATION}'" in setup.stdout
    yield
    assert f"Deleted automation with name '{AUTOMATION}'" in prefect_cli("automation", "delete", AUTOMATION)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_block_document(client.read_block_document_by_name(BLOCK, "custom-webhook").id)


def test_the_readme_automation_turns_a_low_rate_into_a_webhook_notification(readme_automation, receiver):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(AUTOMATION)
    assert automation.trigger.expect == {EVENT} and automation.trigger.threshold == 1
    assert automation.trigger.within.total_seconds() == 0 and automation.trigger.posture == "Reactive"
    assert [action.type for action in automation.actions] == ["send-notification"]

    # 99 % is no alert, 90 % is one: sent, in that order, by a process that then skips every exit
    # handler (os._exit, as an interrupted CLI run does): emit itself must have sent the event.
    probe = ("import os\n"
             "from indexflow.tasks.batch.alerts import check, emit\n"
             f"job = dict(table='corpus', job_key={JOB_KEY!r}, final=True)\n"
             "fine = emit(check(**job, job_name='batches/rate-99', succeeded=99, failed=1))\n"
             "low = emit(check(**job, job_name='batches/rate-90', succeeded=90, failed=10))\n"
             "print(fine, low, flush=True)\n"
             "os._exit(0)\n")
    run = subprocess.run([sys.executable, "-c", probe], env=python_env(), capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.split() == ["False", "True"], run.stderr

    notification = json.loads(receiver.wait_for("batches/rate-90"))["text"]
    subject, body = notification.split("\n")
    assert subject == "indexflow: batch job batches/rate-90 of table corpus at 90.0% success"
    assert body.startswith(f"batch job batches/rate-90 ({JOB_KEY}) of table corpus: success rate 90.0% "
                           "(90 ok, 10 failed) is below 95%; ")

    (event,) = until("the event stored", lambda: events("batches/rate-90"))
    assert dict(event.resource) == {"prefect.resource.id": "indexflow.batch-job.batches/rate-90",
                                    "prefect.resource.name": JOB_KEY, "indexflow.table": "corpus"}
    assert {k: v for k, v in event.payload.items() if k != "message"} == {
        "table": "corpus", "job_name": "batches/rate-90", "job_key": JOB_KEY, "rate": 0.9, "succeeded": 90,
        "failed": 10, "threshold": 0.95, "final": True}
    assert event.related == []  # a plain process: no run to relate it to
    # sent before the 90 % one, so it would be stored by now: the 99 % job has no event at all
    assert events("batches/rate-99") == []
    assert [b for b in receiver.bodies if "rate-99" in b] == []


def batch_run(emu, tmp_path: Path, table: str, failure_rate: float) -> dict:
    """`indexflow index --mode batch --json` of 999 documents as a tracked flow run on the session's server.

    999, not 100: the emulator draws each item's failure, and at this size a 10 % draw lands between
    5 % and 15 % with all but certainty (the mean is 100, the standard deviation 9.5); not 1,000,
    which the batch guide's cadence polls every 10 s instead of 5."""
    from tests.tasks.test_batch_jobs import small_corpus

    emu.admin.set_batch_config({"item_failure_rate": failure_rate, "running_seconds": 0.5})
    corpus = small_corpus(tmp_path / f"{table}.jsonl", list(range(999)))
    env = python_env(GEMINI_API_KEY=emu.api_key, GOOGLE_GEMINI_BASE_URL=emu.base_url)
    run = subprocess.run([str(REPO / ".venv" / "bin" / "indexflow"), "index", str(corpus), "--db",
                          str(tmp_path / "db"), "--table", table, "--mode", "batch", "--tier", "unlimited", "--json"],
                         env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def fine_run(emu, tmp_path: Path):
    """A 1 % batch run in this process (which has the server's API configured): the route's own watch."""
    from pydantic import SecretStr

    from indexflow.tasks.batch.options import BatchOptions
    from indexflow.tasks.batch.route import run_batch
    from indexflow.tasks.settings import Endpoint, Settings
    from tests.tasks.test_batch_jobs import small_corpus

    emu.admin.set_batch_config({"item_failure_rate": 0.01, "running_seconds": 0.5})
    settings = Settings(corpus=small_corpus(tmp_path / "fine.jsonl", list(range(999))), db_uri=str(tmp_path / "db"),
                        table="fine")
    endpoint = Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url)
    return asyncio.run(run_batch(settings, endpoint, options=BatchOptions(poll_seconds=0.1, item_errors="dead_letter"),
                                 wait_limit_seconds=60))


def job_names(tmp_path: Path, table: str) -> list[str]:
    listed = subprocess.run([str(REPO / ".venv" / "bin" / "indexflow"), "batches", "list", "--db",
                             str(tmp_path / "db"), "--table", table, "--json"],
                            env=python_env(), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return [row["job"] for row in json.loads(listed.stdout)]


def test_a_real_batch_job_at_10_percent_failures_fires_the_automation_and_one_at_99_percent_does_not(
        readme_automation, receiver, emu, tmp_path):
    fine = fine_run(emu, tmp_path)  # first: by the time the low one is stored, this one's would be too
    assert fine.status == "completed" and fine.alerts == [] and fine.item_failures < 50
    low = batch_run(emu, tmp_path, "low", 0.10)
    assert low["status"] == "completed" and 50 < low["batch_item_failures"] < 150
    (job,) = job_names(tmp_path, "low")
    assert [a for a in low["alerts"] if job in a and "success rate" in a], low["alerts"]

    notification = json.loads(receiver.wait_for(job))["text"]
    assert f"batch job {job}" in notification and "of table low" in notification
    stored = until("the event stored", lambda: events(job))
    assert {e.payload["final"] for e in stored} <= {False, True} and any(e.payload["final"] for e in stored)
    final = next(e for e in stored if e.payload["final"])
    assert final.payload["failed"] == low["batch_item_failures"] and final.payload["rate"] < 0.95
    assert {r.role for r in final.related} >= {"flow-run", "flow"}, "sent from inside the tracked flow run"
    (fine_job,) = job_names(tmp_path, "fine")
    assert events(fine_job) == [] and [b for b in receiver.bodies if fine_job in b] == []


def test_an_alert_inside_a_flow_run_is_related_to_the_run(prefect_in_process):
    from prefect import flow
    from prefect.context import FlowRunContext

    @flow
    async def polls() -> tuple[bool, str]:
        alert = check(table="corpus", job_key=JOB_KEY, job_name="batches/in-a-flow", succeeded=8, failed=2,
                      final=False)
        return await aemit(alert), str(FlowRunContext.get().flow_run.id)

    sent, flow_run_id = asyncio.run(polls())
    assert sent
    (event,) = until("the event stored", lambda: events("batches/in-a-flow"))
    roles = {related.role: related.id for related in event.related}
    assert roles["flow-run"] == f"prefect.flow-run.{flow_run_id}" and roles["flow"].startswith("prefect.flow.")
    assert event.payload["final"] is False and "still running" in event.payload["message"]


def without_prefect_api(home: Path) -> dict[str, str]:
    """This environment with nothing of Prefect configured, PREFECT_HOME = `home`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(home)}


def test_an_unreachable_api_makes_emit_return_false_not_raise(tmp_path):
    probe = ("import logging, os\n"
             "logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')\n"
             "from indexflow.tasks.batch.alerts import check, emit\n"
             "print(emit(check(table='t', job_key='k', job_name='batches/x', succeeded=1, failed=1, final=True),"
             " timeout=2), flush=True)\n"
             "os._exit(0)  # Prefect's events worker would go on retrying its connection at exit\n")
    env = without_prefect_api(tmp_path) | {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}  # nothing listens
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stderr
    assert "indexflow.tasks.batch.alerts: batch success-rate alert for batches/x not sent within 2s" in run.stderr


def test_without_an_api_emit_sends_nothing_even_with_prefect_loaded(tmp_path):
    # Prefect already imported, so its settings answer (not the profile file): still nothing started.
    probe = ("import os, prefect\n"
             "from indexflow.tasks.batch.alerts import check, emit\n"
             "print(emit(check(table='t', job_key='k', job_name='batches/x', succeeded=1, failed=1, final=True)))\n"
             "from prefect.events.worker import EventsWorker\n"
             "try:\n    os.waitpid(-1, os.WNOHANG); children = 'children'\n"
             "except ChildProcessError:\n    children = 'no-children'\n"
             "print(len(EventsWorker._instances), children)\n")
    run = subprocess.run([sys.executable, "-c", probe], env=without_prefect_api(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.split() == ["False", "0", "no-children"], run.stderr
    assert not (tmp_path / "prefect.db").exists()  # no temporary server's database
