"""End to end through the online route (read, chunk, plan, embed, normalize, write LanceDB) on SciFact.

    .venv/bin/python bench/bench_end_to_end.py [--repeats 1,10,20] [--concurrency 8] [--latency-ms 0,50]

Prints, for SciFact copied 1x, 10x and 20x (ids made unique): chunks/s end to end and the peak RSS of
the indexing process, which should stay flat as the corpus grows (streaming); and chunks/s of a
bare loop of SDK calls with the same batch size and concurrency, the ceiling the pipeline is
measured against. The emulator runs in its own process; each indexing run in a fresh one.
With 0 ms latency everything is CPU on 2 shared cores (client and emulator compete); 50 ms per call
stands in for a remote API (Gemini's own calls take longer), where reading, chunking and writing
overlap the waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.datasets import scifact_corpus  # noqa: E402

SCIFACT = scifact_corpus()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(latency_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    from indexflow.emulator.admin import AdminClient

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "indexflow.emulator", "--port", str(port), "--tier", "unlimited",
                             "--latency-base-ms", str(latency_ms), "--latency-per-text-ms", str(latency_ms / 100),
                             "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            AdminClient(url).stats()
            return proc, url
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("emulator did not start")
            time.sleep(0.1)


def write_corpus(path: Path, repeats: int) -> int:
    lines = SCIFACT.read_text(encoding="utf-8").splitlines()
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for r in range(repeats):
            for line in lines:
                rec = json.loads(line)
                rec["_id"] = f"{rec['_id']}-{r}"
                out.write(json.dumps(rec) + "\n")
                n += 1
    return n


def child(corpus: str, db: str, url: str, concurrency: int) -> None:
    """One indexing run in this process; prints its figures as JSON."""
    from pydantic import SecretStr

    from indexflow.tasks.online import run_online
    from indexflow.tasks.settings import Endpoint, Settings

    s = Settings(corpus=Path(corpus), db_uri=db, table="bench", concurrency=concurrency)
    ep = Endpoint(api_key=SecretStr("emulator-key"), base_url=url)
    t = time.perf_counter()
    out = asyncio.run(run_online(s, ep))
    wall = time.perf_counter() - t
    assert out.error is None, out.error
    print(json.dumps({"chunks": out.committed_rows, "docs": out.plan.docs_seen, "wall": wall,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


async def bare_loop(url: str, concurrency: int, batch: int = 100) -> float:
    """chunks/s of plain `client.aio.models.embed_content` calls, the same batch size and concurrency."""
    from google import genai
    from google.genai import types

    from indexflow.tasks.chunk import chunk_documents
    from indexflow.tasks.corpus import read_corpus
    from indexflow.tasks.recipe import Recipe

    # the same chunks the pipeline sends (one SciFact abstract is over the 2,048-token limit whole)
    docs = read_corpus(SCIFACT, on_problem=lambda e: None)
    texts = [c.text for c in chunk_documents(docs, Recipe(), max_tokens=1024, overlap_tokens=64)]
    client = genai.Client(api_key="emulator-key",
                          http_options=types.HttpOptions(base_url=url, api_version="v1beta"))
    config = types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768)
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def worker():
        while not queue.empty():
            b = queue.get_nowait()
            await client.aio.models.embed_content(model="gemini-embedding-001", contents=b, config=config)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", default="1,10,20", help="corpus sizes, in SciFact copies")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", default="0,50",
                        help="emulator latency per call (plus 1/100 of it per text), one pass per value")
    parser.add_argument("--child", nargs=3, metavar=("CORPUS", "DB", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.concurrency)
        return
    for latency in (float(x) for x in args.latency_ms.split(",")):
        proc, url = start_emulator(latency)
        try:
            print(f"-- emulator latency {latency:g} ms + {latency / 100:g} ms/text per call")
            # best of two: the baseline the pipeline is held to should be the loop at its fastest
            bare = max(asyncio.run(bare_loop(url, args.concurrency)) for _ in range(2))
            print(f"bare SDK loop (batch 100, concurrency {args.concurrency}): {bare:,.0f} chunks/s (best of 2)")
            with tempfile.TemporaryDirectory() as tmp:
                for repeats in (int(r) for r in args.repeats.split(",")):
                    corpus = Path(tmp) / f"corpus-{repeats}.jsonl"
                    docs = write_corpus(corpus, repeats)
                    res = subprocess.run([sys.executable, __file__, "--child", str(corpus),
                                          str(Path(tmp) / f"db-{repeats}"), url, "--concurrency", str(args.concurrency)],
                                         capture_output=True, text=True, check=True, cwd=REPO)
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    rate = r["chunks"] / r["wall"]
                    print(f"SciFact x{repeats:<3} {docs:>7,} docs {r['chunks']:>7,} chunks  {r['wall']:6.1f} s  "
                          f"{rate:7,.0f} chunks/s end to end ({rate / bare:5.2f} of the bare loop)  "
                          f"peak RSS {r['rss_mb']:6.0f} MB  (corpus file {corpus.stat().st_size / 1e6:.0f} MB)")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
