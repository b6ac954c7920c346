"""Online embeddings: the `batchEmbedContents` body with a title per item, the call, the parsed vectors.

Titles per item: `embed_content` copies ONE config (task type, title, dimensionality) into every
item of a call, so a batch of chunks from many documents could carry only one title. Instead of
splitting batches at every title change (one call per small document) or gluing the title into
the text (a different vector than Gemini's titled one), `embed_batch` sends the REST API's own
`batchEmbedContents` body with a title on each item through the SDK's API client
(`sdk_hooks.raw_request`). That is the same code path `embed_content` uses (same base URL,
headers, key handling, timeout and `errors.APIError` raising) minus the pydantic round trip on
the response, which is also the slowest part of `embed_content` for 100 x 768 floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from indexflow.tasks.errors import BadResponseError
from indexflow.tasks.gemini.client import model_path
from indexflow.tasks.gemini.errors import guarded
from indexflow.tasks.gemini.sdk_hooks import raw_request
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.settings import DEFAULT_CALL_DEADLINE_SECONDS

if TYPE_CHECKING:  # numpy loads with the first answer: the first call need not wait for it
    import numpy as np

TITLE_TASK_TYPES = frozenset({"RETRIEVAL_DOCUMENT"})


def batch_request_body(
    texts: Sequence[str],
    *,
    recipe: Recipe,
    titles: Sequence[str | None] | None = None,
    task_type: str | None = None,
) -> dict[str, Any]:
    """The `batchEmbedContents` JSON body, one request per text, each with its own title."""
    task = task_type or recipe.task_type
    send_titles = titles is not None and recipe.send_title and task in TITLE_TASK_TYPES
    if titles is not None and len(titles) != len(texts):
        raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
    model = model_path(recipe.model)
    requests = []
    for i, text in enumerate(texts):
        item: dict[str, Any] = {
            "model": model,
            "content": {"parts": [{"text": text}], "role": "user"},
            "taskType": task,
            "outputDimensionality": recipe.dimensions,
        }
        if send_titles and titles[i]:
            item["title"] = titles[i]
        requests.append(item)
    return {"requests": requests}


async def embed_batch(
    client: Any,
    texts: Sequence[str],
    *,
    recipe: Recipe,
    titles: Sequence[str | None] | None = None,
    task_type: str | None = None,
    deadline_seconds: float | None = DEFAULT_CALL_DEADLINE_SECONDS,
) -> np.ndarray:
    """Raw float32 vectors (len(texts), recipe.dimensions) for one call; raises only IndexflowError.

    `titles` holds one title per text (None or "" for none); they are sent only for
    RETRIEVAL_DOCUMENT and when the recipe says so. Past `deadline_seconds` (connect and the
    whole answer) the call is abandoned as a timeout.
    """
    body = batch_request_body(texts, recipe=recipe, titles=titles, task_type=task_type)
    path = f"{model_path(recipe.model)}:batchEmbedContents"
    body = await guarded(raw_request(client, "post", path, body), deadline_seconds=deadline_seconds,
                         what="embedding call")
    return parse_embeddings(body, expected=len(texts), dim=recipe.dimensions)


def parse_embeddings(body: str | bytes | None, *, expected: int, dim: int) -> np.ndarray:
    """Turn a `batchEmbedContents` response body into (expected, dim) float32, or BadResponseError."""
    try:
        # orjson: decoding 100 x 768 floats is the client's largest cost per call (5x stdlib json)
        payload = orjson.loads(body or b"")
        rows = [item["values"] for item in payload["embeddings"]]
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BadResponseError(
            f"the embedding response is not valid batchEmbedContents JSON ({type(exc).__name__})",
            status=200,
            reason="malformed",
        ) from None
    if len(rows) != expected:
        raise BadResponseError(
            f"asked for {expected} embeddings, got {len(rows)}",
            status=200,
            reason="wrong_count",
            expected=expected,
            got=len(rows),
        )
    import numpy as np

    try:
        vectors = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        vectors = None
    if vectors is None or vectors.ndim != 2 or vectors.shape[1] != dim:
        lengths = sorted({len(r) if isinstance(r, list) else -1 for r in rows})
        raise BadResponseError(
            f"expected {dim}-dimensional embeddings, got lengths {lengths}",
            status=200,
            reason="wrong_dimensions",
            expected=dim,
            got=lengths,
        )
    return vectors.reshape(expected, dim)


async def embed_query(client: Any, text: str, recipe: Recipe) -> np.ndarray:
    """The raw RETRIEVAL_QUERY vector (dim,) for `text`; the caller normalizes."""
    return (await embed_batch(client, [text], recipe=recipe, task_type="RETRIEVAL_QUERY"))[0]


