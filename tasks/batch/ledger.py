"""The durable ledger of Batch API jobs, stored beside the index so the two cannot drift.

Creating a batch job is not idempotent (a second create is a second, paid job), so every job is
written down BEFORE it is created and its name right after. Two LanceDB tables next to the index:

    {table}__batch_jobs   one row per job, keyed by `key` (= the job's display name)
    {table}__batch_items  the chunks a job covers, in submission order (inline results come back
                          by position), with their text so results can be written without the corpus

Job states:  INTENT -> CREATED -> RUNNING -> DONE -> COLLECTED
                                          \\-> FAILED | EXPIRED | CANCELLED
INTENT: recorded, create not (known to be) answered. CREATED: the job name is known. DONE: the job
SUCCEEDED but its vectors are not committed yet. COLLECTED: vectors committed to the index.
FAILED/EXPIRED/CANCELLED carry a `resolution` once the run dealt with them ("resubmitted",
"online", "reported", "abandoned"); until then they are still open. A job is *live* while it may
still produce vectors (INTENT, CREATED, RUNNING, DONE, no resolution): its chunks are in flight.
An INTENT whose create never reached the server is closed with resolution "not_created".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone

import lancedb
import pyarrow as pa
from lancedb.expr import col

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import StoreError, TableNotFoundError
from indexflow.tasks.lance_tables import connect, open_or_create, open_or_none
from indexflow.tasks.rows import PK_METADATA, UTC_US

JOBS_SUFFIX = "__batch_jobs"
ITEMS_SUFFIX = "__batch_items"

INTENT, CREATED, RUNNING, DONE = "INTENT", "CREATED", "RUNNING", "DONE"
FAILED, EXPIRED, CANCELLED, COLLECTED = "FAILED", "EXPIRED", "CANCELLED", "COLLECTED"
LIVE_STATES = frozenset({INTENT, CREATED, RUNNING, DONE})
STATES = LIVE_STATES | {FAILED, EXPIRED, CANCELLED, COLLECTED}

JOBS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False, metadata=PK_METADATA),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("route", pa.string(), nullable=False),
        pa.field("items", pa.int32(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("created_at", UTC_US, nullable=False),
        pa.field("updated_at", UTC_US, nullable=False),
        pa.field("job_name", pa.string()),
        pa.field("input_file", pa.string()),
        pa.field("output_file", pa.string()),
        pa.field("parent", pa.string()),
        pa.field("generation", pa.int32(), nullable=False),
        pa.field("resolution", pa.string()),
        pa.field("succeeded", pa.int32(), nullable=False),
        pa.field("failed", pa.int32(), nullable=False),
        pa.field("retried_online", pa.int32(), nullable=False),
        pa.field("dead_lettered", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("priority", pa.int64(), nullable=False),
    ]
)
# Columns added after the first ledgers were written, with the SQL value existing rows get.
ADDED_JOB_COLUMNS = {"priority": "CAST(0 AS BIGINT)"}

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("job_key", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int32(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source", pa.string()),
        pa.field("tokens", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ]
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table."""

    key: str
    run_id: str
    part: int
    state: str
    route: str
    items: int
    tokens: int
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    job_name: str | None = None
    input_file: str | None = None
    output_file: str | None = None
    parent: str | None = None
    generation: int = 0
    resolution: str | None = None
    succeeded: int = 0
    failed: int = 0
    retried_online: int = 0
    dead_lettered: int = 0
    error: str | None = None
    priority: int = 0  # sent on creation: the server runs higher priorities first

    @property
    def live(self) -> bool:
        """The job may still produce vectors: its chunks are in flight."""
        return self.state in LIVE_STATES and self.resolution is None

    @property
    def open(self) -> bool:
        """Some run still has to act on this job (poll, collect, or recover it)."""
        return self.live or (self.state in (FAILED, EXPIRED) and self.resolution is None)

    def as_dict(self) -> dict:
        return asdict(self)


def job_key(table: str, run_id: str, part: int) -> str:
    """The display name of a job: says which table, which run and which part it is."""
    return f"indexflow:{table}:{run_id}:part-{part}"


