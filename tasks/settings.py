"""One typed settings object, built once at the edge (CLI options or flow parameters) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from indexflow.tasks.recipe import Recipe

if TYPE_CHECKING:
    from indexflow.tasks.search import IndexPolicy

Tier = Literal["free", "1", "2", "3", "unlimited"]

# One default table and database for the CLI, the flow, the Python API, the Makefile and prefect.yaml.
DEFAULT_TABLE = "corpus"
DEFAULT_DB_URI = ".indexflow/lancedb"


class Limits(BaseModel):
    """Client-side quota: requests per minute, tokens per minute, requests per day (None = no limit)."""

    model_config = ConfigDict(frozen=True)

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    rpd: int | None = Field(default=None, gt=0)
    # The free tier counts every text of a batch call as one request; "calls" counts the call.
    count: Literal["texts", "calls"] = "texts"


# gemini-embedding-001 per project and model, from https://ai.google.dev/gemini-api/docs/rate-limits.
# Tier 3 is not published for embeddings; it is set at twice tier 2 and is meant to be overridden.
TIERS: dict[str, Limits] = {
    "free": Limits(rpm=100, tpm=30_000, rpd=1_000, count="texts"),
    "1": Limits(rpm=3_000, tpm=1_000_000, count="texts"),
    "2": Limits(rpm=5_000, tpm=5_000_000, count="texts"),
    "3": Limits(rpm=10_000, tpm=10_000_000, count="texts"),
    "unlimited": Limits(),
}

LIMIT_FLAGS = {"rpm": "--rpm", "tpm": "--tpm", "rpd": "--rpd", "rpm_counts": "--rpm-counts"}


class Quota(BaseModel):
    """The limits a run applies and where each value came from (a flag, a tier, or nowhere)."""

    model_config = ConfigDict(frozen=True)

    limits: Limits
    sources: dict[str, str]  # "rpm" | "tpm" | "rpd" | "rpm_counts" -> e.g. "--rpm", "tier 1"
    preset: Tier | None  # the tier unset values came from; None when the user gave the quota

    def as_dict(self) -> dict:
        """JSON facts: {"rpm": {"value": 3000, "source": "--rpm"}, ..., "preset": "1"}."""
        values = {"rpm": self.limits.rpm, "tpm": self.limits.tpm, "rpd": self.limits.rpd,
                  "rpm_counts": self.limits.count}
        return {k: {"value": v, "source": self.sources[k]} for k, v in values.items()} | {"preset": self.preset}

    def describe(self) -> str:
        return describe_quota(self.as_dict())


def describe_quota(facts: dict) -> str:
    """`Quota.as_dict()` as one line: rpm 3000 (--rpm), tpm 1000000 (--tpm), rpd none (tier 1), rpm counts texts (tier 1)."""
    def part(name: str) -> str:
        fact = facts[name]
        value = "none" if fact["value"] is None else fact["value"]
        return f"{name.replace('_', ' ')} {value} ({fact['source']})"

    return ", ".join(part(name) for name in LIMIT_FLAGS if name in facts)


def resolve_quota(tier: Tier | None, default_tier: Tier, given: dict[str, int | str | None]) -> Quota:
    """The one rule for limits.

    - `--tier T`: tier T's preset, each value given explicitly laid over it.
    - no tier and none of rpm/tpm/rpd given: the default tier's preset (free with an API key,
      unlimited with the emulator).
    - no tier but rpm, tpm or rpd given: the user is describing their own quota, so nothing is
      inherited from a preset (the free tier's 1,000 requests per day must not cap a paid
      project that only said `--rpm 3000`); what is not given is not limited.
    `rpm_counts` only says how RPM counts, so it never decides between these; unset, it is the
    preset's, else "texts" (the stricter reading).
    """
    explicit = {k: v for k, v in given.items() if v is not None}
    preset: Tier | None = tier
    if tier is None and not explicit.keys() & {"rpm", "tpm", "rpd"}:
        preset = default_tier
    base = TIERS[preset] if preset is not None else Limits()
    values = {"rpm": base.rpm, "tpm": base.tpm, "rpd": base.rpd, "rpm_counts": base.count}
    if preset is not None:
        where = f"tier {preset}" + (", by default" if tier is None else "")
        sources = dict.fromkeys(values, where)
    else:
        sources = {k: f"no {flag}, no --tier" for k, flag in LIMIT_FLAGS.items()}
        sources["rpm_counts"] = "default"
    for name, value in explicit.items():
        values[name], sources[name] = value, LIMIT_FLAGS[name]
    limits = Limits(rpm=values["rpm"], tpm=values["tpm"], rpd=values["rpd"], count=values["rpm_counts"])
    return Quota(limits=limits, sources=sources, preset=preset)


DEFAULT_CALL_DEADLINE_SECONDS = 60.0


class Endpoint(BaseModel):
    """Where embeddings come from: Google (base_url None) or any compatible server such as the emulator."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr
    base_url: str | None = None
    api_version: str = "v1beta"
    timeout_seconds: float = Field(default=60.0, gt=0)


