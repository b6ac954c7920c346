"""One writer per table: a lock a run holds from planning to finalize, so overlapping runs never
embed the same chunks twice (the second plans only after the first committed).

Two backends, chosen by where the table lives (`backend="auto"`):

- a local path: `flock` on `<db_uri>/.indexflow-locks/<table>.lock`. The kernel drops the lock
  the moment the holder dies, so a crashed run never blocks the next one, and no Prefect server
  is needed (the CLI's ephemeral mode keeps leases in a per-process server, where a crash would
  leave a concurrency slot taken for good).
- an object store or remote URI (`s3://`, `gs://`, `az://`, `db://`…): a Prefect global
  concurrency limit named by `writer_limit_name` (limit 1), created on first use, held with a
  lease the client renews in the background. A dead holder's slot returns when the lease
  expires (`LEASE_SECONDS`, plus up to 15 s for the server's repossessor). Works across every
  machine that talks to the same Prefect server.

A run that cannot get the lock within `wait_seconds` raises `TableBusyError` (terminal).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Literal

from indexflow.tasks.errors import ConfigError, TableBusyError

Backend = Literal["auto", "file", "prefect"]

LOCK_DIR = ".indexflow-locks"
# The server refuses leases under 60 s; the client renews at 75 % of the duration.
LEASE_SECONDS = 60.0
POLL_START = 0.1
POLL_MAX = 1.0


def is_local(db_uri: str) -> bool:
    """True for a filesystem path (or file:// URI), where a file lock can guard the table."""
    return "://" not in db_uri or db_uri.startswith("file://")


def writer_limit_name(db_uri: str, table: str) -> str:
    """The Prefect global concurrency limit for (db_uri, table): readable slug + hash of the exact pair."""
    slug = re.sub(r"[^a-z0-9]+", "-", table.lower()).strip("-")[:60] or "table"
    digest = hashlib.sha256(f"{db_uri}\0{table}".encode()).hexdigest()[:12]
    return f"indexflow-writer-{slug}-{digest}"


def local_root(db_uri: str) -> Path:
    """The directory of a local database URI (a path or file://), without importing LanceDB."""
    return Path(db_uri.removeprefix("file://")).expanduser()


def lock_path(db_uri: str, table: str) -> Path:
    """The lock file guarding a local table (beside the table, outside its `.lance` directory)."""
    return local_root(db_uri).resolve() / LOCK_DIR / f"{table}.lock"


@asynccontextmanager
async def table_writer(
    db_uri: str,
    table: str,
    *,
    wait_seconds: float | None = None,
    backend: Backend = "auto",
    on_wait: Callable[[str], object] | None = None,
) -> AsyncIterator[str]:
    """Hold the one-writer lock of `table` at `db_uri`; yields the lock's description.

    `wait_seconds`: None waits as long as it takes, 0 fails at once if the table is busy.
    `on_wait` gets one message when the run has to wait (the flow passes its logger).
    """
    if wait_seconds is not None and wait_seconds < 0:
        raise ValueError("wait_seconds must be >= 0 or None")
    chosen = ("file" if is_local(db_uri) else "prefect") if backend == "auto" else backend
    if chosen == "file":
        async with _file_lock(db_uri, table, wait_seconds, on_wait) as description:
            yield description
    elif chosen == "prefect":
        async with _prefect_lock(db_uri, table, wait_seconds, on_wait) as description:
            yield description
    else:
        raise ValueError(f"unknown writer lock backend {backend!r}; use auto, file or prefect")


def _busy(db_uri: str, table: str, lock: str, waited: float, holder: str | None) -> TableBusyError:
    held_by = f" (held by {holder})" if holder else ""
    return TableBusyError(
        f"table {table!r} at {db_uri} is being written by another indexflow run{held_by}; "
        f"gave up after waiting {waited:.0f}s for lock {lock}. Re-run when it has finished, or "
        "allow a longer wait (writer_wait_seconds; empty = wait as long as it takes)",
        table=table, db_uri=db_uri, lock=lock, waited_seconds=waited, holder=holder,
    )


# -- local tables: flock ----------------------------------------------------------------------


@asynccontextmanager
async def _file_lock(db_uri: str, table: str, wait_seconds: float | None,
                     on_wait: Callable[[str], object] | None) -> AsyncIterator[str]:
    path = lock_path(db_uri, table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # flock (not lockf): each open() is its own lock owner, so two runs in one process exclude
        # each other too.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # the first write of a run: a --db that cannot be a directory fails here
        raise ConfigError(
            f"cannot write the database {db_uri!r}: {exc.strerror} ({exc.filename}); "
            "choose a --db directory you can create and write", db_uri=db_uri, path=str(exc.filename),
            reason=exc.strerror) from None
    try:
        started = time.monotonic()
        delay = POLL_START
        told = False
        while not _try_flock(fd):
            waited = time.monotonic() - started
            if wait_seconds is not None and waited >= wait_seconds:
                raise _busy(db_uri, table, str(path), waited, _read_holder(path))
            if on_wait is not None and not told:
                told = True
                on_wait(f"table {table!r} is being written by another run ({_read_holder(path) or 'unknown'}); "
                        f"waiting for lock {path}")
            step = delay if wait_seconds is None else min(delay, max(0.0, wait_seconds - waited))
            await asyncio.sleep(step)
            delay = min(delay * 2, POLL_MAX)
        try:
            _write_holder(fd)
            yield str(path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the message a waiting run shows; never needed for correctness."""
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)


def _read_holder(path: Path) -> str | None:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return None


# -- remote tables: a Prefect global concurrency limit ------------------------------------------


async def ensure_writer_limit(name: str) -> None:
    """Create the limit (1 slot) unless it exists; two runs racing to create it both succeed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass


@asynccontextmanager
async def _prefect_lock(db_uri: str, table: str, wait_seconds: float | None,
                        on_wait: Callable[[str], object] | None) -> AsyncIterator[str]:
    import httpx
    from prefect.concurrency.asyncio import (
        AcquireConcurrencySlotTimeoutError,
        ConcurrencySlotAcquisitionError,
        concurrency,
    )

    name = writer_limit_name(db_uri, table)
    await ensure_writer_limit(name)
    started = time.monotonic()
    if on_wait is not None and await _limit_is_taken(name):
        on_wait(f"table {table!r} is being written by another run; waiting for concurrency limit {name}")
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(concurrency(
                name, occupy=1, strict=True, lease_duration=LEASE_SECONDS,
                # wait_seconds=0: one attempt, no waiting on a 423
                timeout_seconds=wait_seconds or None, max_retries=0 if wait_seconds == 0 else None,
            ))
        except AcquireConcurrencySlotTimeoutError:
            raise _busy(db_uri, table, name, time.monotonic() - started, None) from None
        except ConcurrencySlotAcquisitionError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423:
                raise _busy(db_uri, table, name, time.monotonic() - started, None) from None
            raise
        yield name


async def _limit_is_taken(name: str) -> bool:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots >= limit.limit
