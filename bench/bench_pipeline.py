"""Benchmark the online embed pipeline (tasks.batcher) on SciFact through the emulator.

    .venv/bin/python bench/bench_pipeline.py [--part a|b|both] [--repeat 1] [--concurrency 8]

(a) tier-1 limits (emulator `--tier tier1`, client tier "1"): wall time against the ceiling
    computed from the limits, ceiling = max(texts / rpm, tokens / tpm) minutes (tokens as the
    server counts them), and the share of calls answered 429.
(b) unlimited: chunks/s of the whole pipeline (limiter, retries, normalization, a sink) against a
    bare loop of `client.aio.models.embed_content` calls with the same concurrency and batch size.

The emulator runs in a child process (`python -m indexflow.emulator`) so it does not share the GIL with the
client being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from google.genai import types as genai_types  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from indexflow.emulator.admin import AdminClient  # noqa: E402
from indexflow.emulator.embedding import count_tokens  # noqa: E402
from indexflow.tasks.batcher import embed_chunks  # noqa: E402
from indexflow.tasks.embed_options import EmbedOptions  # noqa: E402
from indexflow.tasks.chunk import chunk_documents  # noqa: E402
from indexflow.tasks.corpus import Document  # noqa: E402
from indexflow.tasks.gemini.client import make_client  # noqa: E402
from indexflow.tasks.recipe import Recipe  # noqa: E402
from indexflow.tasks.settings import TIERS, Endpoint, Limits  # noqa: E402

from tests.datasets import scifact_corpus  # noqa: E402

SCIFACT = scifact_corpus()
RECIPE = Recipe(dimensions=768)


def load_chunks(repeat: int):
    docs = []
    with SCIFACT.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    for r in range(repeat):
        for rec in records:
            docs.append(Document(id=f"{rec['_id']}-{r}", title=rec.get("title", ""), text=rec["text"], source="scifact"))
    return list(chunk_documents(docs, RECIPE, max_tokens=1024, overlap_tokens=64))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """`python -m indexflow.emulator` in a child process on a free port."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--log-level", "warning", *args]

    def __enter__(self) -> "Emulator":
        self.proc = subprocess.Popen([sys.executable, "-m", "indexflow.emulator", *self.args], cwd=REPO)
        self.admin = AdminClient(self.base_url)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.admin.stats()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def client_for(emu: Emulator):
    return make_client(Endpoint(api_key=SecretStr("emulator-key"), base_url=emu.base_url, timeout_seconds=60))


async def run_pipeline(chunks, client, options: EmbedOptions):
    written = 0

    def sink(batch, vectors):  # a sync sink, as the LanceDB writer is, run in a thread
        nonlocal written
        written += len(batch)

    stats = await embed_chunks(chunks, client=client, options=options, sink=sink, on_failed=lambda items: None)
    assert written == len(chunks), (written, len(chunks))
    return stats


def part_a(chunks, concurrency: int, latency_ms: float) -> None:
    limits = TIERS["1"]
    texts = len(chunks)
    server_tokens = sum(count_tokens(c.text) for c in chunks)
    client_tokens = sum(c.tokens for c in chunks)
    ceiling_min = max(texts / limits.rpm, server_tokens / limits.tpm)
    with Emulator("--tier", "tier1", "--latency-base-ms", str(latency_ms), "--latency-per-text-ms", "0.5") as emu:
        options = EmbedOptions(recipe=RECIPE, limits=limits, batch_size=100, concurrency=concurrency)
        t0 = time.perf_counter()
        stats = asyncio.run(run_pipeline(chunks, client_for(emu), options))
        wall = time.perf_counter() - t0
        server = emu.admin.stats()
    calls_429 = server.get("errors.429", 0)  # every 429 the emulator answered (errors.429.<kind> break it down)
    answered = server.get("calls", 0) + calls_429
    print("(a) tier-1 limits: rpm=%d texts, tpm=%d" % (limits.rpm, limits.tpm))
    print(f"    chunks {texts}, tokens server-counted {server_tokens}, client-estimated {client_tokens} "
          f"(+{100 * (client_tokens / server_tokens - 1):.1f} %)")
    print(f"    ceiling max(texts/rpm, tokens/tpm) = {60 * ceiling_min:.1f} s; wall {wall:.1f} s; "
          f"ceiling/wall = {60 * ceiling_min / wall:.3f}")
    # A sliding window admits a whole minute's quota at t=0, so M minutes of quota can be spent by
    # t = 60 * (ceil(M) - 1) s plus the last calls: the best wall time any client can reach.
    best = 60 * (math.ceil(ceiling_min) - 1)
    if best > 0:
        print(f"    best possible under a sliding window ~ {best:.0f} s; best/wall = {best / wall:.3f}")
    print(f"    calls ok {server.get('calls', 0)}, answered 429 {calls_429} "
          f"({100 * calls_429 / max(answered, 1):.2f} %); client saw 429 {stats.rate_limited}, "
          f"limiter waited {stats.limiter_wait_seconds:.1f} s, retries {stats.retries}")


async def bare_loop(chunks, client, concurrency: int, batch_size: int) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for start in range(0, len(chunks), batch_size):
        queue.put_nowait(chunks[start : start + batch_size])

    async def worker():
        while not queue.empty():
            batch = queue.get_nowait()
            response = await client.aio.models.embed_content(
                model=RECIPE.model,
                contents=[c.text for c in batch],
                config=genai_types.EmbedContentConfig(
                    task_type=RECIPE.task_type, output_dimensionality=RECIPE.dimensions, title=batch[0].title or None
                ),
            )
            assert len(response.embeddings) == len(batch)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def part_b(chunks, concurrency: int, latency_ms: float) -> None:
    with Emulator("--tier", "unlimited", "--latency-base-ms", str(latency_ms), "--latency-per-text-ms", "0.5") as emu:
        client = client_for(emu)
        asyncio.run(bare_loop(chunks[:500], client, concurrency, 100))  # warm up both sides
        results = {}
        for name in ("bare SDK loop", "pipeline", "bare SDK loop ", "pipeline "):
            t0 = time.perf_counter()
            if name.startswith("bare"):
                asyncio.run(bare_loop(chunks, client, concurrency, 100))
            else:
                options = EmbedOptions(recipe=RECIPE, limits=Limits(), batch_size=100, concurrency=concurrency)
                asyncio.run(run_pipeline(chunks, client, options))
            results.setdefault(name.strip(), []).append(len(chunks) / (time.perf_counter() - t0))
    bare = max(results["bare SDK loop"])
    pipe = max(results["pipeline"])
    print(f"(b) unlimited, concurrency {concurrency}, batch 100, emulator latency {latency_ms} ms + 0.5 ms/text")
    print(f"    bare SDK loop (embed_content): {bare:,.0f} chunks/s (best of 2)")
    print(f"    pipeline (embed_chunks):       {pipe:,.0f} chunks/s (best of 2)")
    print(f"    pipeline / bare = {pipe / bare:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="SciFact copies (ids made unique)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator base latency per call")
    args = parser.parse_args()
    chunks = load_chunks(args.repeat)
    print(f"SciFact x{args.repeat}: {len(chunks)} chunks, cpu count {os.cpu_count()}")
    if args.part in ("a", "both"):
        part_a(chunks, args.concurrency, args.latency_ms)
    if args.part in ("b", "both"):
        part_b(chunks, args.concurrency, args.latency_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
