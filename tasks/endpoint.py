"""Decide where embeddings come from: Google with a key, a given compatible server, or the embedded emulator."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from pydantic import SecretStr

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.redact import remember
from indexflow.tasks.settings import Endpoint


def endpoint_label(api_key: str | None, base_url: str | None = None) -> str:
    """What `resolve_endpoint` will yield as its label, without starting anything."""
    if base_url and not api_key:
        raise ConfigError(
            f"a base URL ({base_url}) was given without an API key; set GEMINI_API_KEY "
            "(the emulator accepts 'emulator-key' unless started with another --api-key)")
    if api_key:
        return "google" if not base_url else f"compatible server at {base_url}"
    return "emulator (in process; set GEMINI_API_KEY to use Google)"


@contextmanager
def resolve_endpoint(api_key: str | None, base_url: str | None = None, *,
                     api_version: str = "v1beta", timeout_seconds: float = 60.0) -> Iterator[tuple[Endpoint, str]]:
    """Yield (endpoint, label). With no key and no base URL, an emulator runs in this process meanwhile."""
    label = endpoint_label(api_key, base_url)
    if api_key:
        remember(api_key)  # from here on no text that leaves the process carries it
        yield Endpoint(api_key=SecretStr(api_key), base_url=base_url or None, api_version=api_version,
                       timeout_seconds=timeout_seconds), label
        return
    # The emulator is product code used as the default endpoint; nothing else imports it.
    from indexflow.emulator.server import running_emulator

    with running_emulator() as emu:
        yield Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url, api_version=api_version,
                       timeout_seconds=timeout_seconds), label
