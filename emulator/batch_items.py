"""Batch input → job items: reads the inline requests or JSONL input file of an
`asyncBatchEmbedContent` call and turns each entry into an item, invalid entries into item errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .embedding import count_tokens
from .google_errors import invalid_argument

MAX_ITEM_TOKENS = 2048
MIN_DIM, MAX_DIM, DEFAULT_DIM = 128, 3072, 3072
TASK_TYPES = frozenset({
    "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
    "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
})


def parse_input(
    body: dict, max_tokens: int, read_file: Callable[[str], bytes]
) -> tuple[dict[str, Any], str | None, list[dict[str, Any]]]:
    """(batch object, input file name or None, items) of a create request body.

    Raises INVALID_ARGUMENT when the body itself is malformed; `read_file` fetches a file input.
    """
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        raise invalid_argument("Invalid request: the body has no 'batch' object.")
    input_config = batch.get("inputConfig") or batch.get("input_config")
    if not isinstance(input_config, dict):
        raise invalid_argument("* EmbedContentBatch.input_config: a batch needs an input config.")
    file_name = input_config.get("fileName") or input_config.get("file_name")
    requests = input_config.get("requests")
    if (file_name is None) == (requests is None):
        raise invalid_argument(
            "* EmbedContentBatch.input_config: set exactly one of 'requests' (inline) or 'file_name'."
        )
    if file_name is not None:
        items = items_from_file(read_file(str(file_name)), str(file_name), max_tokens)
    else:
        entries = requests.get("requests") if isinstance(requests, dict) else None
        if not isinstance(entries, list):
            raise invalid_argument("* EmbedContentBatch.input_config.requests.requests: must be a list.")
        items = [item_from_request(entry.get("request") if isinstance(entry, dict) else None,
                                   key=None, label=f"requests[{i}]", max_tokens=max_tokens)
                 for i, entry in enumerate(entries)]
    if not items:
        raise invalid_argument("* EmbedContentBatch.input_config: the batch has no requests.")
    return batch, file_name, items


def _new_item(key: str | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"key": key, "text": "", "title": None, "taskType": None, "dim": DEFAULT_DIM, "error": error}


def _bad(label: str, message: str) -> dict[str, Any]:
    return {"code": 3, "message": f"{label}: {message}"}


def item_from_request(request: Any, key: str | None, label: str,
                      max_tokens: int = MAX_ITEM_TOKENS) -> dict[str, Any]:
    """One job item from an EmbedContentRequest; an invalid request becomes an item error."""
    item = _new_item(key)
    if not isinstance(request, dict):
        item["error"] = _bad(label, "has no 'request' object.")
        return item
    content = request.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    parts = parts if isinstance(parts, list) else []
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    item["text"] = " ".join(texts)
    item["title"] = request.get("title") if isinstance(request.get("title"), str) else None
    task_type = request.get("taskType") or request.get("task_type")
    item["taskType"] = task_type if isinstance(task_type, str) else None
    dim = request.get("outputDimensionality", request.get("output_dimensionality"))
    if not texts:
        item["error"] = _bad(label, "content has no text parts.")
    elif not item["text"].strip():
        item["error"] = _bad(label, "the text is empty.")
    elif (tokens := count_tokens(item["text"])) > max_tokens:
        item["error"] = _bad(label, f"the input has {tokens} tokens, more than the {max_tokens} allowed.")
    elif item["taskType"] is not None and item["taskType"] not in TASK_TYPES:
        item["error"] = _bad(label, f"unknown task type {item['taskType']!r}.")
    elif dim is not None and (type(dim) is not int or not MIN_DIM <= dim <= MAX_DIM):
        item["error"] = _bad(label, f"output dimensionality {dim!r} is outside {MIN_DIM}..{MAX_DIM}.")
    elif dim is not None:
        item["dim"] = dim
    return item


def items_from_file(data: bytes, file_name: str, max_tokens: int = MAX_ITEM_TOKENS) -> list[dict[str, Any]]:
    """Job items from a JSONL input file; malformed lines become item errors naming the line."""
    items = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        label = f"{file_name} line {number}"
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            line = None
            error = _bad(label, f"not valid JSON ({exc}).")
        else:
            error = None if isinstance(line, dict) else _bad(label, "is not a JSON object.")
        key = line.get("key") if isinstance(line, dict) else None
        key = str(key) if key is not None else None
        if error is not None:
            items.append(_new_item(key, error))
            continue
        items.append(item_from_request(line.get("request"), key, f"{label} (key {key!r})", max_tokens))
    return items
