"""bench/bench_process.py as a smoke run: every scenario measured on a tiny corpus, its checks held."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_process  # noqa: E402

DOCS = [{"_id": f"d{i}", "title": f"Doc {i}", "text": f"Short abstract number {i} about topic {i % 3}."}
        for i in range(12)]


def test_copies_give_unique_ids_and_texts(tmp_path):
    source = tmp_path / "docs.jsonl"
    bench_process.write_records(source, DOCS)
    many = list(bench_process.copies(source, 3))
    assert len(many) == 36
    assert len({d["_id"] for d in many}) == 36 and len({d["text"] for d in many}) == 36
    assert many[12] == {"_id": "d0-r1", "title": "Doc 0", "text": "Short abstract number 0 about topic 0. (copy 1)"}
    assert list(bench_process.copies(source, 1)) == DOCS


def test_edited_changes_the_shortest_text_only():
    docs = DOCS + [{"_id": "short", "title": "", "text": "Tiny."}]
    after = list(bench_process.edited(docs, bench_process.shortest(docs)))
    changed = [(a, b) for a, b in zip(docs, after) if a != b]
    assert changed == [(docs[-1], {"_id": "short", "title": "", "text": "Tiny. (edited)"})]


def test_quick_run_measures_every_scenario(tmp_path):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "bench_process.py"), "--quick", "--corpus", str(corpus),
                          "--json", str(out)], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert figures["failures"] == []
    x1 = figures["corpora"]["x1"]
    assert list(figures["corpora"]) == ["x1"] and x1["docs"] == len(DOCS) and x1["chunks"] == len(DOCS)
    scenarios = [x1[k] for k in ("first", "noop", "floor", "edit")] + list(figures["cli"].values())
    assert len(scenarios) == 6
    for s in scenarios:
        assert len(s["runs"]) == 1 and s["wall_s"] > 0 and s["rss_mb"] > 0
    assert x1["noop"]["runs"][0]["api_calls"] == 0
    assert x1["edit"]["runs"][0]["chunks_embedded"] == 1 and x1["edit"]["runs"][0]["api_calls"] == 1
    assert x1["first"]["first_call_s"] > 0
    assert {a["line"] for a in figures["acceptance"]} >= {"--help wall s", "bad parameter wall s"}
    assert 0 < figures["bench_peak_rss_mb"] <= min(s["rss_mb"] for s in scenarios)
    assert "PASS" in run.stdout or "FAIL" in run.stdout
