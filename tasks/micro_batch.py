"""The embed stage's first two hops: chunks onto a bounded queue, then cut into micro-batches.

Plain coroutines over asyncio queues, so each can be driven alone; `tasks.batcher` wires them to
the workers. `END` closes a queue: one after the last chunk, one per consumer after the last batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from itertools import islice

from indexflow.tasks.chunk import Chunk

END = object()


async def read_chunks(
    chunks: Iterable[Chunk] | AsyncIterable[Chunk],
    out: asyncio.Queue,
    *,
    block: int,
    on_read: Callable[[], None],
) -> None:
    """Put every chunk on `out`, then END; `on_read` runs before each put, `block` chunks per thread hop."""
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            on_read()
            await out.put(chunk)
    else:
        iterator = iter(chunks)
        while True:
            # The source may do file I/O and parsing: pull a block per thread hop, off the loop.
            pulled = await asyncio.to_thread(lambda: list(islice(iterator, block)))
            if not pulled:
                break
            for chunk in pulled:
                on_read()
                await out.put(chunk)
    await out.put(END)


async def form_batches(
    chunks: asyncio.Queue,
    batches: asyncio.Queue,
    *,
    size: int,
    token_budget: int,
    timeout: float,
    consumers: int,
    on_batch: Callable[[list[Chunk]], None] | None = None,
) -> None:
    """Close a batch at `size` texts, at `token_budget` tokens, or `timeout` seconds after its first chunk.

    Reads `chunks` up to END; after the last batch puts one END per consumer on `batches`.
    """

    async def emit(batch: list[Chunk]) -> None:
        if on_batch is not None:
            on_batch(batch)
        await batches.put(batch)

    loop = asyncio.get_running_loop()
    batch: list[Chunk] = []
    tokens = 0
    deadline = 0.0
    finished = False
    while not finished:
        if not chunks.empty():
            item = chunks.get_nowait()
        elif batch:
            try:
                item = await asyncio.wait_for(chunks.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                item = None
        else:
            item = await chunks.get()
        if item is END:
            finished = True
        elif item is not None:
            if batch and tokens + item.tokens > token_budget:
                await emit(batch)
                batch, tokens = [], 0
            if not batch:
                deadline = loop.time() + timeout
            batch.append(item)
            tokens += item.tokens
            if len(batch) < size and tokens < token_budget:
                continue
        if batch:
            await emit(batch)
            batch, tokens = [], 0
    for _ in range(consumers):
        await batches.put(END)
