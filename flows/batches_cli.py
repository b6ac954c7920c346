"""`indexflow batches list | status JOB | cancel JOB`: the Batch API jobs in a table's ledger.

Registered by flows/cli.py with `app.command(batches_app)`. Errors are left to `flows.cli.main`,
which turns IndexflowError into messages and exit codes.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
from typing import TYPE_CHECKING, Annotated

from cyclopts import App, Parameter

from indexflow.tasks.errors import TableNotFoundError

if TYPE_CHECKING:  # the ledger imports LanceDB: only a command that reads it pays for that
    from indexflow.tasks.batch.ledger import JobRecord, Ledger

EXIT_OK, EXIT_FAILED = 0, 1

batches_app = App(
    name="batches",
    help="Batch API jobs recorded in a table's ledger: list them, show one's live status, cancel one.",
    result_action="return_value",
)

Db = Annotated[str, Parameter(help="LanceDB database URI (a directory, or s3://...).")]
Table = Annotated[str, Parameter(help="Index table name inside the database.")]


def _row(record: JobRecord) -> dict:
    return {
        "key": record.key, "job": record.job_name or "-", "state": record.state,
        "resolution": record.resolution or "-", "route": record.route, "priority": record.priority,
        "items": record.items,
        "tokens": record.tokens, "created": record.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "updated": record.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in (rows[0] if rows else {"key": ""}):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)


def _endpoint():
    from indexflow.tasks.endpoint import resolve_endpoint

    return resolve_endpoint(os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_GEMINI_BASE_URL"))


def _ledger_or_none(db: str, table: str) -> Ledger | None:
    """The table's ledger; None when the index exists but no batch run has used it.

    A missing database or index table raises TableNotFoundError: that is a wrong --db/--table,
    not an empty list. Nothing is created either way.
    """
    try:
        from indexflow.tasks.batch.ledger import Ledger

        return Ledger.open(db, table, create=False)
    except TableNotFoundError:
        from indexflow.tasks.store import VectorStore

        VectorStore.open(db, table, None, create=False)  # raises when the index itself is missing
        return None


@batches_app.command(name="list")
def list_jobs(*, db: Db = ".indexflow/lancedb", table: Table = "corpus", open_only: bool = False,
              json: bool = False) -> int:
    """List the batch jobs of TABLE, oldest first (with --open-only, those a run still has to act on)."""
    ledger = _ledger_or_none(db, table)
    records = ledger.jobs(open_only=open_only) if ledger is not None else []
    rows = [_row(r) for r in records]
    if json:
        print(jsonlib.dumps(rows, indent=2))
    elif not rows:
        print(f"no batch jobs recorded for table {table!r}")
    else:
        _print_table(rows, f"batch jobs of {table}")
    return EXIT_OK


@batches_app.command
def status(job: str, *, db: Db = ".indexflow/lancedb", table: Table = "corpus", json: bool = False) -> int:
    """Show JOB (its key, `batches/ID` or ID) from the ledger and, when the API knows it, its live state and counts."""
    from indexflow.tasks.batch.admin import job_status

    with _endpoint() as (endpoint, _):
        record, live = asyncio.run(job_status(db, table, job, endpoint))
    facts = _row(record) | {"parent": record.parent or "-", "input_file": record.input_file or "-",
                            "output_file": record.output_file or "-", "error": record.error or "-"}
    if live is None:
        facts["live"] = "not known to this endpoint" if record.job_name else "never created"
    else:
        facts |= {"live": live.state, "requests": live.requests, "succeeded": live.succeeded,
                  "failed": live.failed, "pending": live.pending}
    if json:
        print(jsonlib.dumps(facts, indent=2))
    else:
        _print_table([{"field": k, "value": v} for k, v in facts.items()], f"batch job {record.key}")
    return EXIT_OK


@batches_app.command
def cancel(job: str, *, db: Db = ".indexflow/lancedb", table: Table = "corpus", json: bool = False) -> int:
    """Cancel JOB (its key, `batches/ID` or ID); a finished job is left alone for the next run to collect.

    Exits 1 when nothing was cancelled (with --json too: {"job": JOB, "cancelled": []}).
    """
    from indexflow.tasks.batch.admin import cancel_jobs

    with _endpoint() as (endpoint, _):
        cancelled = asyncio.run(cancel_jobs(db, table, endpoint, refs=[job]))
    if json:
        print(jsonlib.dumps({"job": job, "cancelled": cancelled}, indent=2))
        return EXIT_OK if cancelled else EXIT_FAILED
    if not cancelled:
        print(f"{job}: not cancelled (it is no longer running, or was never created)")
        return EXIT_FAILED
    print(f"cancelled {', '.join(cancelled)}")
    return EXIT_OK
