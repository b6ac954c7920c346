"""The google-genai client for an endpoint, and the model path every REST call uses."""

from __future__ import annotations

from google import genai
from google.genai import types as genai_types

from indexflow.tasks.redact import remember
from indexflow.tasks.settings import Endpoint


def make_client(endpoint: Endpoint) -> genai.Client:
    """A google-genai client for `endpoint`, with SDK retries off (the project owns retries)."""
    remember(endpoint.api_key.get_secret_value())
    options = genai_types.HttpOptions(
        base_url=endpoint.base_url,
        api_version=endpoint.api_version,
        timeout=int(endpoint.timeout_seconds * 1000),
        retry_options=None,
    )
    return genai.Client(api_key=endpoint.api_key.get_secret_value(), http_options=options)


def model_path(model: str) -> str:
    """`models/NAME` for a bare model name (tuned models keep their own prefix)."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


async def close_client(client: genai.Client) -> None:
    """Close both of a client's transports (async first: it owns the connection pool calls used)."""
    await client.aio.aclose()
    client.close()
