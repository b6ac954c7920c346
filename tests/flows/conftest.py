"""Flow tests run against a real local Prefect server that this session starts (not ephemeral mode)."""

from __future__ import annotations

import os

import pytest

from tests.prefect_server import prefect_server

pytest.register_assert_rewrite("tests.flows.service_fixtures")
# session fixtures of the service tests, registered here once for the whole session
from tests.flows.service_fixtures import (  # noqa: E402,F401
    deployed,
    prefect_in_process,
    semu,
    standalone_emulator,
    worker,
)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """The API URL of a `prefect server start` on a free loopback port, with a temporary PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home) as api_url:
        old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = str(home)
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_HOME: str(home)}):
                yield api_url
                # send queued run logs and events while the server is still there to take them
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
