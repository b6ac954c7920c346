"""The SDK's private parts this project relies on, in one place, each pinned by a contract test.

- `raw_request`: `client.aio._api_client.async_request`, the SDK's own request path (base URL,
  key header, timeout, `errors.APIError`). Used to send REST bodies the SDK's typed config cannot
  express: a title per item (`batchEmbedContents`, `asyncBatchEmbedContent`), a job's `priority`,
  and reading a job with its `batchStats` (the SDK's `BatchJob` drops them).
- `batch_job_from_operation`: `google.genai.batches._BatchJob_from_mldev`, the SDK's converter
  from a job's operation JSON, so inline results are read in both shapes it produces.
"""

from __future__ import annotations

from typing import Any


async def raw_request(client: Any, method: str, path: str, body: dict[str, Any]) -> str | bytes | None:
    """Send `body` to `path` through the SDK's API client; the response body, or the SDK's APIError."""
    response = await client.aio._api_client.async_request(method, path, body, None)
    return response.body


def batch_job_from_operation(payload: dict[str, Any]) -> Any:
    """The SDK's `BatchJob` for a job's operation JSON, built by the SDK's own converter."""
    from google.genai import types
    from google.genai.batches import _BatchJob_from_mldev

    return types.BatchJob._from_response(response=_BatchJob_from_mldev(payload), kwargs={})
