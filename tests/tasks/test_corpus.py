"""Corpus readers: every format, field options, each kind of bad input, and streaming."""

from __future__ import annotations

import inspect
import gc
import json
import os
import pickle
import tracemalloc
from collections import Counter
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexflow.tasks.corpus import REASONS, Document, read_corpus
from indexflow.tasks.errors import ConfigError, InputError
from tests.datasets import scifact_corpus

REPO = Path(__file__).parents[2]


def read(path: Path, **options) -> tuple[list[Document], list[InputError]]:
    problems: list[InputError] = []
    docs = list(read_corpus(path, on_problem=problems.append, **options))
    return docs, problems


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def parquet(path: Path, rows: list[dict], **options) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, **options)
    return path


def facts(problem: InputError) -> tuple[str, int | None, str]:
    return (Path(problem.source).name, problem.line, problem.reason)


# ---------------------------------------------------------------- directory trees


def test_directory_tree_reads_each_text_format_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b" / "notes.txt", "Plain notes.\n")
    write(tmp_path / "a.md", "Intro line\n\n```python\n# not a title\n```\n# Real Title #\n\nBody text.\n")
    write(
        tmp_path / "b" / "guide.rst",
        "=========\nOverlined\n=========\n\nSome *rst* text.\n",
    )
    write(tmp_path / "c" / "page.html", "<html><head><title>Page  Title</title></head><body><p>Hello</p></body></html>")
    write(tmp_path / "c" / "no_title.htm", "<body><h2>First heading</h2><p>x</p></body>")
    write(tmp_path / "c" / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00")  # unknown type: skipped, no problem
    write(tmp_path / ".hidden" / "secret.md", "# hidden\n")
    write(tmp_path / ".dotfile.txt", "hidden\n")

    docs, problems = read(tmp_path)

    assert problems == []
    assert [d.id for d in docs] == ["a.md", "b/guide.rst", "b/notes.txt", "c/no_title.htm", "c/page.html"]
    titles = {d.id: d.title for d in docs}
    assert titles == {
        "a.md": "Real Title",
        "b/guide.rst": "Overlined",
        "b/notes.txt": "notes",
        "c/no_title.htm": "First heading",
        "c/page.html": "Page Title",
    }
    assert docs[0].source == str(tmp_path / "a.md")
    assert docs[2].text == "Plain notes.\n"


def test_rst_title_is_the_first_underlined_line(tmp_path: Path) -> None:
    write(tmp_path / "x.rst", ":orphan:\n\nThe Title\n---------\n\nText.\n\nSection\n=======\n")
    (doc,), _ = read(tmp_path)
    assert doc.title == "The Title"


def test_html_text_drops_scripts_and_styles_and_keeps_words_apart(tmp_path: Path) -> None:
    write(
        tmp_path / "p.html",
        """<!DOCTYPE html><html><head><title>T</title><style>p { color: red }</style>
        <script>var hidden = 1;</script></head>
        <body><h1>Heading</h1><p>One <b>bold</b>&nbsp;word &amp; <i>more</i>
        text.</p><script>alert("no")</script><pre>line 1
  line 2</pre><ul><li>first</li><li>second</li></ul></body></html>""",
    )
    (doc,), _ = read(tmp_path)
    assert doc.text == "Heading\n\nOne bold word & more text.\n\nline 1\n  line 2\n\nfirst\n\nsecond"
    assert "hidden" not in doc.text and "alert" not in doc.text and "color" not in doc.text


def test_data_files_inside_a_tree_get_ids_prefixed_by_their_path(tmp_path: Path) -> None:
    write(tmp_path / "doc.md", "# Doc\n\ntext")
    jsonl(tmp_path / "sub" / "items.jsonl", [{"id": 1, "text": "one"}, {"id": "doc.md", "text": "not a clash"}])
    write(tmp_path / "table.csv", "id,title,text\n1,T,csv text\n")
    parquet(tmp_path / "table.parquet", [{"id": "1", "text": "parquet text"}])

    docs, problems = read(tmp_path)

    assert problems == []
    # A directory's own files come before its subdirectories (os.walk order), each sorted by name.
    assert [d.id for d in docs] == [
        "doc.md",
        "table.csv/1",
        "table.parquet/1",
        "sub/items.jsonl/1",
        "sub/items.jsonl/doc.md",
    ]
    assert docs[3].source == f"{tmp_path / 'sub' / 'items.jsonl'}:1"


def test_single_text_file_is_one_document(tmp_path: Path) -> None:
    path = write(tmp_path / "readme.md", "# Read me\n\nHello.\n")
    (doc,), problems = read(path)
    assert (doc.id, doc.title, problems) == ("readme.md", "Read me", [])


# ---------------------------------------------------------------- JSONL, Parquet, CSV


def test_jsonl_beir_layout_works_as_is(tmp_path: Path) -> None:
    records = [{"_id": "4983", "title": "T", "text": "body"}, {"_id": 7, "text": "no title"}]
    path = jsonl(tmp_path / "corpus.jsonl", records)
    docs, problems = read(path)
    assert problems == []
    assert docs == [
        Document(id="4983", title="T", text="body", source=f"{path}:1"),
        Document(id="7", title="", text="no title", source=f"{path}:2"),
    ]


def test_jsonl_field_options(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "faq.jsonl", [{"key": "q1", "question": "Why?", "body": "Because.", "id": "ignored"}])
    (doc,), problems = read(path, id_field="key", title_field="question", text_field="body")
    assert (doc.id, doc.title, doc.text, problems) == ("q1", "Why?", "Because.", [])


def test_jsonl_prefers_id_over_underscore_id_and_skips_blank_lines(tmp_path: Path) -> None:
    content = '\ufeff{"id": "a", "_id": "b", "text": "x"}\n\n   \n{"_id": "c", "text": "y"}\r\n'
    path = write(tmp_path / "c.jsonl", content)
    docs, problems = read(path)
    assert [(d.id, d.source) for d in docs] == [("a", f"{path}:1"), ("c", f"{path}:4")]
    assert problems == []


def test_scifact_first_records_read_as_is() -> None:
    problems: list[InputError] = []
    docs = list(islice(read_corpus(scifact_corpus(), on_problem=problems.append), 300))
    with scifact_corpus().open(encoding="utf-8") as lines:
        expected = [json.loads(line) for line in islice(lines, 300)]
    assert problems == []
    assert [(d.id, d.title, d.text) for d in docs] == [(r["_id"], r["title"], r["text"]) for r in expected]
    assert docs[299].source == f"{scifact_corpus()}:300"


def test_parquet_with_field_options_and_integer_ids(tmp_path: Path) -> None:
    path = parquet(
        tmp_path / "t.parquet",
        [{"doc": i, "name": f"title {i}", "content": f"text {i}"} for i in range(2500)],
        row_group_size=1000,
    )
    docs, problems = read(path, id_field="doc", title_field="name", text_field="content")
    assert problems == []
    assert len(docs) == 2500
    assert docs[2499] == Document(id="2499", title="title 2499", text="text 2499", source=f"{path}:2500")


def test_csv_keeps_ids_as_written_and_multiline_text(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", 'id,title,text,extra\n007,T,"line one\nline two",1\n8,,plain,x\n')
    docs, problems = read(path)
    assert problems == []
    assert [(d.id, d.title, d.text) for d in docs] == [("007", "T", "line one\nline two"), ("8", "", "plain")]
    assert docs[1].source == f"{path}:2"


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "corpus.data", [{"id": "1", "text": "x"}])
    (doc,), _ = read(path, format="jsonl")
    assert doc.id == "1"


# ---------------------------------------------------------------- bad input


def test_each_bad_text_file_is_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    write(tmp_path / "1_good.md", "# Good\n\ntext")
    write(tmp_path / "2_binary.txt", b"abc\x00def")
    write(tmp_path / "3_latin1.md", "line 1\nline 2\n".encode() + "caf\xe9\n".encode("latin-1"))
    write(tmp_path / "4_blank.txt", " \n\t\n")
    os.symlink(tmp_path / "missing.txt", tmp_path / "5_dangling.txt")
    write(tmp_path / "6_good.txt", "also good")

    docs, problems = read(tmp_path)

    assert [d.id for d in docs] == ["1_good.md", "6_good.txt"]
    assert [facts(p) for p in problems] == [
        ("2_binary.txt", None, "binary"),
        ("3_latin1.md", 3, "encoding"),
        ("4_blank.txt", None, "empty"),
        ("5_dangling.txt", None, "unreadable"),
    ]
    assert all(p.reason in REASONS for p in problems)


READ_AS_CHILD = """
import json, os, sys
from pathlib import Path
from indexflow.tasks.corpus import read_corpus
root, uid, gid = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
list(read_corpus(root / "warm", on_problem=lambda p: None))  # lazy imports while the interpreter is reachable
if uid >= 0:  # root: become an unprivileged user, for whom permissions hold
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
try:
    (root / "locked.txt").read_bytes()
    premise = "readable"
except PermissionError:
    premise = "unreadable"
problems = []
docs = [d.id for d in read_corpus(root, on_problem=problems.append)]
print(json.dumps({"uid": os.getuid(), "premise": premise, "docs": docs,
                  "problems": [[Path(p.source).name, p.line, p.reason, p.doc_id] for p in problems]}))
"""


def unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) the child drops to: `nobody` when running as root (root reads any file); (-1, -1): stay."""
    if os.geteuid() != 0:
        return -1, -1
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534  # no such account: root can setuid to any uid


def test_a_file_without_read_permission_is_reported() -> None:
    """Read in a child process that is not root, so a file without read permission really is unreadable."""
    import shutil
    import subprocess
    import sys
    import tempfile

    uid, gid = unprivileged_ids()
    # pytest's tmp_path sits under a directory only its owner may enter: use one the reader can traverse.
    root = Path(tempfile.mkdtemp(prefix="indexflow-perm-"))
    try:
        root.chmod(0o755)
        write(root / "warm" / "warm.txt", "warm-up")
        write(root / "locked.txt", "secret").chmod(0)
        write(root / "open.txt", "anyone may read this").chmod(0o644)
        child = subprocess.run([sys.executable, "-c", READ_AS_CHILD, str(root), str(uid), str(gid)],
                               capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    finally:
        shutil.rmtree(root)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout)
    assert result["uid"] != 0
    assert result["premise"] == "unreadable", "the child could read the locked file: the test would prove nothing"
    assert result["docs"] == ["open.txt", "warm/warm.txt"]
    assert result["problems"] == [["locked.txt", None, "unreadable", "locked.txt"]]


def test_each_bad_jsonl_line_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "good"}),  # 1
        '{"id": "b", "text": ',  # 2 malformed
        "[1, 2]",  # 3 not an object
        json.dumps({"id": "c", "body": "long body text", "title": "t"}),  # 4 no text field
        json.dumps({"id": "d", "text": 12}),  # 5 non-string text
        json.dumps({"id": "e", "text": None}),  # 6 null text
        json.dumps({"id": "f", "text": "   "}),  # 7 empty
        json.dumps({"title": "no id", "text": "x"}),  # 8 missing id
        json.dumps({"id": 1.5, "text": "x"}),  # 9 float id
        json.dumps({"id": "a", "text": "again"}),  # 10 duplicate
        json.dumps({"id": "g", "text": "nul \u0000 inside"}),  # 11 NUL character
        json.dumps({"id": "h", "title": ["x"], "text": "x"}),  # 12 title not a string
        json.dumps({"id": "z", "text": "also good"}),  # 13
    ]
    path = write(tmp_path / "faq.jsonl", "\n".join(lines).encode() + b"\n" + b'{"id": "i", "text": "\xff"}\n')

    docs, problems = read(path)

    assert [d.id for d in docs] == ["a", "z"]
    assert [facts(p)[1:] for p in problems] == [
        (2, "malformed"),
        (3, "malformed"),
        (4, "missing_text"),
        (5, "bad_text"),
        (6, "bad_text"),
        (7, "empty"),
        (8, "missing_id"),
        (9, "bad_id"),
        (10, "duplicate_id"),
        (11, "binary"),
        (12, "bad_title"),
        (14, "encoding"),
    ]
    assert all(p.source == str(path) for p in problems)
    missing = problems[2]
    assert str(missing) == (
        f"{path}:4: record has no 'text' field (keys: ['body', 'id', 'title']); pass --text-field body"
    )


def test_a_binary_file_named_jsonl_is_one_problem_not_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "blob.jsonl", bytes(range(256)) * 100)
    docs, problems = read(path)
    assert docs == [] and [facts(p) for p in problems] == [("blob.jsonl", None, "binary")]


def test_duplicate_ids_keep_the_first_and_prefixes_keep_files_apart(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"id": "1", "text": "first"}\n{"id": "1", "text": "dup"}\n')
    jsonl(tmp_path / "b" / "c.jsonl", [{"id": "1", "text": "same id, other file"}])
    docs, problems = read(tmp_path)
    assert [(d.id, d.text) for d in docs] == [("a.jsonl/1", "first"), ("b/c.jsonl/1", "same id, other file")]
    assert [facts(p) for p in problems] == [("a.jsonl", 2, "duplicate_id")]


def test_bad_csv_rows_and_values_are_reported(tmp_path: Path) -> None:
    content = b'id,title,text\n1,T,good\n2,too,many,columns\n3,T,"bad \xff byte"\n4,T,\n5,T,fine\n'
    path = write(tmp_path / "t.csv", content)
    docs, problems = read(path)
    assert [d.id for d in docs] == ["1", "5"]
    assert sorted(p.reason for p in problems) == ["empty", "encoding", "malformed"]
    by_reason = {p.reason: p for p in problems}
    assert "2,too,many,columns" in str(by_reason["malformed"])
    assert by_reason["encoding"].source == str(path)


def test_corrupt_parquet_in_a_tree_is_reported_and_skipped(tmp_path: Path) -> None:
    write(tmp_path / "bad.parquet", b"PAR1 this is not parquet PAR1")
    write(tmp_path / "ok.txt", "fine")
    docs, problems = read(tmp_path)
    assert [d.id for d in docs] == ["ok.txt"]
    assert [facts(p) for p in problems] == [("bad.parquet", None, "unreadable")]


def test_missing_text_column_fails_fast_at_top_level_and_is_reported_in_a_tree(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", [{"id": "1", "body": "x"}])
    with pytest.raises(ConfigError) as raised:
        read_corpus(path, on_problem=lambda p: None)
    assert raised.value.reason == "missing_text" and raised.value.columns == ["id", "body"]

    write(tmp_path / "t2.csv", "id,body\n1,x\n")
    docs, problems = read(tmp_path)
    assert docs == []
    assert sorted(facts(p) for p in problems) == [("t.parquet", None, "missing_text"), ("t2.csv", None, "missing_text")]


def test_input_errors_survive_pickle(tmp_path: Path) -> None:
    _, (problem,) = read(write(tmp_path / "x.jsonl", "{oops\n"))
    again = pickle.loads(pickle.dumps(problem))
    assert (type(again), again.source, again.line, again.reason, str(again)) == (
        InputError,
        problem.source,
        1,
        "malformed",
        str(problem),
    )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("missing", {}),
        ("notes.docx", {}),
        ("dir", {"format": "jsonl"}),
        ("c.jsonl", {"format": "dir"}),
        ("c.jsonl", {"format": "xml"}),
    ],
)
def test_corpus_level_problems_raise_config_error(tmp_path: Path, name: str, options: dict) -> None:
    (tmp_path / "dir").mkdir()
    write(tmp_path / "notes.docx", "x")
    write(tmp_path / "c.jsonl", "")
    with pytest.raises(ConfigError):
        read_corpus(tmp_path / name, on_problem=lambda p: None, **options)


# ---------------------------------------------------------------- streaming


def test_readers_are_lazy_generators(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "c.jsonl", [{"id": "1", "text": "x"}])
    seen: list[InputError] = []
    stream = read_corpus(tmp_path, on_problem=seen.append)
    assert inspect.isgenerator(stream)
    path.unlink()  # nothing has been read yet, so the file's absence is not noticed
    assert list(stream) == [] and seen == []


def test_jsonl_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    text = "word " * 200
    path = tmp_path / "big.jsonl"
    with path.open("w") as out:
        for i in range(8000):
            out.write(json.dumps({"id": f"doc-{i}", "title": f"t{i}", "text": text}) + "\n")
    size = path.stat().st_size  # about 8 MB
    tracemalloc.start()
    count = sum(1 for _ in read_corpus(path, on_problem=lambda p: None))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 8000
    # The id set grows (~100 B per document); the text never accumulates.
    assert peak < size / 8


def arrow_peak(path: Path) -> tuple[int, int]:
    """Documents read and the most Arrow memory held at once while reading them."""
    # Arrow buffers of earlier tests freed during the measurement would lower its baseline-relative
    # peak and make the comparison depend on test order: collect them first.
    gc.collect()
    pa.default_memory_pool().release_unused()
    baseline = pa.total_allocated_bytes()
    peak = count = 0
    for _ in read_corpus(path, on_problem=lambda p: None):
        count += 1
        if count % 50 == 0:
            peak = max(peak, pa.total_allocated_bytes() - baseline)
    return count, peak


@pytest.mark.parametrize("kind, bound", [("parquet", 8 << 20), ("csv", 24 << 20)])
def test_parquet_and_csv_memory_stays_bounded_as_the_file_grows(tmp_path: Path, kind: str, bound: int) -> None:
    text = "word " * 400
    for rows in (5000, 40000):  # about 10 MB and 80 MB of text
        path = tmp_path / f"{rows}.{kind}"
        if kind == "parquet":
            parquet(path, [{"id": str(i), "text": text} for i in range(rows)], row_group_size=1000)
        else:
            with path.open("w") as out:
                out.write("id,text\n")
                out.writelines(f"{i},{text}\n" for i in range(rows))
        count, peak = arrow_peak(path)
        assert count == rows
        # Arrow reads a few blocks ahead on its I/O thread (4 MB CSV blocks, 1,000-row Parquet
        # groups), more or fewer with timing; what must hold is a bound independent of the size.
        assert peak < bound, (rows, peak)
    assert bound < 40000 * len(text) / 3, "a reader holding the whole file must fail this test"


def test_the_sample_corpus_reads_cleanly_in_every_format() -> None:
    docs, problems = read(REPO / "data" / "corpus")
    assert problems == []
    kinds = Counter(Path(d.source.rsplit(":", 1)[0] if ":" in d.source else d.source).suffix for d in docs)
    assert kinds == {".md": 117, ".html": 29, ".txt": 29, ".rst": 60, ".jsonl": 110, ".parquet": 69, ".csv": 69}
    assert {d.id for d in docs} >= {"modules/argparse.html", "functions.jsonl/gzip.compress", "exceptions.csv/KeyError"}


def test_problems_name_the_document_when_its_id_is_known(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", b"\x00")
    records = [{"id": "1", "body": "x"}, {"text": "no id"}, {"id": "2", "text": " "}, {"id": "2", "text": "ok"}]
    jsonl(tmp_path / "b.jsonl", records)
    _, problems = read(tmp_path)
    assert [(p.reason, p.doc_id) for p in problems] == [
        ("binary", "a.txt"),
        ("missing_text", "b.jsonl/1"),
        ("missing_id", None),
        ("empty", "b.jsonl/2"),
    ]
