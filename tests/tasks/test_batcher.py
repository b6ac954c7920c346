"""The embed pipeline: batch boundaries, backpressure, fatal errors (in-test embed function), then
faults, bisection, daily quota and the limiter against the real emulator through the real SDK."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from indexflow.emulator.config import EmulatorConfig, LimitConfig
from indexflow.emulator.embedding import embed_texts
from indexflow.emulator.limits import QuotaExceeded, RateLimiter as ServerRateLimiter
from indexflow.emulator.server import running_emulator
from indexflow.tasks.batcher import embed_chunks
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.embed_options import EmbedFailure, EmbedOptions, EmbedStats
from indexflow.tasks.errors import AuthError, BadRequestError, DailyQuotaError, StoreError
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.limits import RateLimiter
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.retry import RetryPolicy
from indexflow.tasks.settings import Endpoint, Limits
from indexflow.tasks.tokens import estimate_tokens
from tests.datasets import scifact_corpus

RECIPE = Recipe(dimensions=768)


def make_chunk(i: int, text: str, title: str = "") -> Chunk:
    return Chunk(
        id=f"doc{i}#0", doc_id=f"doc{i}", ordinal=0, text=text, title=title, source="test",
        tokens=estimate_tokens(text), content_hash=f"h{i}",
    )


def scifact_chunks(n: int) -> list[Chunk]:
    chunks = []
    with scifact_corpus().open() as f:
        for i, line in zip(range(n), f):
            doc = json.loads(line)
            chunks.append(make_chunk(i, doc["text"][:4000] or doc["title"], doc["title"]))
    return chunks


def synthetic(n: int, tokens: int = 5) -> list[Chunk]:
    return [Chunk(f"d{i}#0", f"d{i}", 0, f"text {i}", "", "t", tokens, "h") for i in range(n)]


class Collect:
    """Sink + dead-letter sink that remember everything, checking pairing on the way in."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.vectors: dict[str, np.ndarray] = {}
        self.failed: list[EmbedFailure] = []

    def sink(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        assert vectors.shape[0] == len(chunks)
        self.batches.append([c.id for c in chunks])
        for chunk, vector in zip(chunks, vectors):
            assert chunk.id not in self.vectors, f"{chunk.id} delivered twice"
            self.vectors[chunk.id] = vector

    def on_failed(self, items: list[EmbedFailure]) -> None:
        self.failed.extend(items)


def fake_embed(calls: list[list[str]] | None = None, fail_on_call: int | None = None, delay: float = 0.0):
    """Vectors whose first component is the chunk number: pairing is checkable."""

    async def embed(chunks):
        if calls is not None:
            calls.append([c.id for c in chunks])
            if fail_on_call is not None and len(calls) == fail_on_call:
                raise AuthError("key refused", status=401)
        if delay:
            await asyncio.sleep(delay)
        return np.array([[float(c.doc_id[1:]) + 1.0, 1.0, 0.0] for c in chunks], dtype=np.float32)

    return embed


def run(chunks, options, collect=None, **kw) -> EmbedStats:
    collect = collect or Collect()
    return asyncio.run(embed_chunks(chunks, options=options, sink=collect.sink, on_failed=collect.on_failed, **kw))


FAKE = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=10, concurrency=3)


# -- the pipeline with an in-test embed function ---------------------------------------------------------


def test_every_chunk_once_paired_with_its_own_vector():
    collect = Collect()
    progress: list[tuple[int, int | None]] = []
    stats = run(synthetic(95), FAKE, collect, embed=fake_embed(), on_progress=lambda d, t: progress.append((d, t)), total=95)
    assert sorted(collect.vectors) == sorted(f"d{i}#0" for i in range(95))
    for chunk_id, vector in collect.vectors.items():
        n = float(chunk_id[1:].split("#")[0]) + 1.0
        np.testing.assert_allclose(vector, np.array([n, 1.0, 0.0]) / np.hypot(n, 1.0), rtol=1e-6)
    assert (stats.embedded, stats.chunks_read, stats.calls, stats.batches) == (95, 95, 10, 10)
    assert progress[-1] == (95, 95) and len(progress) == 10