class Settings(BaseModel):
    """Everything one indexing run needs; invalid values fail here with the field named."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # corpus
    corpus: Path
    corpus_format: Literal["auto", "dir", "jsonl", "parquet", "csv"] = "auto"
    id_field: str | None = None  # None: "id", then "_id" (BEIR)
    title_field: str = "title"
    text_field: str = "text"

    # table
    db_uri: str = DEFAULT_DB_URI
    table: str = Field(default=DEFAULT_TABLE, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

    # recipe
    model: str = "gemini-embedding-001"
    dimensions: int = Field(default=768, ge=128, le=3072)
    send_title: bool = True

    # chunking
    max_chunk_tokens: int = Field(default=1024, ge=32, le=2048)
    overlap_tokens: int = Field(default=64, ge=0)

    # micro-batching
    batch_size: int = Field(default=100, ge=1, le=100)
    batch_timeout: float = Field(default=0.05, gt=0, le=60)
    max_tokens_per_call: int | None = Field(default=None, gt=0)
    concurrency: int = Field(default=8, ge=1, le=256)

    # quota (the rule: `resolve_quota`)
    tier: Tier | None = None  # None: not chosen
    default_tier: Tier = "unlimited"  # the preset when neither a tier nor rpm/tpm/rpd is given
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    rpd: int | None = Field(default=None, gt=0)
    rpm_counts: Literal["texts", "calls"] | None = None

    # retries
    # Connect + the whole answer of one embedding call; past it the call is a timeout and retried.
    # The transport's timeout bounds each read only: an answer that trickles in would hold a worker.
    call_deadline_seconds: float = Field(default=DEFAULT_CALL_DEADLINE_SECONDS, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    max_retry_seconds: float = Field(default=900.0, gt=0)

    # what a run does
    mode: Literal["online", "batch", "auto"] = "online"
    delete_missing: bool = True
    rebuild: bool = False
    retry_failed: bool = False
    write_group_rows: int = Field(default=2_000, ge=1)  # smaller groups: merge_insert peaks at ~2.5x a group
    write_group_seconds: float = Field(default=5.0, gt=0)
    # Every arriving vector goes to a crash-safe file beside the table before it waits for its
    # group (tasks.spill): a killed run re-pays only its calls in flight. Off: it re-pays the group.
    spill_vectors: bool = True

    # the vector index (tasks.index_policy has the rule by size; set one only if you know better)
    index_min_rows: int = Field(default=50_000, ge=1)  # below it, exact search: no vector index
    index_partitions: int | None = Field(default=None, ge=1)  # None: sqrt(rows)
    index_bits: Literal[1, 2, 4, 8] | None = None  # IVF_RQ bits per dimension; None: 4
    index_nprobes: int | None = Field(default=None, ge=1)  # None: 2.5 % of the partitions, at least 20
    index_refine_factor: int | None = Field(default=None, ge=0)  # None: by bits; 0: no refine
    index_retrain_factor: float = Field(default=2.0, gt=1.0)  # retrain at this growth since training
    index_compact_above_fragments: int = Field(default=64, ge=1)
    index_unindexed_tail_rows: int = Field(default=4_000, ge=0)  # past it, queries skip unindexed rows

    # the Batch API route (mode "batch", or "auto" above batch_threshold chunks)
    batch_threshold: int = Field(default=500, ge=0)
    deadline_seconds: float | None = Field(default=None, gt=0)
    batch_turnaround_seconds: float | None = Field(default=None, gt=0)  # None: estimated from size
    batch_max_items_per_job: int = Field(default=10_000, ge=1)
    batch_max_tokens_per_job: int = Field(default=5_000_000, ge=2048)
    batch_inline_limit_bytes: int = Field(default=19_000_000, ge=1)  # the API takes 20 MB inline
    batch_poll_seconds: float | None = Field(default=None, gt=0)  # None: by job size, 2-60 s with backoff
    batch_poll_jitter: float = Field(default=0.1, ge=0.0, lt=1.0)  # +- this fraction of each interval
    batch_wait_limit_seconds: float | None = Field(default=None, gt=0)  # then the run ends "waiting"
    batch_failed_jobs: Literal["resubmit", "online", "fail"] = "resubmit"
    batch_max_resubmits: int = Field(default=2, ge=0)
    batch_item_errors: Literal["online", "dead_letter"] = "online"
    cancel_on_flow_cancel: bool = False
    # int64 on the wire; higher runs first among this project's pending jobs
    batch_priority: int = Field(default=0, ge=-(2**63), le=2**63 - 1)
    batch_success_rate_threshold: float = Field(default=0.95, ge=0.0, le=1.0)

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"corpus path {str(value)!r} does not exist; pass a directory or a .jsonl/.parquet/.csv file")
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "Settings":
        if self.overlap_tokens >= self.max_chunk_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be under half of max_chunk_tokens ({self.max_chunk_tokens})"
            )
        return self

    @property
    def recipe(self) -> Recipe:
        return Recipe(model=self.model, dimensions=self.dimensions, send_title=self.send_title)

    @property
    def index_policy(self) -> "IndexPolicy":
        """The vector-index policy these settings ask for (the rule by size where unset)."""
        from indexflow.tasks.search import IndexPolicy  # imports LanceDB: only when a table is opened

        return IndexPolicy(min_rows=self.index_min_rows, num_partitions=self.index_partitions,
                           num_bits=self.index_bits, nprobes=self.index_nprobes,
                           refine_factor=self.index_refine_factor, retrain_factor=self.index_retrain_factor,
                           compact_above_fragments=self.index_compact_above_fragments,
                           unindexed_tail_rows=self.index_unindexed_tail_rows)

    @property
    def quota(self) -> Quota:
        """The limits and where each value came from; see `resolve_quota` for the rule."""
        return resolve_quota(self.tier, self.default_tier,
                             {"rpm": self.rpm, "tpm": self.tpm, "rpd": self.rpd, "rpm_counts": self.rpm_counts})

    @property
    def limits(self) -> Limits:
        """The limits a run applies (`quota` without the sources)."""
        return self.quota.limits

    @property
    def call_token_budget(self) -> int:
        """Most tokens one call may carry: never more than a minute's TPM, or no call could ever pass."""
        budget = self.max_tokens_per_call or 100 * 2048
        if self.limits.tpm:
            budget = min(budget, self.limits.tpm)
        return budget
