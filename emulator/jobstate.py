"""Small persistence helpers for the emulator's Files and Batch stores (`--state-dir`).

Each record is one JSON file (and, for files, one `.bin` beside it) written atomically, so a
crash or a stopped emulator never leaves a half-written record for the next start to trip on;
`RecordFolder` is one store's folder of them. Also holds what both stores share: the RFC 3339
timestamp format and newest-first paging with opaque page tokens.
"""

from __future__ import annotations

import base64
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


def rfc3339(epoch: float) -> str:
    """Google's timestamp JSON: UTC with microseconds and a trailing `Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Persist one record as JSON (numpy arrays allowed)."""
    write_atomic(path, orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))


def read_json_records(folder: Path) -> list[dict[str, Any]]:
    """Every `*.json` record in `folder` (none if it does not exist); unreadable ones are skipped."""
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            # A foreign or damaged file must not stop the emulator from starting.
            continue
    return records


def remove(*paths: Path) -> None:
    """Delete the given files if they exist."""
    for path in paths:
        path.unlink(missing_ok=True)


class RecordFolder:
    """A store's records under `state_dir/name`, `ID.json` plus an optional `ID.bin`; inert without a state dir."""

    def __init__(self, state_dir: Path | None, name: str) -> None:
        self.path = Path(state_dir) / name if state_dir is not None else None

    def load(self) -> list[dict[str, Any]]:
        """Every record with an `id` and a `seq` (other JSON files in the folder are not records)."""
        if self.path is None:
            return []
        return [r for r in read_json_records(self.path) if "id" in r and "seq" in r]

    def blob(self, record_id: str) -> bytes | None:
        """The `.bin` beside a record, None when there is none."""
        path = self.path / f"{record_id}.bin" if self.path is not None else None
        return path.read_bytes() if path is not None and path.is_file() else None

    def save(self, record: dict[str, Any], blob: bytes | None = None) -> None:
        """Write the record (and its blob first: a record without its bytes is skipped on load)."""
        if self.path is None:
            return
        if blob is not None:
            write_atomic(self.path / f"{record['id']}.bin", blob)
        write_json(self.path / f"{record['id']}.json", record)

    def remove(self, record_id: str) -> None:
        """Forget a record and its blob."""
        if self.path is not None:
            remove(self.path / f"{record_id}.json", self.path / f"{record_id}.bin")


def encode_page_token(seq: int) -> str:
    """Opaque list token: the sequence number of the last record on the previous page."""
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int | None:
    """The sequence number inside a token from `encode_page_token`; None when it is not one."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, seq = text.partition(":")
        return int(seq) if prefix == "after" else None
    except (ValueError, UnicodeDecodeError):
        return None


def page_newest_first(
    records: list[dict[str, Any]], page_size: int, page_token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `records` (each with an int `seq`) newest first, and the next page's token.

    The token names the last record shown rather than an offset, so records created or deleted
    between two calls neither repeat nor skip older ones.
    """
    ordered = sorted(records, key=lambda r: r["seq"], reverse=True)
    if page_token:
        after = decode_page_token(page_token)
        if after is None:
            raise ValueError(page_token)
        ordered = [r for r in ordered if r["seq"] < after]
    page = ordered[:page_size]
    more = len(ordered) > page_size
    return page, (encode_page_token(page[-1]["seq"]) if more else None)