def test_vectors_are_freed_when_delivered_not_left_to_the_garbage_collector():
    # A reference cycle per batch (once: a recursive closure in the retry code) kept every
    # batch's vectors alive until a full collection; peak memory then grew with the corpus.
    import gc
    import weakref

    made: list[weakref.ref] = []
    base = fake_embed()

    async def embed(chunks):
        if any(c.id == "d7#0" for c in chunks):  # a 400: the batch is bisected down to d7 alone
            raise BadRequestError("bad item", status=400)
        vectors = await base(chunks)
        made.append(weakref.ref(vectors))
        return vectors

    delivered: list[weakref.ref] = []

    def sink(chunks, vectors):
        delivered.append(weakref.ref(vectors))

    gc.collect()
    gc.disable()
    try:
        stats = asyncio.run(embed_chunks(synthetic(95), options=FAKE, embed=embed, sink=sink,
                                         on_failed=lambda items: None))
        alive = [r for r in made + delivered if r() is not None]
    finally:
        gc.enable()
    assert stats.embedded == 94 and stats.bisections > 0 and len(made) > 10
    assert alive == []


def test_batches_close_at_the_token_budget():
    calls: list[list[str]] = []
    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=100, call_token_budget=100, concurrency=1)
    run(synthetic(30, tokens=30), options, embed=fake_embed(calls))
    assert [len(c) for c in calls] == [3] * 10  # a 4th chunk would make 120 tokens


def test_a_slow_reader_still_fills_whole_batches():
    # A synchronous source is read a block per thread hop; a hop slower than batch_timeout (a
    # loaded machine, a slow disk) must not cut the batch short: a request would carry 64 texts of 100.
    def slow():
        for chunk in synthetic(250):
            time.sleep(0.001)
            yield chunk

    calls: list[list[str]] = []
    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=100, batch_timeout=0.05, concurrency=1)
    run(slow(), options, embed=fake_embed(calls))
    assert [len(c) for c in calls] == [100, 100, 50]


def test_batches_close_at_the_timeout_when_input_pauses():
    calls: list[list[str]] = []

    async def trickle():
        for i, chunk in enumerate(synthetic(7)):
            if i == 3:
                await asyncio.sleep(0.5)  # far beyond batch_timeout: the first 3 must go alone
            yield chunk

    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=10, batch_timeout=0.05, concurrency=1)
    run(trickle(), options, embed=fake_embed(calls))
    assert [len(c) for c in calls] == [3, 4]


def test_batch_size_never_exceeds_the_rpm_when_texts_count():
    calls: list[list[str]] = []
    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=100, limits=Limits(rpm=1000, count="texts"))
    assert options.texts_per_call == 100
    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=100, limits=Limits(rpm=40, count="texts"))
    run(synthetic(40), options, embed=fake_embed(calls))
    assert [len(c) for c in calls] == [40]


def test_slow_sink_holds_the_reader_back():
    total = 600
    pulled = 0

    def source():
        nonlocal pulled
        for chunk in synthetic(total):
            pulled += 1
            yield chunk

    async def slow_sink(chunks, vectors):
        await asyncio.sleep(0.01)

    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=5, concurrency=2)
    stats = asyncio.run(
        embed_chunks(source(), options=options, sink=slow_sink, on_failed=lambda items: None, embed=fake_embed())
    )
    assert stats.embedded == total and pulled == total
    assert stats.max_reader_lead <= stats.reader_lead_bound < total
    assert stats.reader_lead_bound == 64 + 2 * 5 + 5 * (1 + 2 + 2 + 2 + 1)


def test_fatal_error_stops_the_run_after_handing_over_finished_batches():
    calls: list[list[str]] = []
    collect = Collect()
    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=10, concurrency=1)
    with pytest.raises(AuthError):
        run(synthetic(200), options, collect, embed=fake_embed(calls, fail_on_call=4))
    assert len(calls) == 4  # nothing sent after the fatal error, and no retry of it
    assert collect.batches == calls[:3]  # the three finished batches reached the sink, whole


def test_sink_error_stops_every_stage():
    calls: list[list[str]] = []
    delivered = []

    def failing_sink(chunks, vectors):
        delivered.append(len(chunks))
        if len(delivered) == 2:
            raise StoreError("table refused the write")

    options = EmbedOptions(recipe=Recipe(dimensions=3), batch_size=10, concurrency=1)
    with pytest.raises(StoreError):
        asyncio.run(
            embed_chunks(synthetic(10_000), options=options, sink=failing_sink, on_failed=lambda i: None,
                         embed=fake_embed(calls))
        )
    assert delivered == [10, 10]
    assert len(calls) < 50  # the reader and workers stopped, far from the 1,000 batches


