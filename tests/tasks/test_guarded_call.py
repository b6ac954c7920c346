"""tasks.guarded_call: one micro-batch's calls driven alone, with a fake embed function."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.embed_options import EmbedStats
from indexflow.tasks.errors import ConfigError, EndpointUnreachableError, TransientAPIError
from indexflow.tasks.guarded_call import CONNECT_ATTEMPTS, GuardedCall, Stopped
from indexflow.tasks.limits import AdaptiveConcurrency, RateLimiter
from indexflow.tasks.retry import RetryPolicy
from indexflow.tasks.settings import Limits

DIM = 4


def chunks(n: int, tokens: int = 5) -> list[Chunk]:
    return [Chunk(f"d{i}#0", f"d{i}", 0, f"text {i}", "", "t", tokens, "h") for i in range(n)]


def guarded(embed, limits: Limits = Limits(), max_attempts: int = 5) -> GuardedCall:
    return GuardedCall(
        embed, limiter=RateLimiter(limits), policy=RetryPolicy(max_attempts=max_attempts, base_delay=0.0),
        concurrency=AdaptiveConcurrency(2), stats=EmbedStats(), dimensions=DIM, protected=set(),
    )


def test_a_call_is_counted_and_its_vectors_come_back_normalized():
    calls = []

    async def embed(part):
        calls.append([c.id for c in part])
        return np.full((len(part), DIM), 3.0)

    call = guarded(embed)
    outcome = asyncio.run(call.resolve(chunks(3)))
    assert calls == [["d0#0", "d1#0", "d2#0"]] and outcome.items == chunks(3) and outcome.failures == []
    assert np.allclose(np.linalg.norm(outcome.vectors, axis=1), 1.0)
    assert (call.stats.calls, call.stats.texts_sent, call.stats.tokens_sent) == (1, 3, 15)
    assert call.answered and call.concurrency.in_use == 0 and call.protected == set()


def test_a_chunk_over_a_whole_minute_of_tokens_is_dead_lettered_without_a_call_a_batch_is_refused():
    async def embed(part):
        raise AssertionError("no call can carry it")

    call = guarded(embed, Limits(tpm=10))
    outcome = asyncio.run(call.resolve(chunks(1, tokens=11)))
    assert outcome.items == [] and outcome.vectors is None
    assert [(f.item.id, type(f.error), f.attempts) for f in outcome.failures] == [("d0#0", ConfigError, 0)]
    with pytest.raises(ConfigError):
        asyncio.run(call.resolve(chunks(2, tokens=6)))
    assert call.stats.calls == 0


def test_once_stopped_no_call_starts():
    async def embed(part):
        raise AssertionError("stopped: no call")

    call = guarded(embed)
    call.stop()
    with pytest.raises(Stopped):
        asyncio.run(call.attempt(chunks(1)))
    assert call.stats.calls == 0 and call.concurrency.in_use == 0


def test_connection_failures_before_any_answer_end_in_endpoint_unreachable():
    async def embed(part):
        raise TransientAPIError("connection refused", reason="connect")

    call = guarded(embed, max_attempts=10)
    with pytest.raises(EndpointUnreachableError) as info:
        asyncio.run(call.resolve(chunks(1)))
    assert info.value.attempts == CONNECT_ATTEMPTS == call.stats.calls
    assert call.limiter.in_window == (0, 0)  # refused before a byte was sent: every permit refunded
