"""tasks.micro_batch: the reader and the batcher driven alone, on their own queues."""

from __future__ import annotations

import asyncio

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.micro_batch import END, form_batches, read_chunks


def chunks(n: int, tokens: int = 5) -> list[Chunk]:
    return [Chunk(f"d{i}#0", f"d{i}", 0, f"text {i}", "", "t", tokens, "h") for i in range(n)]


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def batch_ids(items: list) -> list:
    return [item if item is END else [c.id for c in item] for item in items]


async def batches_of(source: list[Chunk], *, size: int = 3, token_budget: int = 1_000, timeout: float = 5.0,
                     consumers: int = 2) -> list:
    inq, outq = asyncio.Queue(), asyncio.Queue()
    for chunk in source:
        inq.put_nowait(chunk)
    inq.put_nowait(END)
    await form_batches(inq, outq, size=size, token_budget=token_budget, timeout=timeout, consumers=consumers)
    return drain(outq)


def test_the_reader_puts_every_chunk_in_order_counts_each_and_ends_with_end():
    async def main(source):
        queue: asyncio.Queue = asyncio.Queue()
        read = []
        await read_chunks(source, queue, block=2, on_read=lambda: read.append(queue.qsize()))
        return drain(queue), read

    async def stream():
        for chunk in chunks(5):
            yield chunk

    for source in (chunks(5), iter(chunks(5)), stream()):
        items, read = asyncio.run(main(source))
        assert items[:-1] == chunks(5) and items[-1] is END
        assert read == [0, 1, 2, 3, 4]  # counted before its put


def test_a_batch_closes_at_its_size_and_the_rest_at_the_end_then_one_end_per_consumer():
    out = asyncio.run(batches_of(chunks(7), size=3, consumers=2))
    assert batch_ids(out) == [["d0#0", "d1#0", "d2#0"], ["d3#0", "d4#0", "d5#0"], ["d6#0"], END, END]


def test_a_batch_closes_before_a_chunk_that_would_pass_the_token_budget_and_at_the_budget():
    source = [Chunk(f"c{i}", f"c{i}", 0, "t", "", "t", tokens, "h") for i, tokens in enumerate([4, 4, 6, 4, 1])]
    out = asyncio.run(batches_of(source, size=100, token_budget=10, consumers=1))
    # c2 would make 14 tokens: c0+c1 go first; c2+c3 reach the budget of 10 exactly and go at once
    assert batch_ids(out) == [["c0", "c1"], ["c2", "c3"], ["c4"], END]


def test_a_batch_closes_timeout_seconds_after_its_first_chunk():
    async def main():
        inq, outq = asyncio.Queue(), asyncio.Queue()
        counted = []
        task = asyncio.create_task(form_batches(inq, outq, size=10, token_budget=1_000, timeout=0.05, consumers=1,
                                                on_batch=counted.append))
        inq.put_nowait(chunks(1)[0])
        first = await asyncio.wait_for(outq.get(), 5)
        inq.put_nowait(END)
        await task
        return first, drain(outq), counted

    first, rest, counted = asyncio.run(main())
    assert [c.id for c in first] == ["d0#0"] and rest == [END]
    assert counted == [first]