# -- against the emulator --------------------------------------------------------------------------------


# `emu` (tests/conftest.py): the session's emulator, reset before each test.


def client_for(emu, timeout: float = 10.0):
    return make_client(Endpoint(api_key=SecretStr(emu.api_key), base_url=emu.base_url, timeout_seconds=timeout))


def expected_vectors(chunks: list[Chunk]) -> dict[str, np.ndarray]:
    raw = embed_texts([c.text for c in chunks], 768, "RETRIEVAL_DOCUMENT", [c.title for c in chunks]).astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return {c.id: v for c, v in zip(chunks, unit)}


def fast_policy(**kw) -> RetryPolicy:
    return RetryPolicy(base_delay=0.01, max_delay=0.05, rng=random.Random(0), **kw)


def assert_all_embedded_once(collect: Collect, chunks: list[Chunk]) -> None:
    assert sorted(collect.vectors) == sorted(c.id for c in chunks)
    assert collect.failed == []
    expected = expected_vectors(chunks)
    for chunk_id, vector in collect.vectors.items():
        np.testing.assert_allclose(vector, expected[chunk_id], rtol=1e-5, atol=1e-6)


def test_scifact_chunks_through_the_emulator(emu):
    chunks = scifact_chunks(230)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=100, concurrency=4)
    stats = run(chunks, options, collect, client=client_for(emu))
    assert_all_embedded_once(collect, chunks)
    server = emu.admin.stats()
    assert server["calls"] == stats.calls and server["texts"] == 230 == stats.texts_sent
    assert stats.retries == 0 and stats.rate_limited == 0


@pytest.mark.parametrize("kind", ["500", "503", "429", "hang", "drop", "malformed", "wrong_count"])
def test_each_fault_kind_ends_with_every_chunk_embedded_once(emu, kind):
    chunks = scifact_chunks(60)
    emu.admin.set_faults(script=[{"kind": kind, "count": 2}])
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=10, concurrency=3)
    # Only a hang needs the client to give up; a call that is answered takes milliseconds, so
    # neither timeout can expire on one however loaded the machine: every retry is a fault's.
    timeout = 3.0 if kind == "hang" else 30.0
    stats = run(chunks, options, collect, client=client_for(emu, timeout=timeout), policy=fast_policy())
    assert_all_embedded_once(collect, chunks)
    assert emu.admin.stats()[f"faults.{kind}"] == 2
    assert stats.retries == 2
    assert stats.calls == stats.batches + 2
    if kind == "503":
        assert stats.unavailable == 2 and stats.concurrency_shrinks >= 1
    if kind == "429":
        assert stats.rate_limited == 2


def test_random_fault_mix_still_embeds_everything(emu):
    chunks = scifact_chunks(150)
    emu.admin.set_faults(rates={"500": 0.1, "503": 0.1, "malformed": 0.05, "wrong_count": 0.05, "drop": 0.05}, seed=3)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=7, concurrency=4)
    stats = run(chunks, options, collect, client=client_for(emu), policy=fast_policy(max_attempts=20))
    assert_all_embedded_once(collect, chunks)
    assert stats.retries > 0
    assert stats.calls == stats.batches + stats.retries


def test_a_bad_text_is_bisected_out_and_only_it_fails(emu):
    chunks = scifact_chunks(40)
    bad = make_chunk(999, "", "empty after cleaning")
    chunks.insert(13, bad)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=20, concurrency=2)
    stats = run(chunks, options, collect, client=client_for(emu), policy=fast_policy())
    good = [c for c in chunks if c is not bad]
    assert sorted(collect.vectors) == sorted(c.id for c in good)
    assert [f.chunk.id for f in collect.failed] == [bad.id]
    assert collect.failed[0].error_type == BadRequestError.__name__
    assert collect.failed[0].attempts >= 2
    assert stats.dead_lettered == 1 and stats.embedded == 40
    # 20 -> 10 -> 5 -> 2|3 -> 1|... : the bad item's batch of 20 was split at least 4 times
    assert stats.bisections >= 4 and stats.retries == 0
    assert emu.admin.stats()["calls"] == stats.calls - stats.bisections - 1


