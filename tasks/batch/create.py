"""Creating a batch job at most once: a create is not idempotent (a second one is a second, paid job).

A create that fails in a way that may have reached the server (timeout, dropped connection, 5xx)
is followed by a look-up by display name before any retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from indexflow.tasks.errors import BatchJobError, IndexflowError, RateLimitedError


async def create_once(
    create: Callable[[], Awaitable[str]],
    find: Callable[[], Awaitable[str | None]],
    *,
    attempts: int = 5,
    base_delay: float = 2.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Create a job at most once: after any transient failure, look it up by name before trying again.

    Raises the create's terminal error (e.g. BadRequestError: no job was made), BatchJobError with
    state NOT_CREATED when attempts ran out (no job found after the last one), or BatchJobError with
    state UNKNOWN when the look-up itself failed.
    """
    last: IndexflowError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return await create()
        except IndexflowError as error:
            if not error.transient:
                raise
            last = error
        # The create may have reached the server before the failure: never pay for it twice.
        try:
            found = await find()
        except IndexflowError as error:
            raise BatchJobError(
                f"a batch job create failed ({last}) and looking it up failed too ({error}); whether it exists "
                "is unknown, so its INTENT stays in the ledger for the next run to resolve",
                job=None, state="UNKNOWN", transient=True) from None
        if found is not None:
            return found
        if attempt < attempts:  # after the last one nothing is left to wait for
            delay = getattr(last, "retry_after", None) if isinstance(last, RateLimitedError) else None
            await sleep(delay if delay is not None else base_delay * 2 ** (attempt - 1))
    raise BatchJobError(
        f"could not create the batch job after {attempts} attempts ({last}); its chunks stay unindexed "
        "and the next run submits them again", job=None, state="NOT_CREATED", transient=True)
