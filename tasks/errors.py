"""The indexflow error tree, in one place.

    IndexflowError                      base; `transient` says whether retrying can help
    ├── ConfigError                     a bad setting or parameter (terminal)
    ├── InputError                      one corpus item cannot be read (terminal for that item)
    ├── RecipeMismatchError             the table was built with another embedding recipe (terminal)
    ├── StoreError                      LanceDB refused or returned something unexpected (terminal)
    │   ├── TableNotFoundError          a read names a database or table that does not exist (terminal)
    │   └── TableBusyError              another run holds the table's one-writer lock (terminal)
    ├── EmbedError                      an embedding call failed
    │   ├── TransientAPIError           5xx, timeout, dropped connection (transient)
    │   │   └── RateLimitedError        429 per-minute quota; carries retry_after (transient)
    │   ├── DailyQuotaError             429 per-day quota: stop the run, resume tomorrow (terminal)
    │   ├── BadRequestError             400 for this batch; bisect to find the bad items (terminal)
    │   ├── BadResponseError            wrong count, non-finite or zero vector (transient)
    │   ├── AuthError                   401/403: the API key is missing or wrong (terminal)
    │   └── EndpointUnreachableError    no connection before the endpoint ever answered (terminal)
    ├── BatchJobError                   a Batch API job failed, expired or was cancelled (terminal)
    └── RunInterrupted                  SIGINT or SIGTERM asked the run to stop (terminal)

Every error keeps its facts as attributes (so tests assert facts, not wording) and survives
pickle, because Prefect moves failed states between processes.
"""

from __future__ import annotations

from indexflow.tasks.redact import redact


class IndexflowError(Exception):
    """Base of every error indexflow raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, **facts: object) -> None:
        # Whatever a server put in it, no remembered API key leaves in an error: by value, at birth.
        message = redact(message)
        facts = {k: redact(v) if isinstance(v, str) else v for k, v in facts.items()}
        super().__init__(message)
        self.message = message
        self.facts = facts
        for name, value in facts.items():
            setattr(self, name, value)

    def add_facts(self, **facts: object) -> "IndexflowError":
        """Attach more facts (e.g. what a failed stage did before it failed); returns self to raise."""
        facts = {k: redact(v) if isinstance(v, str) else v for k, v in facts.items()}
        self.facts.update(facts)
        for name, value in facts.items():
            setattr(self, name, value)
        return self

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.facts))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[IndexflowError], message: str, facts: dict) -> IndexflowError:
    return cls(message, **facts)


class ConfigError(IndexflowError):
    """A setting or parameter is invalid; the message says which and what is allowed."""


class InputError(IndexflowError):
    """One corpus item cannot be used: facts `source` (path), `line` (or None) and `reason`."""


class RecipeMismatchError(IndexflowError):
    """The table holds vectors from another embedding recipe; facts `table`, `stored`, `wanted`."""


class StoreError(IndexflowError):
    """LanceDB refused a write or returned something unexpected."""


class TableNotFoundError(StoreError):
    """A read-only open found no database or no table (reads never create one); facts `table`, `uri`."""


class TableBusyError(StoreError):
    """Another run holds the table's writer lock; facts `table`, `db_uri`, `lock`, `waited_seconds`, `holder`."""


class EmbedError(IndexflowError):
    """An embedding call failed; `status` is the HTTP status when there was one."""


class TransientAPIError(EmbedError):
    """A failure that a later attempt may not see: 5xx, timeout, dropped connection."""

    transient = True


class RateLimitedError(TransientAPIError):
    """429 on a per-minute quota; `retry_after` seconds (None when the server gave none)."""


class DailyQuotaError(EmbedError):
    """429 on a per-day quota: retrying before the quota resets only burns attempts."""


class BadRequestError(EmbedError):
    """400 INVALID_ARGUMENT: some item of the batch is unacceptable as sent."""


class BadResponseError(EmbedError):
    """The server answered 200 with something unusable (wrong count, NaN, zero vector)."""

    transient = True


class AuthError(EmbedError):
    """The API key is missing or not accepted."""


class EndpointUnreachableError(EmbedError):
    """No connection could be made and the endpoint never answered this run; facts `attempts`, `base_url`."""

    def __str__(self) -> str:
        where = getattr(self, "base_url", None) or "the embedding endpoint"
        return (f"cannot reach {where} after {self.facts.get('attempts')} attempt(s): {self.message}; "
                "check the URL (GOOGLE_GEMINI_BASE_URL) and the network, then run again")


class RunInterrupted(IndexflowError):
    """The run was asked to stop (fact `signal`: "SIGINT" or "SIGTERM"); what was committed is kept."""


class BatchJobError(IndexflowError):
    """A Batch API job ended FAILED, EXPIRED or CANCELLED; facts `job`, `state`."""