class Ledger:
    """The job and item tables of one index, opened so every read sees the latest commit."""

    def __init__(self, db: lancedb.DBConnection, table: str, jobs, items) -> None:
        self.db = db
        self.table = table
        self._jobs = jobs
        self._items = items

    @classmethod
    def open(cls, uri: str, table: str, *, create: bool = True,
             storage_options: dict[str, str] | None = None) -> Ledger:
        """The ledger of index `table` at `uri`; TableNotFoundError when missing and `create` is False."""
        db = connect(uri, create=create, table=table, storage_options=storage_options)
        if create:
            jobs = _with_added_columns(open_or_create(db, table + JOBS_SUFFIX, JOBS_SCHEMA, "key"))
            items = open_or_none(db, table + ITEMS_SUFFIX) or _create_items(db, table + ITEMS_SUFFIX)
        else:
            jobs = open_or_none(db, table + JOBS_SUFFIX)
            if jobs is None:
                raise TableNotFoundError(
                    f"no batch-job ledger for table {table!r} in {uri}; no batch run has used this table "
                    "(check --db/--table)", table=table, uri=uri)
            jobs = _with_added_columns(jobs)
            items = open_or_none(db, table + ITEMS_SUFFIX)
        return cls(db, table, jobs, items)

    # -- jobs -----------------------------------------------------------------------------

    def record_intent(self, record: JobRecord, chunks: Sequence[Chunk]) -> JobRecord:
        """Write the job's items, then its INTENT row: both are durable before the job is created."""
        if self._items is None:
            self._items = _create_items(self.db, self.table + ITEMS_SUFFIX)
        self._items.delete(col("job_key") == record.key)  # a half-written earlier attempt
        if chunks:
            self._items.add(pa.Table.from_pylist(
                [{"job_key": record.key, "position": i, "chunk_id": c.id, "doc_id": c.doc_id,
                  "ordinal": c.ordinal, "text": c.text, "title": c.title, "source": c.source,
                  "tokens": c.tokens, "content_hash": c.content_hash} for i, c in enumerate(chunks)],
                schema=ITEMS_SCHEMA))
        self._put(record)
        return record

    def update(self, key: str, **changes) -> JobRecord:
        """Change fields of job `key` (updated_at is set); returns the new record."""
        current = self.get(key)
        if current is None:
            raise StoreError(f"batch ledger of {self.table!r} has no job {key!r}", table=self.table, key=key)
        record = replace(current, updated_at=_now(), **changes)
        self._put(record)
        return record

    def _put(self, record: JobRecord) -> None:
        if record.state not in STATES:
            raise StoreError(f"unknown batch job state {record.state!r}", state=record.state)
        data = pa.Table.from_pylist([_row(record)], schema=JOBS_SCHEMA)
        self._jobs.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def get(self, key: str) -> JobRecord | None:
        rows = self._jobs.search().where(col("key") == key).to_arrow().to_pylist()
        return JobRecord(**rows[0]) if rows else None

    def find(self, ref: str) -> JobRecord | None:
        """A job by its key (display name), its job name `batches/ID`, or the bare ID."""
        found = self.get(ref)
        if found is not None:
            return found
        name = ref if ref.startswith("batches/") else f"batches/{ref}"
        rows = self._jobs.search().where(col("job_name") == name).to_arrow().to_pylist()
        return JobRecord(**rows[0]) if rows else None

    def jobs(self, *, open_only: bool = False) -> list[JobRecord]:
        """Every job, oldest first (or only those some run still has to act on)."""
        records = [JobRecord(**row) for row in self._jobs.search().to_arrow().to_pylist()]
        records.sort(key=lambda r: (r.created_at, r.key))
        return [r for r in records if r.open] if open_only else records

    # -- items ----------------------------------------------------------------------------

    def items(self, key: str) -> list[Chunk]:
        """The chunks job `key` covers, in submission order."""
        if self._items is None:
            return []
        rows = self._items.search().where(col("job_key") == key).to_arrow().to_pylist()
        rows.sort(key=lambda r: r["position"])
        return [Chunk(r["chunk_id"], r["doc_id"], r["ordinal"], r["text"], r["title"], r["source"],
                      r["tokens"], r["content_hash"]) for r in rows]

    def covered(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """chunk id -> (content hash, job key) for the chunks of jobs `keys` (later jobs win)."""
        keys = list(keys)
        if self._items is None or not keys:
            return {}
        order = {k: i for i, k in enumerate(keys)}
        result: dict[str, tuple[str, str, int]] = {}
        for start in range(0, len(keys), 500):
            table = (self._items.search().where(col("job_key").isin(keys[start:start + 500]))
                     .select(["job_key", "chunk_id", "content_hash"]).to_arrow())
            for key, chunk_id, content_hash in zip(*(table.column(n).to_pylist()
                                                     for n in ("job_key", "chunk_id", "content_hash"))):
                if chunk_id not in result or order[key] > result[chunk_id][2]:
                    result[chunk_id] = (content_hash, key, order[key])
        return {chunk_id: (h, k) for chunk_id, (h, k, _) in result.items()}

    def forget_items(self, keys: Iterable[str]) -> None:
        """Drop the item rows (texts) of jobs that need them no more."""
        keys = list(keys)
        if self._items is not None and keys:
            for start in range(0, len(keys), 500):
                self._items.delete(col("job_key").isin(keys[start:start + 500]))

    def prune(self) -> int:
        """Drop the items of closed jobs and of INTENTs never written; returns the jobs pruned."""
        if self._items is None:
            return 0
        known = {r.key: r for r in self.jobs()}
        with_items = set(self._items.search().select(["job_key"]).to_arrow().column("job_key").to_pylist())
        stale = [k for k in with_items if k not in known or not known[k].open]
        self.forget_items(stale)
        return len(stale)


def _with_added_columns(jobs):
    """A ledger written before a column existed gets it, with its default, before any row is written."""
    missing = {name: sql for name, sql in ADDED_JOB_COLUMNS.items() if name not in jobs.schema.names}
    if missing:
        try:
            jobs.add_columns(missing)
        except Exception as exc:  # another run added it meanwhile
            if not all(name in jobs.schema.names for name in missing):
                raise StoreError(f"cannot add columns {sorted(missing)} to the batch ledger: {exc}",
                                 table=jobs.name) from exc
    return jobs


def _create_items(db: lancedb.DBConnection, name: str):
    try:
        return db.create_table(name, schema=ITEMS_SCHEMA)
    except ValueError as exc:
        if "already exists" not in str(exc):
            raise
        return db.open_table(name)


def _row(record: JobRecord) -> dict:
    return {f.name: getattr(record, f.name) for f in fields(JobRecord)}