def test_server_daily_quota_stops_the_run_without_retries(emu):
    emu.admin.set_limits({"rpm": None, "tpm": None, "rpd": 50, "rpm_counts": "texts"})
    chunks = scifact_chunks(100)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=10, concurrency=1)
    with pytest.raises(DailyQuotaError) as error:
        run(chunks, options, collect, client=client_for(emu), policy=fast_policy())
    assert "PerDay" in error.value.quota_id
    assert emu.admin.stats()["calls"] == 5
    assert len(collect.vectors) == 50  # what was embedded before the quota ran out was handed over


def test_client_daily_quota_stops_before_sending(emu):
    chunks = scifact_chunks(100)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=10, concurrency=2, limits=Limits(rpd=30, count="texts"))
    with pytest.raises(DailyQuotaError) as error:
        run(chunks, options, collect, client=client_for(emu))
    assert error.value.quota_id == "client:rpd"
    assert emu.admin.stats()["calls"] == 3 and len(collect.vectors) == 30


def test_limiter_keeps_a_small_rpm_free_of_429s(emu):
    emu.admin.set_limits({"rpm": 20, "tpm": None, "rpd": None, "rpm_counts": "texts"})
    limits = Limits(rpm=20, count="texts")
    limiter = RateLimiter(limits)
    chunks = scifact_chunks(20)
    collect = Collect()
    options = EmbedOptions(recipe=RECIPE, batch_size=10, concurrency=2, limits=limits)
    stats = run(chunks, options, collect, client=client_for(emu), limiter=limiter)
    assert len(collect.vectors) == 20 and stats.rate_limited == 0
    assert emu.admin.stats().get("errors.429.rpm", 0) == 0
    # a third call of 10 texts would have to wait for the first to leave the 60-s window
    wait = limiter.delay(10, 100, limiter._clock())
    assert 55.0 < wait <= 60.0


class ServerClock:
    """The emulator's limiter clock: real time, plus an offset the test moves forward once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class RecordingServerLimiter(ServerRateLimiter):
    """The emulator's own RPM/TPM/RPD limiter, noting when it admitted or refused each call."""

    def __init__(self, config: LimitConfig, clock: ServerClock) -> None:
        super().__init__(config, clock=clock)
        self.log: list[tuple[float, float | None]] = []  # (monotonic time, retry delay of a 429 or None)

    def admit(self, texts: int, tokens: int) -> None:
        try:
            super().admit(texts, tokens)
        except QuotaExceeded as refused:
            self.log.append((time.monotonic(), refused.retry_after))
            raise
        self.log.append((time.monotonic(), None))


def test_a_real_429_pauses_for_its_retry_delay_and_not_much_longer():
    """A real per-minute quota on the emulator answers 429 + RetryInfo; the client waits that long, then succeeds.

    The window is Google's 60 s; to keep the test short, the server's clock jumps 55 s after the
    minute's quota is used, so capacity really frees about 5 s (of real time) later, less the
    time a loaded machine takes to send the next call.
    """
    retry_in = 5.0
    limits = LimitConfig(rpm=10, rpm_counts="texts", max_concurrent_calls=None)
    with running_emulator(EmulatorConfig(limits=limits)) as emu:
        server_clock = ServerClock()
        server = RecordingServerLimiter(limits, server_clock)
        emu.emulator.limits = server
        chunks = scifact_chunks(20)
        options = EmbedOptions(recipe=RECIPE, batch_size=10, concurrency=1)  # no client-side limits
        run(chunks[:10], options, client=client_for(emu, timeout=30.0))  # the minute's 10 requests
        server_clock.offset += 60.0 - retry_in
        collect = Collect()
        stats = run(chunks[10:], options, collect, client=client_for(emu, timeout=30.0))  # default retry policy

    assert_all_embedded_once(collect, chunks[10:])
    assert stats.rate_limited == 1 and stats.retries == 1
    outcomes = [delay for _, delay in server.log]
    assert outcomes[0] is None and outcomes[2] is None and len(outcomes) == 3, outcomes
    delay = outcomes[1]
    # The window frees 60 s (server time) after the first admission; the 429 came `gap` s after it.
    gap = server.log[1][0] - server.log[0][0]
    assert 0 < delay == pytest.approx(retry_in - gap, abs=0.05), "the RetryInfo delay is the time until the window frees"
    waited = server.log[2][0] - server.log[1][0]  # from the 429 to the retry the server admitted
    assert delay <= waited <= delay + 2.5, f"told to wait {delay:.3f} s, the client waited {waited:.3f} s"
