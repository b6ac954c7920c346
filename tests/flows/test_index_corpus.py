"""Where a flow run's API key comes from, without a Prefect server: the environment, else nothing.

With a server, the Secret block route is in tests/flows/test_secrets.py.
"""

from __future__ import annotations

import socket

import pytest

from indexflow.flows.index_corpus import _api_key_from_environment


@pytest.fixture
def unreachable_api(monkeypatch):
    """PREFECT_API_URL at a loopback port that refuses connections (bound, never listening)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        monkeypatch.setenv("PREFECT_API_URL", url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url


def test_the_environment_key_wins_without_asking_prefect(unreachable_api, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "key-from-the-environment")
    assert _api_key_from_environment() == "key-from-the-environment"


def test_no_key_and_no_server_to_ask_means_the_emulator(unreachable_api, monkeypatch):
    # an empty variable is no key: Prefect is asked, cannot answer, and the run falls back to the emulator
    monkeypatch.setenv("GEMINI_API_KEY", "")
    assert _api_key_from_environment() is None
    monkeypatch.delenv("GEMINI_API_KEY")
    assert _api_key_from_environment() is None
