"""Print the emulator's own throughput (texts/s) so client benchmarks can subtract it.

    .venv/bin/python bench/bench_emulator.py [--seconds 3] [--batch 100] [--concurrency 4]

Measures embed_texts alone, then the unmodified google-genai SDK over loopback (sync, and async
with several calls in flight), at 768 and 3,072 dims, on SciFact texts (data/scifact).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from google import genai  # noqa: E402
from google.genai import types  # noqa: E402

from indexflow.emulator.config import EmulatorConfig  # noqa: E402
from indexflow.emulator.embedding import count_tokens, embed_texts  # noqa: E402
from indexflow.emulator.server import running_emulator  # noqa: E402

MODEL = "gemini-embedding-001"


def load_texts(limit: int = 5000) -> list[str]:
    from tests.datasets import scifact_corpus

    path = scifact_corpus()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"][:8000] or "empty" for line in f][:limit]


def batches(texts: list[str], size: int):
    while True:
        for start in range(0, len(texts) - size + 1, size):
            yield texts[start : start + size]


def bench_local(texts: list[str], dim: int, size: int, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    for batch in batches(texts, size):
        embed_texts(batch, dim)
        done += len(batch)
        if time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start)


def bench_sync(client: genai.Client, texts: list[str], dim: int, size: int, seconds: float) -> float:
    config = types.EmbedContentConfig(output_dimensionality=dim, task_type="RETRIEVAL_DOCUMENT")
    done, start = 0, time.perf_counter()
    for batch in batches(texts, size):
        done += len(client.models.embed_content(model=MODEL, contents=batch, config=config).embeddings)
        if time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start)


async def bench_async(client: genai.Client, texts: list[str], dim: int, size: int, seconds: float,
                      concurrency: int) -> float:
    config = types.EmbedContentConfig(output_dimensionality=dim, task_type="RETRIEVAL_DOCUMENT")
    source = batches(texts, size)
    done, start = 0, time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - start < seconds:
            response = await client.aio.models.embed_content(model=MODEL, contents=next(source), config=config)
            done += len(response.embeddings)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--batch", type=int, default=100, help="texts per call (at most 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="async calls in flight")
    args = parser.parse_args()
    texts = load_texts()
    mean_tokens = sum(map(count_tokens, texts)) / len(texts)
    print(f"{len(texts)} SciFact texts, {mean_tokens:.0f} tokens each on average, {args.batch} per call")
    with running_emulator(EmulatorConfig()) as emu:
        client = genai.Client(api_key=emu.api_key, http_options=types.HttpOptions(
            base_url=emu.base_url, api_version="v1beta", timeout=60_000))
        for dim in (768, 3072):
            local = bench_local(texts, dim, args.batch, args.seconds)
            sync = bench_sync(client, texts, dim, args.batch, args.seconds)
            concurrent = asyncio.run(bench_async(client, texts, dim, args.batch, args.seconds, args.concurrency))
            print(f"dim {dim:>4}: embed_texts {local:8.0f} texts/s | SDK sync {sync:8.0f} texts/s | "
                  f"SDK async x{args.concurrency} {concurrent:8.0f} texts/s")


if __name__ == "__main__":
    main()
